//! Connecting to the bridge — TCP, TLS with a client certificate (rustls, ring), WebSocket
//! upgrade with the `iotbridge.v1.json` subprotocol — and exchanging JSON messages over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::messages::{Message, ServerMsg};
use crate::ClientError;

/// The only subprotocol this client speaks.
pub const SUBPROTOCOL: &str = "iotbridge.v1.json";
/// Where a bridge started with its defaults listens.
pub const DEFAULT_URL: &str = "wss://localhost:8443/ws";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the bridge is and which certificates to use.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `wss://HOST[:PORT]/ws`.
    pub url: String,
    /// Client certificate chain (PEM); its CN is the identity the bridge sees.
    pub cert: PathBuf,
    /// The certificate's private key (PEM, PKCS#8 or SEC1).
    pub key: PathBuf,
    /// CA certificate(s) the bridge's server certificate must chain to (PEM).
    pub ca: PathBuf,
    /// Limit for TCP connect, TLS handshake, upgrade and `welcome` together.
    pub connect_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(
        url: impl Into<String>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        ca: impl Into<PathBuf>,
    ) -> Self {
        ConnectOptions {
            url: url.into(),
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The layout `iot-certs` writes: `DIR/users/USER.pem`, `DIR/users/USER.key`, `DIR/ca.pem`.
    pub fn from_certs_dir(url: impl Into<String>, dir: &Path, user: &str) -> Self {
        let users = dir.join("users");
        ConnectOptions::new(
            url,
            users.join(format!("{user}.pem")),
            users.join(format!("{user}.key")),
            dir.join("ca.pem"),
        )
    }
}

/// Host and port of a `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Without the brackets of an IPv6 literal: what TCP and the server name need.
    pub host: String,
    pub port: u16,
}

/// Checks a bridge URL. Only `wss://`: the bridge speaks nothing but TLS.
pub fn parse_url(url: &str) -> Result<Endpoint, ClientError> {
    let bad = |reason: &str| ClientError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("wss") => {}
        Some("ws") => return Err(bad("the bridge only speaks TLS: use wss://")),
        _ => return Err(bad("expected wss://HOST[:PORT]/ws")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Endpoint {
        host: host.to_owned(),
        port: uri.port_u16().unwrap_or(443),
    })
}

/// One WebSocket connection to the bridge, past its `welcome`.
pub struct Client {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    welcome: Message,
    next_req: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Reads the certificate files, connects, upgrades and waits for the bridge's `welcome`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client, ClientError> {
        let endpoint = parse_url(&opts.url)?;
        let tls = tls_config(opts)?;
        let connecting = connect_ws(opts, &endpoint, tls);
        let ws = tokio::time::timeout(opts.connect_timeout, connecting)
            .await
            .map_err(|_| {
                ClientError::timeout("the connection to the bridge", opts.connect_timeout)
            })??;
        let mut client = Client {
            ws,
            welcome: Message::from_value(Value::Null),
            next_req: 1,
        };
        let welcome = tokio::time::timeout(opts.connect_timeout, client.next_message())
            .await
            .map_err(|_| ClientError::timeout("the bridge's welcome", opts.connect_timeout))??;
        if !matches!(welcome.msg, ServerMsg::Welcome { .. }) {
            return Err(ClientError::Protocol(format!(
                "expected a welcome first, got {}",
                welcome.raw
            )));
        }
        client.welcome = welcome;
        Ok(client)
    }

    /// The bridge's `welcome` (protocol, server version, identity, permissions).
    pub fn welcome(&self) -> &Message {
        &self.welcome
    }

    /// Who the bridge says we are (the certificate's CN).
    pub fn identity(&self) -> &str {
        match &self.welcome.msg {
            ServerMsg::Welcome { identity, .. } => identity,
            _ => "",
        }
    }

    /// Sends a request, giving it a `req` unless it has one; returns the `req` that answers
    /// to it will echo.
    pub async fn request(&mut self, mut msg: Value) -> Result<String, ClientError> {
        let Value::Object(map) = &mut msg else {
            return Err(ClientError::NotAnObject);
        };
        let req = match map.get("req") {
            Some(Value::String(s)) => s.clone(),
            Some(other @ Value::Number(_)) => other.to_string(),
            _ => {
                let req = self.next_req.to_string();
                self.next_req += 1;
                map.insert("req".into(), Value::String(req.clone()));
                req
            }
        };
        self.send(&msg).await?;
        Ok(req)
    }

    /// Sends any JSON value as one text frame.
    pub async fn send(&mut self, msg: &Value) -> Result<(), ClientError> {
        self.ws.send(WsMessage::text(msg.to_string())).await?;
        Ok(())
    }

    /// The next message from the bridge. A close by the bridge is [`ClientError::Closed`].
    pub async fn next_message(&mut self) -> Result<Message, ClientError> {
        loop {
            let frame = match self.ws.next().await {
                None => return Err(ClientError::Closed(String::new())),
                Some(frame) => frame?,
            };
            let text = match frame {
                WsMessage::Text(text) => text,
                WsMessage::Close(frame) => {
                    let detail = frame
                        .map(|f| format!(" (code {}: {})", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    return Err(ClientError::Closed(detail));
                }
                WsMessage::Binary(_) => {
                    return Err(ClientError::Protocol(format!(
                        "a binary frame on {SUBPROTOCOL}"
                    )))
                }
                // tungstenite answers pings by itself.
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            };
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("not JSON ({e}): {text}")))?;
            return Ok(Message::from_value(value));
        }
    }

    /// Sends a request and waits for the first message echoing its `req`. Messages that
    /// arrive before it are dropped: use it before subscribing, or use [`Client::request`]
    /// and [`Client::next_message`].
    pub async fn call(&mut self, msg: Value, timeout: Duration) -> Result<Message, ClientError> {
        let req = self.request(msg).await?;
        let answer = async {
            loop {
                let msg = self.next_message().await?;
                if msg.req().as_deref() == Some(req.as_str()) {
                    return Ok(msg);
                }
            }
        };
        tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| ClientError::timeout(format!("the answer to request {req}"), timeout))?
    }

    /// Says goodbye with a close frame and waits briefly for the bridge's.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(frame)) = self.ws.next().await {
                if frame.is_close() {
                    break;
                }
            }
        })
        .await;
        Ok(())
    }
}

async fn connect_ws(
    opts: &ConnectOptions,
    endpoint: &Endpoint,
    tls: Arc<ClientConfig>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, ClientError> {
    let url = opts.url.as_str();
    let addr = format!("{}:{}", endpoint.host, endpoint.port);
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    tcp.set_nodelay(true)
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| ClientError::Url {
        url: url.to_owned(),
        reason: format!("host is not a valid server name: {e}"),
    })?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let reason = if e.to_string().contains("invalid peer certificate") {
                format!(
                    "the bridge's certificate is not valid for {} under the CA in {} ({e})",
                    endpoint.host,
                    opts.ca.display()
                )
            } else {
                e.to_string()
            };
            ClientError::Tls {
                addr: addr.clone(),
                reason,
            }
        })?;

    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| upgrade_error(&addr, e))?;
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(SUBPROTOCOL) {
        return Err(ClientError::Upgrade(format!(
            "the bridge did not agree to {SUBPROTOCOL} (answered {agreed:?})"
        )));
    }
    Ok(ws)
}

/// With TLS 1.3 the server checks the client certificate after the client's side of the
/// handshake is done, so a refused certificate first shows up here, as an alert on the
/// upgrade's read.
fn upgrade_error(addr: &str, e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .filter(|b| !b.is_empty())
                .map(|b| format!(": {b}"))
                .unwrap_or_default();
            ClientError::Upgrade(format!("HTTP {}{body}", response.status()))
        }
        tungstenite::Error::Io(io) if io.to_string().contains("alert") => ClientError::Tls {
            addr: addr.to_owned(),
            reason: format!("the bridge refused our client certificate ({io})"),
        },
        other => ClientError::WebSocket(other),
    }
}

/// Builds the TLS config once from the three files: the bridge's CA, our chain and key.
fn tls_config(opts: &ConnectOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let ca_pem = read(&opts.ca, "CA certificate")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert = cert.map_err(|e| bad(&opts.ca, "CA certificate", e))?;
        roots
            .add(cert)
            .map_err(|e| bad(&opts.ca, "CA certificate", e))?;
    }
    if roots.is_empty() {
        return Err(bad(
            &opts.ca,
            "CA certificate",
            "no CERTIFICATE block in it",
        ));
    }
    let cert_pem = read(&opts.cert, "client certificate")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&opts.cert, "client certificate", e))?;
    if chain.is_empty() {
        return Err(bad(
            &opts.cert,
            "client certificate",
            "no CERTIFICATE block in it",
        ));
    }
    let key_pem = read(&opts.key, "private key")?;
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&opts.key, "private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Tls {
            addr: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            bad(
                &opts.key,
                "private key",
                format!("it does not fit the certificate ({e})"),
            )
        })?;
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, what: &'static str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::BadFile {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = |url: &str, host: &str, port: u16| {
            assert_eq!(
                parse_url(url).unwrap(),
                Endpoint {
                    host: host.into(),
                    port
                },
                "{url}"
            );
        };
        ok("wss://localhost:8443/ws", "localhost", 8443);
        ok("wss://bridge.lan/ws", "bridge.lan", 443);
        ok("wss://[::1]:9000/ws", "::1", 9000);
        ok("wss://10.0.0.2:8443/ws", "10.0.0.2", 8443);
        for bad in [
            "ws://localhost:8443/ws",
            "https://x/ws",
            "localhost:8443",
            "wss://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} should be refused");
        }
        let err = parse_url("ws://localhost/ws").unwrap_err().to_string();
        assert!(err.contains("wss://"), "{err}");
    }

    #[test]
    fn certs_dir_layout() {
        let o = ConnectOptions::from_certs_dir(DEFAULT_URL, Path::new("dev-certs"), "alice");
        assert_eq!(o.cert, Path::new("dev-certs/users/alice.pem"));
        assert_eq!(o.key, Path::new("dev-certs/users/alice.key"));
        assert_eq!(o.ca, Path::new("dev-certs/ca.pem"));
    }
}
