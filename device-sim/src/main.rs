//! `device-sim` command line: run a simulated fleet against a broker until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Parser, Subcommand};
use device_sim::{BrokerOpts, DeviceIdentity, Fleet, FleetSpec, Kind};
use tracing::{info, warn};

/// Exit code for a bad command line or unreadable input files (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "device-sim",
    version,
    about = "Simulated IoT devices speaking the iot-bridge MQTT contract"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a fleet of devices until interrupted; each publishes `offline` on the way out.
    Fleet(FleetArgs),
}

#[derive(clap::Args)]
#[command(group(ArgGroup::new("identity").required(true).args(["ca_key", "cert"])))]
struct FleetArgs {
    /// Broker address, HOST:PORT.
    #[arg(long)]
    broker: String,
    /// CA certificate (PEM) the broker's certificate chains to.
    #[arg(long)]
    ca: PathBuf,
    /// CA private key: mint a client certificate per device (CN = device id).
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    ca_key: Option<PathBuf>,
    /// One client certificate (PEM) for every device.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    #[arg(long, default_value_t = 12)]
    count: usize,
    /// Comma-separated device kinds, assigned round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "thermostat,light,plug,sensor,blind"
    )]
    kinds: Vec<Kind>,
    /// Telemetry interval, e.g. 500ms, 1s, 2m.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of devices (0..1) that publish CBOR instead of JSON.
    #[arg(long, default_value_t = 0.25)]
    cbor_share: f64,
    /// MQTT topic prefix.
    #[arg(long, default_value = "iot")]
    prefix: String,
    /// Prepended to every device id.
    #[arg(long, default_value = "")]
    id_prefix: String,
    /// MQTT keep-alive, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    keep_alive: Duration,
}

/// Parses `250ms`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 500ms, 1s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

fn parse_broker(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s.rsplit_once(':').context("--broker must be HOST:PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--broker must be HOST:PORT, got '{s}'");
    }
    let port = port
        .parse()
        .with_context(|| format!("bad port in --broker '{s}'"))?;
    Ok((host.to_string(), port))
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn broker_opts(args: &FleetArgs) -> anyhow::Result<BrokerOpts> {
    let (host, port) = parse_broker(&args.broker)?;
    let ca_pem = read(&args.ca, "CA certificate")?;
    let identity = match (&args.ca_key, &args.cert, &args.key) {
        (Some(ca_key), _, _) => DeviceIdentity::MintFromCa {
            ca_cert_pem: ca_pem.clone(),
            ca_key_pem: read(ca_key, "CA key")?,
        },
        (None, Some(cert), Some(key)) => DeviceIdentity::Shared {
            cert_pem: read(cert, "client certificate")?,
            key_pem: read(key, "client key")?,
        },
        _ => bail!("give either --ca-key, or --cert and --key"),
    };
    let mut opts = BrokerOpts::new(host, port, ca_pem, identity);
    opts.topic_prefix = args.prefix.clone();
    opts.keep_alive = args.keep_alive;
    Ok(opts)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the fleet");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let broker = broker_opts(&args)?;
    let spec = FleetSpec {
        count: args.count,
        kinds: args.kinds,
        telemetry_interval: args.interval,
        seed: args.seed,
        cbor_share: args.cbor_share,
        id_prefix: args.id_prefix,
    };
    info!(broker = %args.broker, count = spec.count, interval = ?spec.telemetry_interval, "starting fleet");
    let fleet = Fleet::start(broker, &spec).await?;
    let mut summary =
        tokio::time::interval_at(tokio::time::Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = summary.tick() => {
                let s = fleet.stats();
                info!(
                    connected = s.connected,
                    online = s.online,
                    devices = s.devices,
                    published = s.published,
                    commands = s.commands_handled,
                    dropped = s.dropped,
                    "fleet summary"
                );
            }
        }
    }
    info!("stopping fleet");
    fleet.stop().await;
    info!("fleet stopped");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("device-sim: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Fleet(args) => runtime.block_on(run_fleet(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("device-sim: {err:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("localhost:8883").unwrap(),
            ("localhost".to_string(), 8883)
        );
        assert_eq!(
            parse_broker("[::1]:8883").unwrap(),
            ("::1".to_string(), 8883)
        );
        assert!(parse_broker("localhost").is_err());
        assert!(parse_broker(":8883").is_err());
        assert!(parse_broker("host:99999").is_err());
    }

    #[test]
    fn cli_requires_exactly_one_identity() {
        Cli::command().debug_assert();
        let base = ["device-sim", "fleet", "--broker", "h:1", "--ca", "ca.pem"];
        assert!(Cli::try_parse_from(base).is_err(), "no identity accepted");
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra).copied());
        assert!(with(&["--ca-key", "ca.key"]).is_ok());
        assert!(with(&["--cert", "c.pem", "--key", "c.key"]).is_ok());
        assert!(
            with(&["--cert", "c.pem"]).is_err(),
            "--cert without --key accepted"
        );
        assert!(with(&["--ca-key", "k", "--cert", "c", "--key", "k"]).is_err());
        let Ok(cli) = with(&[
            "--ca-key",
            "k",
            "--kinds",
            "light,blind",
            "--interval",
            "200ms",
        ]) else {
            panic!("valid command line rejected");
        };
        let Command::Fleet(args) = cli.command;
        assert_eq!(args.kinds, vec![Kind::Light, Kind::Blind]);
        assert_eq!(args.interval, Duration::from_millis(200));
        assert_eq!(args.count, 12);
    }
}
