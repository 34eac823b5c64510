//! The demo stack: dev certificates (made once), the embedded broker, the bridge and a
//! simulated fleet, wired together exactly as a deployment would be.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use device_sim::{BrokerOpts, DeviceIdentity, Fleet, FleetSpec};
use iot_certs::{DevCertOptions, DevCertPaths};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::EmbeddedBroker;

/// The user certificate the demo makes for the person trying it.
pub const DEMO_USER: &str = "demo";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where dev certificates live; reused when present.
    pub certs_dir: PathBuf,
    /// The bridge's HTTPS/WSS address.
    pub listen: SocketAddr,
    /// The embedded broker's MQTT/TLS address.
    pub mqtt: SocketAddr,
    pub devices: usize,
    pub telemetry_interval: Duration,
    pub seed: u64,
    /// Extra names for the server certificate (e.g. the machine's LAN name for a phone).
    pub extra_sans: Vec<String>,
}

/// Why the demo could not start.
///
/// Every variant says its cause in its own message and none reports it as a `source`: a report
/// of the error chain (`{:#}`, as `iot-demo` prints) would otherwise say each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("certificates: {0}")]
    Certs(iot_certs::CertError),
    #[error("embedded broker: {0}")]
    Broker(crate::broker::BrokerError),
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("bridge config: {0}")]
    Config(iot_bridge::config::ConfigError),
    #[error("simulated fleet: {0}")]
    Fleet(device_sim::SimError),
}

macro_rules! from {
    ($($variant:ident: $cause:ty),* $(,)?) => {$(
        impl From<$cause> for DemoError {
            fn from(e: $cause) -> DemoError {
                DemoError::$variant(e)
            }
        }
    )*};
}

from! {
    Certs: iot_certs::CertError,
    Broker: crate::broker::BrokerError,
    Config: iot_bridge::config::ConfigError,
    Fleet: device_sim::SimError,
}

/// A running demo. Dropping it does not stop it; cancel the token given to [`start`].
pub struct Demo {
    pub bridge_addr: SocketAddr,
    pub broker_addr: SocketAddr,
    pub certs: DevCertPaths,
    pub fleet: Fleet,
    bridge: JoinHandle<Result<(), iot_bridge::BridgeError>>,
    _broker: EmbeddedBroker,
}

/// Starts everything; returns once the fleet is connected and the bridge is listening.
pub async fn start(opts: &DemoOptions, shutdown: CancellationToken) -> Result<Demo, DemoError> {
    let certs = iot_certs::ensure_dev_certs(&DevCertOptions {
        out_dir: opts.certs_dir.clone(),
        extra_sans: opts.extra_sans.clone(),
        users: vec![DEMO_USER.to_owned()],
        devices: Vec::new(),
        p12_password: iot_certs::DEFAULT_P12_PASSWORD.to_owned(),
        force: false,
    })?;
    let broker = EmbeddedBroker::start(
        opts.mqtt,
        &certs.ca_cert,
        &certs.broker_cert,
        &certs.broker_key,
    )
    .await?;
    let broker_addr = broker.local_addr();

    let mut config = iot_bridge::Config::for_dev_certs(&certs.dir, "localhost", broker_addr.port());
    config.listen = opts.listen;
    config.instance_id = Some("demo".into());
    config.validate()?;
    let https = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|error| DemoError::Bind {
            addr: opts.listen,
            error,
        })?;
    let bridge_addr = https.local_addr().map_err(|error| DemoError::Bind {
        addr: opts.listen,
        error,
    })?;
    let bridge = tokio::spawn(iot_bridge::run(
        iot_bridge::Listeners { https },
        config,
        shutdown,
    ));

    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|error| DemoError::Read {
            path: path.clone(),
            error,
        })
    };
    let broker_opts = BrokerOpts::new(
        "localhost",
        broker_addr.port(),
        read(&certs.ca_cert)?,
        DeviceIdentity::MintFromCa {
            ca_cert_pem: read(&certs.ca_cert)?,
            ca_key_pem: read(&certs.ca_key)?,
        },
    );
    let spec = FleetSpec {
        count: opts.devices,
        telemetry_interval: opts.telemetry_interval,
        seed: opts.seed,
        ..FleetSpec::default()
    };
    let fleet = Fleet::start(broker_opts, &spec).await?;
    fleet.wait_connected(Duration::from_secs(20)).await?;
    Ok(Demo {
        bridge_addr,
        broker_addr,
        certs,
        fleet,
        bridge,
        _broker: broker,
    })
}

impl Demo {
    /// Waits for the bridge to stop (after the shutdown token), then stops the fleet.
    pub async fn wait(self) -> Result<(), iot_bridge::BridgeError> {
        let result = match self.bridge.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "bridge task failed");
                Ok(())
            }
        };
        self.fleet.stop().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerError;

    #[test]
    fn a_chain_report_says_each_cause_once() {
        let report = |e: DemoError| format!("{:#}", anyhow::Error::from(e));
        let gone = || std::io::Error::other("gone");
        let certs = iot_certs::CertError::Io {
            path: "ca.pem".into(),
            error: gone(),
        };
        assert_eq!(report(certs.into()), "certificates: ca.pem: gone");
        let broker = BrokerError::Read {
            path: "broker.key".into(),
            error: gone(),
        };
        assert_eq!(
            report(broker.into()),
            "embedded broker: cannot read broker.key: gone"
        );
        let bind = DemoError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            error: gone(),
        };
        assert_eq!(report(bind), "cannot listen on 127.0.0.1:8443: gone");
        let fleet = device_sim::SimError::from(rustls::Error::HandshakeNotComplete);
        assert_eq!(
            report(fleet.into()),
            "simulated fleet: TLS configuration: handshake not complete"
        );
    }
}
