//! The client side of the bridge's one TLS port: rustls configs (ring provider, with or without
//! a client certificate) and connecting with them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::{ClientCert, E2eError};

/// The name the dev server certificate is issued for.
pub const SERVER_NAME: &str = "localhost";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client config trusting `ca_pem` and presenting `client` (or no certificate at all).
pub fn client_config(
    ca_pem: &str,
    client: Option<&ClientCert>,
) -> Result<Arc<ClientConfig>, E2eError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| E2eError::Tls(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| tls("CA PEM", &e))?;
        roots.add(cert).map_err(|e| tls("CA certificate", &e))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| tls("protocol versions", &e))?
            .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls("client certificate PEM", &e))?;
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
                .map_err(|e| tls("client key PEM", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls("client certificate", &e))?
        }
    };
    Ok(Arc::new(config))
}

/// TCP connect plus TLS handshake to `addr` as `localhost`.
///
/// With TLS 1.3 the client finishes its side of the handshake before the server has checked the
/// client certificate, so a refused certificate may only show up on the first read.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, E2eError> {
    connect_tuned(addr, config, None).await
}

/// [`connect`] with the socket's receive buffer set to `recv_buffer` bytes before connecting, so
/// a client that stops reading pushes back on the bridge after a few kilobytes instead of the
/// megabytes the kernel would otherwise grow the window to.
pub async fn connect_tuned(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    recv_buffer: Option<u32>,
) -> Result<TlsStream<TcpStream>, E2eError> {
    let handshake = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(E2eError::io("creating a socket"))?;
        if let Some(bytes) = recv_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(E2eError::io("setting SO_RCVBUF"))?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .map_err(E2eError::io(format!("connecting to {addr}")))?;
        tcp.set_nodelay(true)
            .map_err(E2eError::io("setting TCP_NODELAY"))?;
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| E2eError::Tls(format!("server name: {e}")))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| E2eError::Tls(format!("handshake with {addr}: {e}")))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| E2eError::timeout(format!("TLS handshake with {addr}"), CONNECT_TIMEOUT))?
}
