//! `device-sim` command line: `run` a scenario file and judge it, `check` one without running it,
//! or run a plain `fleet` until interrupted.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use device_sim::duration::{format_duration, parse_duration};
use device_sim::observer::ObserverOpts;
use device_sim::run::{self, RunOptions};
use device_sim::{report, BrokerOpts, DeviceIdentity, Fleet, FleetSpec, Kind, Scenario};
use tracing::{info, warn};

/// Exit code for a bad command line, scenario or input file (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Exit code when the run finished but an expectation did not hold.
const EXIT_FAILED: u8 = 1;
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Plain progress lines (CI logs) come this often.
const LINES_EVERY: Duration = Duration::from_secs(5);

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
    /// Run a scenario: fleet, fault timeline and expectations; exit 0 only if every expectation held.
    Run(Box<RunArgs>),
    /// Check a scenario file and print what it would run, without connecting anywhere.
    Check(CheckArgs),
    /// Run a fleet of devices until interrupted; each publishes `offline` on the way out.
    Fleet(Box<FleetArgs>),
}

/// Where devices connect; on `run` these override the scenario's `[broker]`.
#[derive(clap::Args, Default)]
struct BrokerFlags {
    /// Broker address, HOST:PORT.
    #[arg(long)]
    broker: Option<String>,
    /// CA certificate (PEM) the broker's certificate chains to.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// CA private key: mint a client certificate per device (CN = device id).
    #[arg(long, conflicts_with_all = ["cert", "key"])]
    ca_key: Option<PathBuf>,
    /// One client certificate (PEM) for every device.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// MQTT topic prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// MQTT keep-alive, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    keep_alive: Option<Duration>,
    /// New connections per second across the fleet (the connection ramp).
    #[arg(long)]
    connect_rate: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    /// A live line on a terminal, plain lines otherwise (and whenever CI is set).
    Auto,
    Live,
    Lines,
    Off,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// How long to run, e.g. 60s (default: the scenario's `duration`, else 60s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Seed instead of the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    broker: BrokerFlags,
    /// The bridge the observer connects to, HOST:PORT (overrides `[observer] bridge`).
    #[arg(long)]
    bridge: Option<String>,
    /// CA of the bridge's server certificate (default: the broker CA).
    #[arg(long)]
    bridge_ca: Option<PathBuf>,
    /// The observer's client certificate (PEM); its CN is its identity at the bridge.
    #[arg(long, requires = "observer_key")]
    observer_cert: Option<PathBuf>,
    #[arg(long, requires = "observer_cert")]
    observer_key: Option<PathBuf>,
    /// Name the bridge's certificate is checked against (default: the host of --bridge).
    #[arg(long)]
    bridge_server_name: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
}

#[derive(clap::Args)]
struct CheckArgs {
    scenario: PathBuf,
    #[arg(long)]
    seed: Option<u64>,
    /// Also list every device (id, kind, room, name, format).
    #[arg(long)]
    devices: bool,
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
    /// New connections per second across the fleet (the connection ramp).
    #[arg(long)]
    connect_rate: Option<f64>,
}

/// `HOST:PORT` (IPv6 hosts in brackets).
fn parse_host_port(s: &str, what: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{what} must be HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{what} must be HOST:PORT, got '{s}'");
    }
    let port = port
        .parse()
        .with_context(|| format!("bad port in {what} '{s}'"))?;
    Ok((host.to_string(), port))
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn fleet_broker_opts(args: &FleetArgs) -> anyhow::Result<BrokerOpts> {
    let (host, port) = parse_host_port(&args.broker, "--broker")?;
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
    opts.connect_rate = args.connect_rate;
    Ok(opts)
}

/// The broker settings of a run: flags first, then the scenario's `[broker]`.
fn run_broker_opts(flags: &BrokerFlags, scenario: &Scenario) -> anyhow::Result<BrokerOpts> {
    let s = &scenario.broker;
    let address =
        flags.broker.clone().or_else(|| s.address.clone()).context(
            "no broker: give --broker HOST:PORT or set [broker] address in the scenario",
        )?;
    let (host, port) = parse_host_port(&address, "the broker address")?;
    let ca = flags
        .ca
        .clone()
        .or_else(|| s.ca.clone())
        .context("no broker CA: give --ca or set [broker] ca")?;
    let ca_pem = read(&ca, "CA certificate")?;
    let from_flags = flags.ca_key.is_some() || flags.cert.is_some();
    let (ca_key, cert, key) = if from_flags {
        (flags.ca_key.clone(), flags.cert.clone(), flags.key.clone())
    } else {
        (s.ca_key.clone(), s.cert.clone(), s.key.clone())
    };
    let identity = match (ca_key, cert, key) {
        (Some(ca_key), _, _) => DeviceIdentity::MintFromCa {
            ca_cert_pem: ca_pem.clone(),
            ca_key_pem: read(&ca_key, "CA key")?,
        },
        (None, Some(cert), Some(key)) => DeviceIdentity::Shared {
            cert_pem: read(&cert, "client certificate")?,
            key_pem: read(&key, "client key")?,
        },
        _ => bail!(
            "no device identity: give --ca-key (or --cert and --key), or set them in [broker]"
        ),
    };
    let mut opts = BrokerOpts::new(host, port, ca_pem, identity);
    if let Some(prefix) = flags.prefix.clone().or_else(|| s.prefix.clone()) {
        opts.topic_prefix = prefix;
    }
    if let Some(keep_alive) = flags.keep_alive.or(s.keep_alive) {
        opts.keep_alive = keep_alive;
    }
    opts.connect_rate = flags.connect_rate.or(s.connect_rate);
    Ok(opts)
}

/// The observer settings of a run, or `None` when no bridge is named anywhere.
fn observer_opts(
    args: &RunArgs,
    scenario: &Scenario,
    broker_ca: &str,
) -> anyhow::Result<Option<ObserverOpts>> {
    let s = &scenario.observer;
    let Some(bridge) = args.bridge.clone().or_else(|| s.bridge.clone()) else {
        return Ok(None);
    };
    let (host, port) = parse_host_port(&bridge, "the bridge address")?;
    let ca_pem = match args.bridge_ca.clone().or_else(|| s.ca.clone()) {
        Some(path) => read(&path, "bridge CA")?,
        None => broker_ca.to_string(),
    };
    let (cert, key) = match (&args.observer_cert, &args.observer_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => match (&s.cert, &s.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => bail!("the observer needs a client certificate: give --observer-cert and --observer-key, or set [observer] cert and key"),
        },
    };
    Ok(Some(ObserverOpts {
        server_name: args
            .bridge_server_name
            .clone()
            .or_else(|| s.server_name.clone())
            .unwrap_or_else(|| host.clone()),
        host,
        port,
        ca_pem,
        cert_pem: read(&cert, "observer certificate")?,
        key_pem: read(&key, "observer key")?,
    }))
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
                warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the run");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Whether a run fails (exit 1) or could not even start (exit 64).
enum Failure {
    Usage(anyhow::Error),
    Failed,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Usage(e)
    }
}

fn load(path: &Path, seed: Option<u64>) -> anyhow::Result<Scenario> {
    let mut scenario = Scenario::from_file(path)?;
    if let Some(seed) = seed {
        scenario.set_seed(seed);
    }
    Ok(scenario)
}

async fn run_scenario(args: RunArgs) -> Result<(), Failure> {
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--duration must be longer than 0s"
        )));
    }
    let scenario = load(&args.scenario, args.seed)?;
    let broker = run_broker_opts(&args.broker, &scenario)?;
    let observer = observer_opts(&args, &scenario, &broker.ca_pem)?;
    let duration = args
        .duration
        .or(scenario.duration)
        .unwrap_or(Duration::from_secs(60));
    let mode = match args.progress {
        ProgressMode::Auto
            if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() =>
        {
            ProgressMode::Live
        }
        ProgressMode::Auto => ProgressMode::Lines,
        other => other,
    };
    // Opened before the run, so a bad path fails now rather than after an hour-long run.
    let report_file = match &args.report {
        Some(path) => Some((path, create_report(path)?)),
        None => None,
    };
    let mut opts = RunOptions::new(broker, observer, duration);
    opts.progress_every = if mode == ProgressMode::Live {
        Duration::from_secs(1)
    } else {
        LINES_EVERY
    };
    let stop = opts.stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    eprintln!(
        "device-sim: running '{}' with {} devices for {}",
        scenario.name,
        scenario.device_count(),
        format_duration(duration)
    );
    let mut on_progress = |p: &run::Progress| match mode {
        ProgressMode::Live => eprint!("\r{}\x1b[K", report::progress_line(p)),
        ProgressMode::Lines => eprintln!("{}", report::progress_line(p)),
        _ => {}
    };
    let result = run::run(&scenario, opts, &mut on_progress).await;
    if mode == ProgressMode::Live {
        eprintln!();
    }
    let report = result.map_err(|e| Failure::Usage(e.into()))?;
    print!("{}", report::summary(&report));
    if let Some((path, mut file)) = report_file {
        let json = serde_json::to_string_pretty(&report).map_err(|e| Failure::Usage(e.into()))?;
        file.write_all((json + "\n").as_bytes())
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    if report.passed || (report.expectations.is_empty() && !report.interrupted) {
        Ok(())
    } else {
        Err(Failure::Failed)
    }
}

fn create_report(path: &Path) -> anyhow::Result<File> {
    File::create(path).with_context(|| format!("creating the report file {}", path.display()))
}

fn check_scenario(args: CheckArgs) -> anyhow::Result<()> {
    let scenario = load(&args.scenario, args.seed)?;
    let devices = scenario.devices();
    println!(
        "scenario '{}' (seed {}): {} devices",
        scenario.name,
        scenario.seed(),
        devices.len()
    );
    for g in &scenario.groups {
        println!(
            "  {} x {} every {} (id '{}', {}% CBOR, QoS {})",
            g.count,
            g.profile.kind,
            format_duration(g.interval),
            g.id,
            (g.cbor_share * 100.0).round(),
            g.qos
        );
    }
    let pairs: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| (d.id.as_str(), d.kind().as_str()))
        .collect();
    for f in scenario.faults() {
        let hit = f.choose(&pairs).len();
        let lasts = f
            .duration
            .map(|d| format!(" for {}", format_duration(d)))
            .unwrap_or_default();
        println!(
            "  fault '{}' ({}) at {}{lasts}: {hit} devices",
            f.name,
            f.action.type_name(),
            format_duration(f.at)
        );
    }
    for e in &scenario.expectations {
        println!("  expect {} ({})", e.name, e.check.type_name());
    }
    if args.devices {
        for d in &devices {
            println!(
                "{}\t{}\t{}\t{}\t{}",
                d.id,
                d.kind(),
                d.room,
                d.name,
                d.format.as_str()
            );
        }
    }
    Ok(())
}

async fn run_fleet(args: FleetArgs) -> anyhow::Result<()> {
    let broker = fleet_broker_opts(&args)?;
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
                let rss = run::rss_kb().map(|(rss, _)| rss / 1024);
                info!(
                    connected = s.connected,
                    online = s.online,
                    devices = s.devices,
                    published = s.published,
                    commands = s.commands_handled,
                    dropped = s.dropped,
                    rss_mb = ?rss,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; a flag clap cannot read is unusable like any
        // other (64, not clap's own 2), so scripts see one code for every usage mistake.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // `fleet` runs for hours and says what it does; `run` and `check` print their own lines
    // (progress, summary) and keep logs for trouble. RUST_LOG overrides both.
    let default_filter = match cli.command {
        Command::Fleet(_) => "info",
        Command::Run(_) | Command::Check(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("device-sim: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run_scenario(*args)),
        Command::Check(args) => check_scenario(args).map_err(Failure::Usage),
        Command::Fleet(args) => runtime.block_on(run_fleet(*args)).map_err(Failure::Usage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed) => ExitCode::from(EXIT_FAILED),
        Err(Failure::Usage(err)) => {
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
    fn addresses() {
        assert_eq!(
            parse_host_port("localhost:8883", "x").unwrap(),
            ("localhost".to_string(), 8883)
        );
        assert_eq!(
            parse_host_port("[::1]:8883", "x").unwrap(),
            ("::1".to_string(), 8883)
        );
        assert!(parse_host_port("localhost", "x").is_err());
        assert!(parse_host_port(":8883", "x").is_err());
        assert!(parse_host_port("host:99999", "x").is_err());
    }

    #[test]
    fn fleet_requires_exactly_one_identity() {
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
        let Command::Fleet(args) = cli.command else {
            panic!("not fleet")
        };
        assert_eq!(args.kinds, vec![Kind::Light, Kind::Blind]);
        let args = *args;
        assert_eq!(args.interval, Duration::from_millis(200));
        assert_eq!(args.count, 12);
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "device-sim",
            "run",
            "s.toml",
            "--duration",
            "15s",
            "--broker",
            "h:1",
            "--ca-key",
            "k",
            "--bridge",
            "h:2",
            "--observer-cert",
            "o.pem",
            "--observer-key",
            "o.key",
            "--progress",
            "lines",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("rejected")
        };
        assert_eq!(args.duration, Some(Duration::from_secs(15)));
        assert!(args.progress == ProgressMode::Lines);
        assert!(
            Cli::try_parse_from(["device-sim", "run", "s.toml", "--observer-cert", "o.pem"])
                .is_err()
        );
    }

    /// `run` of a one-light scenario against a broker that is not there, plus `extra` flags.
    fn run_args(dir: &Path, extra: &[&str]) -> RunArgs {
        let ca = iot_certs::Ca::generate("main test CA").unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let scenario = file("s.toml", "[[fleet]]\nkind = \"light\"\ncount = 1");
        let ca_pem = file("ca.pem", ca.cert_pem());
        let ca_key = file("ca.key", ca.key_pem());
        let argv = [
            "device-sim",
            "run",
            &scenario,
            "--broker",
            "127.0.0.1:1",
            "--ca",
            &ca_pem,
            "--ca-key",
            &ca_key,
            "--progress",
            "off",
        ];
        match Cli::try_parse_from(argv.iter().chain(extra).copied()) {
            Ok(Cli {
                command: Command::Run(args),
            }) => *args,
            _ => panic!("rejected"),
        }
    }

    /// The usage error `args` are refused with, at once (a run that got going would time out).
    async fn refused(args: RunArgs) -> String {
        let result = tokio::time::timeout(Duration::from_secs(10), run_scenario(args))
            .await
            .expect("the run started");
        match result {
            Err(Failure::Usage(e)) => format!("{e:#}"),
            Err(Failure::Failed) => panic!("the run failed instead of being refused"),
            Ok(()) => panic!("the run was not refused"),
        }
    }

    #[tokio::test]
    async fn a_bad_report_path_fails_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("no-such-dir").join("report.json");
        let report = report.display().to_string();
        let args = run_args(dir.path(), &["--duration", "1h", "--report", &report]);
        let e = refused(args).await;
        assert!(
            e.contains("creating the report file") && e.contains(&report),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_zero_duration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = refused(run_args(dir.path(), &["--duration", "0s"])).await;
        assert_eq!(e, "--duration must be longer than 0s");
    }

    #[test]
    fn flags_override_the_scenario() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let key = dir.path().join("ca.key");
        std::fs::write(&key, "k").unwrap();
        let text = format!(
            "[broker]\naddress = \"file-host:1\"\nca = \"{}\"\nca_key = \"{}\"\nprefix = \"lab\"\nconnect_rate = 5\n[[fleet]]\nkind = \"light\"\ncount = 1",
            ca.display(),
            key.display()
        );
        let scenario = Scenario::from_toml(&text, dir.path()).unwrap();
        let opts = run_broker_opts(&BrokerFlags::default(), &scenario).unwrap();
        assert_eq!(
            (opts.host.as_str(), opts.port, opts.topic_prefix.as_str()),
            ("file-host", 1, "lab")
        );
        assert_eq!(opts.connect_rate, Some(5.0));
        let flags = BrokerFlags {
            broker: Some("flag-host:2".into()),
            connect_rate: Some(9.0),
            ..BrokerFlags::default()
        };
        let opts = run_broker_opts(&flags, &scenario).unwrap();
        assert_eq!(
            (opts.host.as_str(), opts.port, opts.connect_rate),
            ("flag-host", 2, Some(9.0))
        );
        let bare =
            Scenario::from_toml("[[fleet]]\nkind = \"light\"\ncount = 1", dir.path()).unwrap();
        let e = run_broker_opts(&BrokerFlags::default(), &bare)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--broker"), "{e}");
    }
}
