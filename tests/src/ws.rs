//! A WebSocket test client for `wss://localhost:PORT/ws` with the `iotbridge.v1.json`
//! subprotocol: send JSON, receive JSON with deadlines, wait for a matching message while keeping
//! the ones it passed over.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{tls, ClientCert, E2eError};

pub const SUBPROTOCOL: &str = "iotbridge.v1.json";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages passed over by [`WsClient::recv_until`] that are kept; the oldest go first beyond this.
const BACKLOG_LIMIT: usize = 50_000;

/// How to open a WebSocket: which subprotocol to offer, extra upgrade headers (e.g. `Origin`),
/// and an optional small socket receive buffer (see [`tls::connect_tuned`]).
#[derive(Debug, Clone, Default)]
pub struct UpgradeOpts<'a> {
    pub subprotocol: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
    pub recv_buffer: Option<u32>,
}

/// A WebSocket over the bridge's TLS port, before any protocol decoding.
pub type RawWs = WebSocketStream<TlsStream<TcpStream>>;

/// TLS connect plus WebSocket upgrade of `/ws`. A refused upgrade is
/// `E2eError::WebSocket(tungstenite::Error::Http(response))`, which carries the HTTP status.
pub async fn open(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    opts: &UpgradeOpts<'_>,
) -> Result<(RawWs, Response), E2eError> {
    let stream = tls::connect_tuned(addr, config, opts.recv_buffer).await?;
    let url = format!("wss://{}:{}/ws", tls::SERVER_NAME, addr.port());
    let mut request = url.as_str().into_client_request()?;
    if let Some(subprotocol) = opts.subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(subprotocol)
                .map_err(|e| E2eError::Bridge(format!("subprotocol header: {e}")))?,
        );
    }
    for (name, value) in opts.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| E2eError::Bridge(format!("header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| E2eError::Bridge(format!("header value {value:?}: {e}")))?;
        request.headers_mut().insert(name, value);
    }
    let upgrade = tokio_tungstenite::client_async(request, stream);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade)
        .await
        .map_err(|_| E2eError::timeout("the WebSocket upgrade", HANDSHAKE_TIMEOUT))?
        .map_err(E2eError::from)
}

/// One WebSocket connection to the bridge.
pub struct WsClient {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    /// Messages read from the socket but not yet handed out, in arrival order.
    backlog: VecDeque<Value>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects with a client certificate; fails if the TLS handshake or the upgrade is refused.
    pub async fn connect(
        addr: SocketAddr,
        client_cert_pem: &str,
        client_key_pem: &str,
        ca_pem: &str,
    ) -> Result<WsClient, E2eError> {
        let client = ClientCert {
            cert_pem: client_cert_pem.to_owned(),
            key_pem: client_key_pem.to_owned(),
        };
        WsClient::connect_with(addr, tls::client_config(ca_pem, Some(&client))?).await
    }

    /// Connects presenting no client certificate at all (the bridge must refuse this).
    pub async fn connect_without_cert(
        addr: SocketAddr,
        ca_pem: &str,
    ) -> Result<WsClient, E2eError> {
        WsClient::connect_with(addr, tls::client_config(ca_pem, None)?).await
    }

    /// Connects with any TLS client config.
    pub async fn connect_with(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> Result<WsClient, E2eError> {
        WsClient::connect_opts(addr, config, &UpgradeOpts::default()).await
    }

    /// Connects with upgrade options (extra headers, a small receive buffer); the bridge must
    /// agree on [`SUBPROTOCOL`].
    pub async fn connect_opts(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        opts: &UpgradeOpts<'_>,
    ) -> Result<WsClient, E2eError> {
        let opts = UpgradeOpts {
            subprotocol: Some(SUBPROTOCOL),
            ..opts.clone()
        };
        let (ws, response) = open(addr, config, &opts).await?;
        let agreed = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if agreed != Some(SUBPROTOCOL) {
            return Err(E2eError::Bridge(format!(
                "bridge agreed on subprotocol {agreed:?}, expected {SUBPROTOCOL}"
            )));
        }
        Ok(WsClient {
            ws,
            backlog: VecDeque::new(),
        })
    }

    /// Wraps a WebSocket opened with [`open`] (any subprotocol) for its reading helpers.
    pub fn from_raw(ws: RawWs) -> WsClient {
        WsClient {
            ws,
            backlog: VecDeque::new(),
        }
    }

    /// Sends one JSON message as a text frame.
    pub async fn send(&mut self, msg: &Value) -> Result<(), E2eError> {
        self.send_text(&msg.to_string()).await
    }

    /// Sends any text, e.g. a malformed frame.
    pub async fn send_text(&mut self, text: &str) -> Result<(), E2eError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends any WebSocket message, e.g. a binary frame or a raw frame with invalid UTF-8.
    pub async fn send_message(&mut self, msg: Message) -> Result<(), E2eError> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Reads until the bridge ends the connection and returns its close frame; `None` when the
    /// connection ended without one (EOF or reset). JSON messages read on the way are kept in
    /// the backlog, so [`WsClient::take_backlog`] tells what came before the close. The
    /// WebSocket library answers pings as it reads: for a client that must never write, use
    /// [`crate::raw_ws`].
    pub async fn recv_close(&mut self, timeout: Duration) -> Result<Option<CloseFrame>, E2eError> {
        let read = async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(msg) = serde_json::from_str(&text) {
                            self.backlog.push_back(msg);
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| E2eError::timeout("the bridge to close the connection", timeout))
    }

    /// The next message in arrival order: first those kept by [`WsClient::recv_until`], then
    /// the socket.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Value, E2eError> {
        if let Some(msg) = self.backlog.pop_front() {
            return Ok(msg);
        }
        let read = self.read("the next message");
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| E2eError::timeout("the next message", timeout))?
    }

    /// The first message (in arrival order) for which `pred` holds. Messages it passes over stay
    /// in the backlog, in order, for later `recv`/`recv_until` calls.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, E2eError> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            if let Some(found) = self.backlog.remove(i) {
                return Ok(found);
            }
        }
        let search = async {
            loop {
                let msg = self.read("a matching message").await?;
                if pred(&msg) {
                    return Ok(msg);
                }
                if self.backlog.len() == BACKLOG_LIMIT {
                    self.backlog.pop_front();
                }
                self.backlog.push_back(msg);
            }
        };
        tokio::time::timeout(timeout, search)
            .await
            .map_err(|_| E2eError::timeout("a matching message", timeout))?
    }

    /// Waits for a message of this `type` with this `req` (the answer to a request).
    pub async fn recv_answer(
        &mut self,
        kind: &str,
        req: &str,
        timeout: Duration,
    ) -> Result<Value, E2eError> {
        self.recv_until(|m| m["type"] == kind && m["req"] == req, timeout)
            .await
    }

    /// Sends a request and waits for its first answer (any message echoing its `req`).
    pub async fn request(&mut self, msg: &Value, timeout: Duration) -> Result<Value, E2eError> {
        let req = msg["req"].clone();
        self.send(msg).await?;
        self.recv_until(|m| m["req"] == req, timeout).await
    }

    /// Lists devices until the bridge says each of `ids` is online.
    pub async fn wait_online(&mut self, ids: &[&str], timeout: Duration) -> Result<(), E2eError> {
        let started = std::time::Instant::now();
        for n in 0u64.. {
            let req = format!("wait-online-{n}");
            let list = self
                .request(&serde_json::json!({"type": "list", "req": req}), timeout)
                .await?;
            let online = |id: &&str| {
                list["devices"].as_array().is_some_and(|all| {
                    all.iter()
                        .any(|d| d["id"] == *id && d["presence"] == "online")
                })
            };
            if ids.iter().all(online) {
                break;
            }
            if started.elapsed() > timeout {
                return Err(E2eError::timeout(
                    format!(
                        "all {} devices online at the bridge; last list: {list}",
                        ids.len()
                    ),
                    timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The `command_status` messages of `req` up to and including its final one (anything but
    /// `accepted` and `sent`), in arrival order.
    pub async fn command_statuses(
        &mut self,
        req: &str,
        timeout: Duration,
    ) -> Result<Vec<Value>, E2eError> {
        let mut all = Vec::new();
        loop {
            let msg = self
                .recv_until(
                    |m| m["type"] == "command_status" && m["req"] == req,
                    timeout,
                )
                .await?;
            let last = !matches!(msg["status"].as_str(), Some("accepted" | "sent"));
            all.push(msg);
            if last {
                return Ok(all);
            }
        }
    }

    /// Pings the bridge and, once the pong is back, fails if anything (more) came for `req`:
    /// whatever the bridge would still say about it would have come first.
    pub async fn expect_nothing_more_for(
        &mut self,
        req: &str,
        timeout: Duration,
    ) -> Result<(), E2eError> {
        let ping = serde_json::json!({"type": "ping", "req": format!("after-{req}")});
        let pong = self.request(&ping, timeout).await?;
        if pong["type"] != "pong" {
            return Err(E2eError::Bridge(format!("ping answered with {pong}")));
        }
        let more: Vec<&Value> = self.backlog().filter(|m| m["req"] == req).collect();
        if !more.is_empty() {
            return Err(E2eError::Bridge(format!(
                "more for {req} after its end: {more:?}"
            )));
        }
        Ok(())
    }

    /// Subscribes to device ids or globs and returns the `snapshot`; an `error` answer is an error.
    pub async fn subscribe(
        &mut self,
        devices: &[&str],
        req: &str,
        timeout: Duration,
    ) -> Result<Value, E2eError> {
        let msg = serde_json::json!({"type": "subscribe", "req": req, "devices": devices});
        let answer = self.request(&msg, timeout).await?;
        if answer["type"] != "snapshot" {
            return Err(E2eError::Bridge(format!(
                "subscribe {devices:?} answered with {answer}"
            )));
        }
        Ok(answer)
    }

    /// Hands out (and forgets) every kept message.
    pub fn take_backlog(&mut self) -> Vec<Value> {
        self.backlog.drain(..).collect()
    }

    /// Kept messages, oldest first.
    pub fn backlog(&self) -> impl Iterator<Item = &Value> {
        self.backlog.iter()
    }

    /// Sends a close frame and waits briefly for the bridge's.
    pub async fn close(mut self) -> Result<(), E2eError> {
        self.ws.close(None).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        })
        .await;
        Ok(())
    }

    /// Reads the next JSON message from the socket (no deadline; callers add one).
    async fn read(&mut self, waiting_for: &str) -> Result<Value, E2eError> {
        loop {
            let msg = match self.ws.next().await {
                None => return Err(E2eError::Closed(waiting_for.to_owned())),
                Some(msg) => msg?,
            };
            let text = match msg {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    return Err(E2eError::Closed(format!(
                        "{waiting_for} (close frame {frame:?})"
                    )))
                }
                Message::Binary(_) => {
                    return Err(E2eError::Bridge(format!(
                        "binary frame on {SUBPROTOCOL} while waiting for {waiting_for}"
                    )))
                }
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return serde_json::from_str(&text).map_err(|source| E2eError::Json {
                text: text.to_string(),
                source,
            });
        }
    }
}
