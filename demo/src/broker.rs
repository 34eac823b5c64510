//! Embedded MQTT broker for the demo: rumqttd 0.20 with mutual TLS, on its own threads.
//!
//! rumqttd is configured in code (no config file): one MQTT 3.1.1 listener whose TLS
//! requires a client certificate chaining to the given CA. Things rumqttd does that shape
//! this module, all checked against its 0.20 source:
//! - `Broker::start` blocks forever and every listener runs its own single-threaded tokio
//!   runtime, so the broker gets a dedicated std thread. There is no shutdown API: the
//!   threads live until the process exits, and dropping [`EmbeddedBroker`] stops nothing.
//! - It binds the listen address itself and never reports the port, so port 0 is resolved
//!   here first by binding and releasing a std listener. Another process could take the
//!   port in between; startup then fails with [`BrokerError::Stopped`].
//! - It re-reads the CA, certificate and key files for every connection and only logs
//!   errors, so they are loaded and checked here once before starting, to fail loudly.
//!   It trusts only the first certificate of the CA file.
//! - It performs each TLS handshake inside its accept loop, without a timeout: a client
//!   that opens TCP and stalls delays everyone else's connect (established connections are
//!   unaffected). Acceptable for a demo, one reason it is not the production broker.
//! - It logs ordinary disconnects and failed handshakes at ERROR level; the readiness
//!   probe below causes one such "Tls accept error" line at startup. Filter the `rumqttd`
//!   target to keep the demo's output readable.
//! - It uses rustls 0.22 with ring built in, so no process-wide crypto provider is needed.
//! - A client certificate's subject O is taken as a tenant id (must be alphanumeric); the
//!   dev certificates carry only a CN, so all clients share one topic space.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::{info, warn};

/// Largest MQTT packet accepted: a 256 KiB payload plus room for topic and header.
pub const MAX_PACKET_SIZE: usize = 256 * 1024 + 4 * 1024;
/// Concurrent client connections the router accepts.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Time a client has after TLS to send CONNECT (fends off idle sockets holding slots).
const CONNECT_TIMEOUT_MS: u16 = 10_000;
/// Unacknowledged QoS 1/2 messages per connection, and packets read per batch.
const MAX_INFLIGHT: usize = 100;
/// Each subscription filter keeps its messages in an in-memory log of segments; old
/// segments are dropped. 4 x 4 MiB per filter lets a subscriber lag seconds behind a busy
/// fleet while bounding memory. A segment holds at least one packet, so big payloads fit.
const SEGMENT_SIZE: usize = 4 * 1024 * 1024;
const SEGMENT_COUNT: usize = 4;
/// How long `start` waits for the listener to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the broker could not start. Causes are in the messages, never `source`s (see
/// [`crate::DemoError`]).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{}: {reason}", path.display())]
    BadPath { path: PathBuf, reason: &'static str },
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("unusable TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot start the broker thread: {0}")]
    Spawn(std::io::Error),
    #[error("broker stopped while starting on {addr} (port taken meanwhile? see the rumqttd log)")]
    Stopped { addr: SocketAddr },
    #[error("broker did not listen on {addr} within {waited:?}")]
    NotListening { addr: SocketAddr, waited: Duration },
}

/// A running rumqttd broker. It runs until the process exits.
#[derive(Debug)]
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Binds `addr` (port 0 allowed: report the real port), requires client certs chaining to ca_cert.
    pub async fn start(
        addr: SocketAddr,
        ca_cert: &Path,
        server_cert: &Path,
        server_key: &Path,
    ) -> Result<EmbeddedBroker, BrokerError> {
        check_tls_files(ca_cert, server_cert, server_key)?;
        let local_addr = reserve_port(addr)?;
        let tls = TlsConfig::Rustls {
            capath: Some(utf8(ca_cert)?),
            certpath: utf8(server_cert)?,
            keypath: utf8(server_key)?,
        };
        let config = broker_config(local_addr, tls);

        let (stopped_tx, stopped_rx) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                // Returns only when the listener thread has ended, e.g. it could not bind.
                if let Err(e) = broker.start() {
                    warn!(error = %e, "embedded MQTT broker failed");
                }
                let _ = stopped_tx.send(());
            })
            .map_err(BrokerError::Spawn)?;

        wait_until_listening(local_addr, &stopped_rx).await?;
        info!(addr = %local_addr, "embedded MQTT broker listening (mutual TLS)");
        Ok(EmbeddedBroker { local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

fn broker_config(listen: SocketAddr, tls: TlsConfig) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: MAX_PACKET_SIZE,
        max_inflight_count: MAX_INFLIGHT,
        // Identity comes from the client certificate; no user names or passwords.
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "mqtts".into(),
        listen,
        tls: Some(tls),
        // rumqttd sleeps this long after each accept; a fleet reconnecting at once should not wait.
        next_connection_delay_ms: 0,
        connections,
    };
    let router = RouterConfig {
        max_connections: MAX_CONNECTIONS,
        max_outgoing_packet_count: 200,
        max_segment_size: SEGMENT_SIZE,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("mqtts".to_owned(), server)])),
        ..Config::default()
    }
}

/// Loads the files the way rumqttd will and builds an equivalent rustls config, so a bad
/// file is reported now instead of as a log line on every connection attempt.
fn check_tls_files(ca: &Path, cert: &Path, key: &Path) -> Result<(), BrokerError> {
    let ca_certs = load_certs(ca)?;
    if ca_certs.len() > 1 {
        warn!(path = %ca.display(), "rumqttd trusts only the first certificate of the CA file");
    }
    let mut roots = RootCertStore::empty();
    for root in ca_certs.into_iter().take(1) {
        roots.add(root).map_err(|e| BrokerError::Pem {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| BrokerError::Pem {
        path: key.to_path_buf(),
        reason: format!("no private key: {e}"),
    })?;
    let chain = load_certs(cert)?;
    // `with_single_cert` also proves that the key belongs to the certificate.
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| {
            b.with_client_cert_verifier(verifier)
                .with_single_cert(chain, key_der)
        })
        .map_err(|e| BrokerError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
    Ok(())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let pem_error = |reason: String| BrokerError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate in file".into()));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|error| BrokerError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn utf8(path: &Path) -> Result<String, BrokerError> {
    // rumqttd's TLS settings are strings.
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| BrokerError::BadPath {
            path: path.to_path_buf(),
            reason: "rumqttd needs a UTF-8 path",
        })
}

/// Checks that `addr` is free and turns port 0 into a concrete free port.
fn reserve_port(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|error| BrokerError::Bind { addr, error })?;
    listener
        .local_addr()
        .map_err(|error| BrokerError::Bind { addr, error })
    // The listener is dropped here so that rumqttd can bind the same port.
}

/// Polls with plain TCP connects until rumqttd accepts, or its thread ends, or time runs out.
async fn wait_until_listening(
    addr: SocketAddr,
    stopped: &mpsc::Receiver<()>,
) -> Result<(), BrokerError> {
    let probe = SocketAddr::new(connectable(addr.ip()), addr.port());
    let started = Instant::now();
    loop {
        if stopped.try_recv().is_ok() {
            return Err(BrokerError::Stopped { addr });
        }
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(probe),
        );
        if let Ok(Ok(stream)) = attempt.await {
            drop(stream);
            return Ok(());
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            return Err(BrokerError::NotListening {
                addr,
                waited: STARTUP_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A wildcard listen address is reached through loopback.
fn connectable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        assert_eq!(
            connectable("0.0.0.0".parse().unwrap()),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            connectable("::".parse().unwrap()),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        let lan: IpAddr = "192.168.1.2".parse().unwrap();
        assert_eq!(connectable(lan), lan);
    }

    #[test]
    fn port_zero_becomes_a_real_port() {
        let addr = reserve_port("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn config_has_the_promised_limits() {
        let tls = TlsConfig::Rustls {
            capath: Some("ca.pem".into()),
            certpath: "broker.pem".into(),
            keypath: "broker.key".into(),
        };
        let config = broker_config("127.0.0.1:8883".parse().unwrap(), tls);
        assert!(config.router.max_connections >= 1000);
        let v4 = config.v4.unwrap();
        let server = v4.values().next().unwrap();
        assert!(server.connections.max_payload_size >= 256 * 1024);
        assert!(matches!(
            server.tls,
            Some(TlsConfig::Rustls {
                capath: Some(_),
                ..
            })
        ));
        assert!(config.v5.is_none() && config.ws.is_none() && config.prometheus.is_none());
    }
}
