//! The observer's connection: TCP, mutual TLS with its own certificate, and the WebSocket
//! upgrade to `/ws` with the `iotbridge.v1.json` subprotocol.

use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

use super::ObserverError;

pub const SUBPROTOCOL: &str = "iotbridge.v1.json";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// Where the bridge is and who the observer is.
#[derive(Clone)]
pub struct ObserverOpts {
    pub host: String,
    pub port: u16,
    /// The name the bridge's certificate must carry (usually the host).
    pub server_name: String,
    /// CA(s) of the bridge's server certificate, PEM.
    pub ca_pem: String,
    /// The observer's client certificate and key, PEM (its CN is its identity at the bridge).
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ObserverOpts {
    // Hand-written so the key never lands in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverOpts")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> ObserverError {
    ObserverError::Tls(format!("{what}: {e}"))
}

/// The observer's TLS config: ring provider, the bridge's CA, its own certificate.
pub(crate) fn client_config(opts: &ObserverOpts) -> Result<Arc<ClientConfig>, ObserverError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(opts.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| tls_error("bridge CA", e))?;
        roots.add(cert).map_err(|e| tls_error("bridge CA", e))?;
    }
    if roots.is_empty() {
        return Err(tls_error("bridge CA", "no CERTIFICATE block found"));
    }
    let chain = CertificateDer::pem_slice_iter(opts.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("observer certificate", e))?;
    if chain.is_empty() {
        return Err(tls_error(
            "observer certificate",
            "no CERTIFICATE block found",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(opts.key_pem.as_bytes())
        .map_err(|e| tls_error("observer key", e))?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| tls_error("protocol versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_error("observer certificate", e))?;
    Ok(Arc::new(config))
}

/// Connects and upgrades; fails unless the bridge agrees on the JSON subprotocol.
pub(crate) async fn connect(
    opts: &ObserverOpts,
    config: Arc<ClientConfig>,
) -> Result<Socket, ObserverError> {
    let open = async {
        let tcp = TcpStream::connect((opts.host.as_str(), opts.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(opts.server_name.clone())
            .map_err(|e| tls_error("server name", e))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        let url = format!("wss://{}:{}/ws", opts.server_name, opts.port);
        let mut request = url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
        let agreed = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if agreed != Some(SUBPROTOCOL) {
            return Err(ObserverError::Protocol(format!(
                "bridge agreed on subprotocol {agreed:?}, expected {SUBPROTOCOL}"
            )));
        }
        Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| ObserverError::Timeout)?
}
