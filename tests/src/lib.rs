//! End-to-end test harness for iot-bridge: a real Mosquitto running the shipped config, the real
//! bridge, simulated devices and WebSocket/HTTPS clients, all over real sockets with certificates
//! made per test.
//!
//! How the pieces fit:
//! - [`pki`]: [`Pki`] makes a fresh CA and dev certificate set in a temporary folder and issues
//!   client certificates (also from a CA nobody trusts).
//! - [`mosquitto`]: [`Mosquitto`] renders `mosquitto/mosquitto.conf` for a free local port
//!   ([`mosquitto::render_config`]) and runs, stops and restarts the broker.
//! - [`bridge`]: [`Bridge`] runs `iot_bridge::run` on the test's runtime and stops/restarts it.
//! - [`tls`], [`ws`], [`https`]: the client side — [`WsClient`] speaks `iotbridge.v1.json`,
//!   [`https::get`] fetches health paths, [`metrics::Scrape`] reads `/metrics`.
//! - [`mqtt`]: [`mqtt::MqttClient`] and [`mqtt::ManualDevice`], MQTT connections the test drives
//!   itself (exact payloads, late acks, junk, observers of the broker's traffic).
//! - [`raw_ws`]: a WebSocket client that upgrades and then never writes, reading frames raw
//!   (stalled and dead clients as the bridge sees them).
//! - [`load`]: steady readers, stalling clients, bulk publishers and the process's memory, for
//!   the slow-client tests.
//! - [`audit`]: the bridge's `audit` log records and its warnings, captured in memory by
//!   [`init_tracing`].
//! - [`env`]: [`TestEnv`] composes all of them with a `device_sim` fleet:
//!   `TestEnv::new().devices(10).start().await?`.
//!
//! Logs: set `RUST_LOG` (e.g. `RUST_LOG=iot_bridge=debug`); output goes through the test
//! writer, so it shows only for failing tests unless `--nocapture` is given.

pub mod audit;
pub mod bridge;
pub mod env;
mod error;
pub mod https;
pub mod load;
pub mod metrics;
pub mod mosquitto;
pub mod mqtt;
pub mod pki;
pub mod raw_ws;
pub mod tls;
pub mod ws;

pub use bridge::Bridge;
pub use env::{TestEnv, TestEnvBuilder};
pub use error::E2eError;
pub use mosquitto::Mosquitto;
pub use pki::{ClientCert, Pki};
pub use ws::WsClient;

/// Sets up tracing once per test binary: `RUST_LOG` filter (default `warn`) to the test writer,
/// and the `audit` target and the bridge's warnings captured in memory whatever `RUST_LOG` says
/// (see [`audit`]).
pub fn init_tracing() {
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let log = tracing_subscriber::fmt::layer()
        .with_test_writer()
        .with_filter(filter);
    let audit = audit::AuditCapture.with_filter(
        Targets::new()
            .with_target(audit::TARGET, tracing::Level::INFO)
            .with_target(audit::BRIDGE, tracing::Level::WARN),
    );
    // A second call (another test in the same binary) finds a subscriber already set: fine.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(audit)
        .try_init();
}
