//! `iot-demo`: starts broker, fleet and bridge, prints the dashboard URL and how to get in.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use iot_demo::{DemoOptions, DEMO_USER};
use tokio_util::sync::CancellationToken;

/// Run the iot-bridge demo: embedded broker + simulated fleet + bridge + dashboard.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Where dev certificates are made (once) and reused.
    #[arg(long, default_value = "dev-certs")]
    certs: PathBuf,
    /// Bridge address (dashboard and WebSocket). Use 0.0.0.0:8443 to reach it from a phone.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Embedded broker address (MQTT over mutual TLS).
    #[arg(long, default_value = "127.0.0.1:8883")]
    mqtt: SocketAddr,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 12)]
    devices: usize,
    /// Telemetry interval per device, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Extra DNS names or IPs for the server certificate (e.g. this machine's LAN address).
    #[arg(long = "san")]
    sans: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iot-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = DemoOptions {
        certs_dir: cli.certs,
        listen: cli.listen,
        mqtt: cli.mqtt,
        devices: cli.devices,
        telemetry_interval: Duration::from_millis(cli.interval_ms.max(10)),
        seed: cli.seed,
        extra_sans: cli.sans,
    };
    let shutdown = CancellationToken::new();
    let demo = iot_demo::start(&opts, shutdown.clone()).await?;
    let (_, _, p12) = demo.certs.user(DEMO_USER);
    let port = demo.bridge_addr.port();
    println!();
    println!(
        "  iot-bridge demo is running: {} simulated devices",
        demo.fleet.ids().len()
    );
    println!();
    let urls = dashboard_urls(port, &opts.extra_sans);
    println!("  Dashboard:   {}", urls.join("\n               "));
    println!("  WebSocket:   wss://localhost:{port}/ws   (subprotocol iotbridge.v1.json)");
    println!(
        "  MQTT broker: mqtts://localhost:{}  (client certificate required)",
        demo.broker_addr.port()
    );
    println!();
    println!("  The bridge asks your browser for a client certificate. Import");
    println!("    {}", p12.display());
    println!(
        "  (password: {}) and trust the dev CA {}:",
        iot_certs::DEFAULT_P12_PASSWORD,
        demo.certs.ca_cert.display()
    );
    println!("    Chrome/Edge: Settings > Privacy and security > Security > Manage certificates > Import");
    println!("    Firefox:     Settings > Privacy & Security > Certificates > View Certificates > Your Certificates > Import");
    println!(
        "    iPhone:      AirDrop or mail the .p12, install it in Settings > Profile Downloaded"
    );
    println!("    Android:     Settings > Security > Encryption & credentials > Install a certificate > VPN & app user certificate");
    println!("  For a phone, start with --listen 0.0.0.0:8443 --san <this machine's IP>.");
    println!();
    println!("  Ctrl-C (or SIGTERM) stops everything.");
    tokio::spawn(async move {
        iot_bridge::signals::terminated().await;
        shutdown.cancel();
    });
    demo.wait().await?;
    Ok(())
}

/// The dashboard's address under each name the server certificate covers: `localhost`, then
/// every `--san`, so someone on a phone sees the one to type. A wildcard names no host.
fn dashboard_urls(port: u16, sans: &[String]) -> Vec<String> {
    let mut hosts = vec!["localhost".to_owned()];
    for san in sans.iter().map(|s| s.trim()) {
        let host = match san.parse::<Ipv6Addr>() {
            Ok(ip) => format!("[{ip}]"),
            Err(_) => san.to_owned(),
        };
        if !san.starts_with("*.") && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
        .iter()
        .map(|host| format!("https://{host}:{port}/"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dashboard_url_per_name() {
        let sans = ["192.168.1.20", "iot.lan", "fe80::1", "*.lan", "localhost"].map(String::from);
        assert_eq!(
            dashboard_urls(8443, &sans),
            [
                "https://localhost:8443/",
                "https://192.168.1.20:8443/",
                "https://iot.lan:8443/",
                "https://[fe80::1]:8443/",
            ]
        );
        assert_eq!(dashboard_urls(9000, &[]), ["https://localhost:9000/"]);
    }
}
