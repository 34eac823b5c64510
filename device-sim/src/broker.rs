//! Broker connection settings, the devices' TLS client configs (shared, or minted per device)
//! and the CONNECT packet each device sends.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::v4::{Connect, LastWill};
use rumqttc::mqttbytes::QoS;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use crate::link::Target;
use crate::SimError;

/// Where the broker is and how devices prove who they are.
#[derive(Clone)]
pub struct BrokerOpts {
    pub host: String,
    pub port: u16,
    /// PEM bundle of the CA(s) that signed the broker's server certificate.
    pub ca_pem: String,
    pub identity: DeviceIdentity,
    /// Topic prefix, `iot` unless the deployment says otherwise.
    pub topic_prefix: String,
    pub keep_alive: Duration,
    /// New connections per second across the fleet (the connection ramp); `None` = no limit.
    pub connect_rate: Option<f64>,
    /// Name the broker's certificate is checked against; `None` = `host`.
    pub server_name: Option<String>,
}

impl BrokerOpts {
    /// Options with the contract's defaults: prefix `iot`, 30 s keep-alive.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        ca_pem: impl Into<String>,
        identity: DeviceIdentity,
    ) -> Self {
        BrokerOpts {
            host: host.into(),
            port,
            ca_pem: ca_pem.into(),
            identity,
            topic_prefix: "iot".to_string(),
            keep_alive: Duration::from_secs(30),
            connect_rate: None,
            server_name: None,
        }
    }
}

/// The client certificate(s) devices present to the broker.
#[derive(Clone)]
pub enum DeviceIdentity {
    /// Mint a per-device client cert (CN = device id) in memory from this CA, when the device
    /// first connects.
    MintFromCa {
        ca_cert_pem: String,
        ca_key_pem: String,
    },
    /// One cert for all devices: the cheapest mode, for load tests against a broker whose ACL
    /// does not tie topics to the certificate's CN.
    Shared { cert_pem: String, key_pem: String },
}

impl std::fmt::Debug for DeviceIdentity {
    // Hand-written so key material never lands in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceIdentity::MintFromCa { .. } => f.write_str("MintFromCa { .. }"),
            DeviceIdentity::Shared { .. } => f.write_str("Shared { .. }"),
        }
    }
}

impl std::fmt::Debug for BrokerOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOpts")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("identity", &self.identity)
            .field("topic_prefix", &self.topic_prefix)
            .field("keep_alive", &self.keep_alive)
            .field("connect_rate", &self.connect_rate)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, SimError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SimError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SimError::Pem {
            what,
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, SimError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| SimError::Pem {
        what,
        reason: e.to_string(),
    })
}

/// Builds TLS client configs for devices: the broker verifier is built once and shared, and either
/// one config serves every device or each device gets its own freshly minted certificate.
///
/// A per-device config has TLS session resumption turned off: rustls gives each config its own
/// session cache, preallocated for 256 servers, which would cost tens of kilobytes per device.
pub(crate) struct TlsFactory {
    provider: Arc<CryptoProvider>,
    verifier: Arc<WebPkiServerVerifier>,
    source: Source,
}

enum Source {
    Shared(Arc<ClientConfig>),
    Mint(Box<iot_certs::Ca>),
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    verifier: &Arc<WebPkiServerVerifier>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    resumption: bool,
) -> Result<Arc<ClientConfig>, SimError> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_webpki_verifier(verifier.clone())
        .with_client_auth_cert(chain, key)?;
    if !resumption {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

impl TlsFactory {
    pub(crate) fn new(opts: &BrokerOpts) -> Result<TlsFactory, SimError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(&opts.ca_pem, "broker CA")? {
            roots.add(cert)?;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let source = match &opts.identity {
            DeviceIdentity::Shared { cert_pem, key_pem } => {
                let chain = parse_certs(cert_pem, "device certificate")?;
                let key = parse_key(key_pem, "device key")?;
                Source::Shared(client_config(&provider, &verifier, chain, key, true)?)
            }
            DeviceIdentity::MintFromCa {
                ca_cert_pem,
                ca_key_pem,
            } => Source::Mint(Box::new(iot_certs::Ca::from_pem(ca_cert_pem, ca_key_pem)?)),
        };
        Ok(TlsFactory {
            provider,
            verifier,
            source,
        })
    }

    /// Whether every device shares one config (nothing to mint or keep per device).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.source, Source::Shared(_))
    }

    /// The TLS config device `id` connects with.
    pub(crate) fn for_device(&self, id: &str) -> Result<Arc<ClientConfig>, SimError> {
        match &self.source {
            Source::Shared(config) => Ok(config.clone()),
            Source::Mint(ca) => {
                let issued = ca.issue_client(id)?;
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der));
                let chain = vec![CertificateDer::from(issued.cert_der)];
                client_config(&self.provider, &self.verifier, chain, key, false)
            }
        }
    }
}

/// Checks what rumqttc would otherwise reject with a panic, and a connect rate that would
/// otherwise quietly mean no pacing at all.
pub(crate) fn validate(opts: &BrokerOpts) -> Result<(), SimError> {
    if !opts.keep_alive.is_zero() && opts.keep_alive < Duration::from_secs(1) {
        return Err(SimError::InvalidSpec(
            "keep_alive must be zero (off) or at least 1 s".to_string(),
        ));
    }
    if let Some(rate) = opts.connect_rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(SimError::InvalidSpec(format!(
            "the connect rate must be above 0 connections per second, got {rate}"
        )));
    }
    if opts.topic_prefix.is_empty() || opts.topic_prefix.contains(['+', '#']) {
        return Err(SimError::InvalidSpec(format!(
            "topic prefix '{}' must be non-empty and contain no MQTT wildcards",
            opts.topic_prefix
        )));
    }
    Ok(())
}

/// Where devices connect: host, port and the name the broker's certificate must carry.
pub(crate) fn target(opts: &BrokerOpts) -> Result<Target, SimError> {
    let name = opts
        .server_name
        .clone()
        .unwrap_or_else(|| opts.host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| SimError::InvalidSpec(format!("'{name}' is not a valid server name")))?;
    Ok(Target {
        host: opts.host.clone(),
        port: opts.port,
        server_name,
    })
}

/// The CONNECT of one device: clean session, keep-alive, and the retained `offline` will.
pub(crate) fn connect_packet(opts: &BrokerOpts, id: &str, status_topic: &str) -> Connect {
    let mut connect = Connect::new(id);
    connect.keep_alive = u16::try_from(opts.keep_alive.as_secs()).unwrap_or(u16::MAX);
    connect.clean_session = true;
    connect.last_will = Some(LastWill::new(
        status_topic,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    connect
}
