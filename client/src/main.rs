//! `iotctl`: the terminal client of iot-bridge — list devices, watch them live, send commands
//! and read history over the bridge's WebSocket endpoint, with the dashboard's certificates.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use iot_client::format::{list_table, status_line};
use iot_client::params::{parse_duration, parse_params};
use iot_client::{
    exit_code, run_command, Client, ClientError, Clock, CommandSpec, ConnectOptions, Formatter,
    Outcome, ServerMsg, WatchOptions, DEFAULT_URL,
};
use serde_json::{json, Value};

/// How long `list` and `history` wait for their answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminal client for iot-bridge. Connects to wss://HOST:PORT/ws with a client certificate
/// (the same one the dashboard uses).
///
/// Exit codes: 0 success; 1 error (unknown device, bad request, connection or certificate
/// trouble); for `cmd`: 2 rejected by the device, 3 device or broker offline, 4 no
/// acknowledgement in time, 5 forbidden.
#[derive(Debug, Parser)]
#[command(name = "iotctl", version)]
struct Cli {
    /// The bridge's WebSocket URL.
    #[arg(long, global = true, help_heading = "Connection", env = "IOTCTL_URL", default_value = DEFAULT_URL)]
    url: String,
    /// Client certificate (PEM). Default with --certs-dir: DIR/users/USER.pem.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "IOTCTL_CERT",
        value_name = "PEM"
    )]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Default with --certs-dir: DIR/users/USER.key.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "IOTCTL_KEY",
        value_name = "PEM"
    )]
    key: Option<PathBuf>,
    /// CA certificate the bridge's certificate chains to. Default with --certs-dir: DIR/ca.pem.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "IOTCTL_CA",
        value_name = "PEM"
    )]
    ca: Option<PathBuf>,
    /// A folder laid out by `iot-certs` (e.g. dev-certs); use with --user.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "IOTCTL_CERTS_DIR",
        value_name = "DIR"
    )]
    certs_dir: Option<PathBuf>,
    /// Whose certificate to use from --certs-dir.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "IOTCTL_USER",
        value_name = "NAME"
    )]
    user: Option<String>,
    /// Limit for connecting (TCP, TLS, upgrade), e.g. 5s.
    #[arg(long, global = true, help_heading = "Connection", value_parser = parse_duration, default_value = "10s", value_name = "TIME")]
    connect_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the devices the bridge knows: id, kind, name, room, presence.
    List {
        /// Print the device list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow devices live until Ctrl-C, --count or --duration.
    Watch {
        /// Device ids or glob patterns (`thermo-*`); default: every device.
        #[arg(value_name = "PATTERN")]
        patterns: Vec<String>,
        /// Print every message as one line of JSON.
        #[arg(long)]
        json: bool,
        /// Only these telemetry fields (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "A,B")]
        fields: Option<Vec<String>>,
        /// At most this many telemetry messages per device per second.
        #[arg(long, value_name = "HZ")]
        max_rate: Option<f64>,
        /// Stop after N messages following the snapshot.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration, value_name = "TIME")]
        duration: Option<Duration>,
    },
    /// Send a command: `iotctl cmd light-1 on=true brightness=40`. Values are JSON when they
    /// parse as JSON (true, 42, 21.5, "x"), text otherwise.
    Cmd {
        /// The device id.
        device: String,
        /// Parameters of the action, e.g. `on=true brightness=40 mode=warm`.
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// The action; the device's meta lists those it knows.
        #[arg(long, default_value = "set")]
        action: String,
        /// How long the device has to acknowledge (the bridge may cap it).
        #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "TIME")]
        timeout: Duration,
        /// Print each status as one line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recent telemetry of a device, oldest first.
    History {
        /// The device id.
        device: String,
        /// Only samples holding this field, reduced to it.
        #[arg(long)]
        field: Option<String>,
        /// At most this many samples (the newest).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print the samples as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: see `Clock::local`.
    let clock = Clock::local();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(cli, clock)) {
        Ok(code) => ExitCode::from(code),
        // `iotctl watch | head` closing the pipe is how such a pipeline ends, not an error.
        Err(e)
            if matches!(e.downcast_ref(), Some(ClientError::Output(io))
                if io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// One line on stderr. Only the outermost message: ours already name their cause.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("iotctl: {e}");
    ExitCode::from(exit_code::FAILURE)
}

async fn run(cli: Cli, clock: Clock) -> anyhow::Result<u8> {
    let opts = connect_options(&cli)?;
    // Parameters are checked before connecting: a typo should not cost a handshake.
    let params = match &cli.command {
        Command::Cmd { params, .. } => parse_params(params).map_err(anyhow::Error::msg)?,
        _ => Default::default(),
    };
    let mut client = Client::connect(&opts).await?;
    let mut out = std::io::stdout().lock();
    let code = match cli.command {
        Command::List { json } => list(&mut client, json, &mut out).await?,
        Command::Watch {
            patterns,
            json,
            fields,
            max_rate,
            count,
            duration,
        } => {
            let opts = WatchOptions {
                patterns,
                fields,
                max_rate_hz: max_rate,
                json,
                count,
                duration,
            };
            let mut formatter = Formatter::new(clock);
            let stop = async {
                // Without a signal handler Ctrl-C would kill us before the close frame.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            iot_client::watch::watch(&mut client, &opts, &mut formatter, &mut out, stop).await?;
            exit_code::OK
        }
        Command::Cmd {
            device,
            action,
            timeout,
            json,
            ..
        } => {
            let spec = CommandSpec {
                device,
                action,
                params,
                timeout,
            };
            command(&mut client, &spec, json, &mut out).await?
        }
        Command::History {
            device,
            field,
            limit,
            json,
        } => {
            let formatter = Formatter::new(clock);
            history(
                &mut client,
                formatter,
                &device,
                field,
                limit,
                json,
                &mut out,
            )
            .await?
        }
    };
    // The answer is in; a failed goodbye changes nothing for the caller.
    let _ = client.close().await;
    Ok(code)
}

/// Explicit files win; `--certs-dir` with `--user` fills in the rest.
fn connect_options(cli: &Cli) -> anyhow::Result<ConnectOptions> {
    let from_dir = match (&cli.certs_dir, &cli.user) {
        (Some(dir), Some(user)) => Some(ConnectOptions::from_certs_dir(&cli.url, dir, user)),
        (Some(_), None) if cli.cert.is_none() => {
            anyhow::bail!("--certs-dir needs --user NAME to pick a certificate")
        }
        _ => None,
    };
    let pick = |explicit: &Option<PathBuf>, fallback: Option<&PathBuf>, flag: &str| {
        explicit
            .clone()
            .or_else(|| fallback.cloned())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no {flag} given: pass --cert, --key and --ca (or IOTCTL_CERT, IOTCTL_KEY, \
                 IOTCTL_CA), or --certs-dir DIR --user NAME"
                )
            })
    };
    let ca_from_dir = cli.certs_dir.as_ref().map(|d| d.join("ca.pem"));
    let mut opts = ConnectOptions::new(
        &cli.url,
        pick(&cli.cert, from_dir.as_ref().map(|o| &o.cert), "--cert")?,
        pick(&cli.key, from_dir.as_ref().map(|o| &o.key), "--key")?,
        pick(&cli.ca, ca_from_dir.as_ref(), "--ca")?,
    );
    opts.connect_timeout = cli.connect_timeout;
    Ok(opts)
}

/// Turns an `error` answer into a failure naming the bridge's code.
fn refused(msg: &iot_client::Message) -> anyhow::Error {
    match &msg.msg {
        ServerMsg::Error { code, message } => ClientError::Bridge {
            code: code.clone(),
            message: message.clone(),
        }
        .into(),
        _ => ClientError::Protocol(format!("unexpected answer {}", msg.raw)).into(),
    }
}

async fn list(client: &mut Client, json: bool, out: &mut impl Write) -> anyhow::Result<u8> {
    let answer = client.call(json!({"type": "list"}), ANSWER_TIMEOUT).await?;
    let ServerMsg::List { devices } = &answer.msg else {
        return Err(refused(&answer));
    };
    if json {
        writeln!(out, "{}", answer.raw["devices"]).map_err(ClientError::Output)?;
    } else {
        writeln!(out, "{}", list_table(devices)).map_err(ClientError::Output)?;
    }
    Ok(exit_code::OK)
}

async fn command(
    client: &mut Client,
    spec: &CommandSpec,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let outcome = run_command(client, spec, |msg| {
        // Errors are reported once, below, on stderr.
        if matches!(msg.msg, ServerMsg::Error { .. }) {
            return Ok(());
        }
        let line = if json {
            msg.raw.to_string()
        } else {
            status_line(msg)
        };
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(ClientError::Output)
    })
    .await?;
    match &outcome {
        Outcome::Refused { code, message } => eprintln!("iotctl: {code}: {message}"),
        Outcome::NoAnswer => eprintln!(
            "iotctl: no final status from the bridge within {:?} (plus a margin)",
            spec.timeout
        ),
        Outcome::Other(status) => eprintln!("iotctl: unexpected final status {status:?}"),
        _ => {}
    }
    Ok(outcome.exit_code())
}

async fn history(
    client: &mut Client,
    mut formatter: Formatter,
    device: &str,
    field: Option<String>,
    limit: Option<usize>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    if !json {
        // Units live in the device's meta, which only a snapshot carries. Without it the
        // samples are still shown, so a failure here is not one.
        let snapshot = client
            .call(
                json!({"type": "subscribe", "devices": [device]}),
                ANSWER_TIMEOUT,
            )
            .await;
        if let Ok(iot_client::Message {
            msg: ServerMsg::Snapshot { devices, .. },
            ..
        }) = &snapshot
        {
            for d in devices {
                formatter.learn_meta(&d.id, d.meta.as_ref());
            }
        }
    }
    let mut request = json!({"type": "history", "device": device});
    if let Some(field) = field {
        request["field"] = Value::String(field);
    }
    if let Some(limit) = limit {
        request["limit"] = json!(limit);
    }
    let answer = client.call(request, ANSWER_TIMEOUT).await?;
    let ServerMsg::History { samples, .. } = &answer.msg else {
        return Err(refused(&answer));
    };
    let text = if json {
        answer.raw["samples"].to_string()
    } else if samples.is_empty() {
        "no samples".to_owned()
    } else {
        let lines: Vec<String> = samples
            .iter()
            .map(|s| formatter.sample_line(device, s))
            .collect();
        lines.join("\n")
    };
    writeln!(out, "{text}").map_err(ClientError::Output)?;
    Ok(exit_code::OK)
}
