//! The `iot-bridge` binary: flags, tracing, config; then binds and hands over to `iot_bridge::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use iot_bridge::{Config, Control, Listeners};
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration the bridge cannot use (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Bridge between an MQTT broker and WebSocket clients, mutual TLS on both sides.
#[derive(Debug, Parser)]
#[command(version = iot_bridge::VERSION, about)]
struct Cli {
    /// TOML config file (see bridge.example.toml).
    #[arg(short, long, env = "IOT_BRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Use the certificates in this directory as laid out by `iot-certs init` (no config file needed).
    #[arg(long, conflicts_with = "config")]
    dev_certs: Option<PathBuf>,
    /// Address of the TLS port (dashboard, /ws, health).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Broker host.
    #[arg(long)]
    broker_host: Option<String>,
    /// Broker port.
    #[arg(long)]
    broker_port: Option<u16>,
    /// MQTT topic prefix.
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("iot-bridge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A certificate, key, CRL or ACL that does not load is as unusable as a bad config, and is
    // told apart from a failure of the running bridge the same way: exit 64, before binding.
    if let Err(e) = iot_bridge::check_files(&config) {
        eprintln!("iot-bridge: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iot-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, iot_bridge::config::ConfigError> {
    let mut config = match (&cli.config, &cli.dev_certs) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(dir)) => Config::for_dev_certs(dir, "localhost", 8883),
        (None, None) => {
            return Err(iot_bridge::config::ConfigError::Invalid(
                "give --config FILE or --dev-certs DIR".into(),
            ))
        }
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(host) = &cli.broker_host {
        config.broker.host = host.clone();
    }
    if let Some(port) = cli.broker_port {
        config.broker.port = port;
    }
    if let Some(prefix) = &cli.topic_prefix {
        config.broker.topic_prefix = prefix.clone();
    }
    config.validate()?;
    Ok(config)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let https = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let control = Control::default();
    tokio::spawn(signals(control.shutdown.clone()));
    #[cfg(unix)]
    tokio::spawn(hangups(control.reload.clone()));
    iot_bridge::run_with(Listeners { https }, config, control).await?;
    Ok(())
}

/// SIGHUP reloads the ACL and the TLS files, the way daemons usually do.
#[cfg(unix)]
async fn hangups(reload: std::sync::Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading ACL and certificates");
        reload.notify_one();
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signals(shutdown: CancellationToken) {
    iot_bridge::signals::terminated().await;
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
