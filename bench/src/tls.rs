//! TLS for every client the benchmark runs: TLS 1.3 only, ECDSA P-256 certificates from the
//! dev CA, a client certificate on every connection (or none, to prove a server refuses that).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::BenchError;

/// The name every server certificate of the dev set carries.
pub const SERVER_NAME: &str = "localhost";

fn read(path: &Path) -> Result<Vec<u8>, BenchError> {
    std::fs::read(path).map_err(BenchError::io(format!("reading {}", path.display())))
}

/// A TLS 1.3-only client config trusting `ca`, presenting `identity` (cert, key) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, BenchError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
        let cert = cert.map_err(|e| BenchError::Pem(format!("{}: {e}", ca.display())))?;
        roots.add(cert)?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BenchError::Pem(format!("{}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| BenchError::Pem(format!("{}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}

/// TCP (from `source`, when given, so that more than one address's ephemeral ports can be used)
/// with Nagle off, then the TLS handshake. Fails unless TLS 1.3 was negotiated.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    config: &Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, BenchError> {
    let tcp = tcp(addr, source).await?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| BenchError::Setup(e.to_string()))?;
    let tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(BenchError::io(format!("TLS handshake with {addr}")))?;
    match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => Ok(tls),
        other => Err(BenchError::Protocol(format!(
            "{addr} negotiated {other:?}, not TLS 1.3"
        ))),
    }
}

async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, BenchError> {
    let socket = TcpSocket::new_v4().map_err(BenchError::io("creating a socket"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(BenchError::io(format!("binding to {ip}")))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .map_err(BenchError::io(format!("connecting to {addr}")))?;
    tcp.set_nodelay(true)
        .map_err(BenchError::io("TCP_NODELAY"))?;
    Ok(tcp)
}
