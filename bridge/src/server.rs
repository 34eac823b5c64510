//! The one TLS port: accepts connections (capped by a semaphore), runs the TLS handshake and
//! the HTTP request inside each connection's task under a deadline, then serves the router:
//! `/ws` (the WebSocket endpoint), `/healthz`, `/readyz` and the embedded dashboard files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn, Instrument};

use crate::protocol::{Wire, SUBPROTOCOL_CBOR, SUBPROTOCOL_JSON};
use crate::Shared;

/// Who is on the other end of a connection, known once the TLS handshake succeeded.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: Arc<str>,
    pub addr: SocketAddr,
    /// Held for as long as the connection (or the WebSocket session it became) lives.
    pub slot: Arc<Slot>,
}

/// A connection's place under `limits.max_connections`, counted in `iotbridge_connections`
/// for as long as the connection, or the WebSocket session it became, lives.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, metrics: Arc<crate::metrics::Metrics>) -> Slot {
        metrics.connections.inc();
        Slot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

/// Accepts until shutdown; every connection runs in its own tracked task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let app = router(shared.clone());
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off briefly rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(peer = %addr, "connection limit reached, refusing connection");
            drop(tcp);
            continue;
        };
        let span = tracing::info_span!("conn", peer = %addr, identity = tracing::field::Empty);
        let slot = Slot::new(permit, shared.metrics.clone());
        let task = connection(
            tcp,
            addr,
            slot,
            shared.acceptor(),
            app.clone(),
            shared.clone(),
        );
        shared.tracker.spawn(task.instrument(span));
    }
    debug!("listener stopped");
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    slot: Slot,
    acceptor: TlsAcceptor,
    app: Router,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    // One budget for TLS, the HTTP request and the WebSocket upgrade together.
    let budget = shared.config.handshake_timeout();
    let started = tokio::time::Instant::now();
    let tls = match tokio::time::timeout(budget, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = crate::metrics::tls_reason(&e);
            shared.metrics.tls_failure(reason);
            debug!(error = %e, reason, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_failure("timeout");
            debug!("TLS handshake timed out");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| crate::tls::identity(cert, shared.config.tls.identity));
    let Some(identity) = identity else {
        warn!("client certificate names no identity (no CN or SAN); closing");
        return;
    };
    tracing::Span::current().record("identity", identity.as_str());
    let peer = Peer {
        identity: Arc::from(identity),
        addr,
        slot: Arc::new(slot),
    };
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(
            budget
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
        )
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(get(dashboard_file))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.hub.broker_up() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let refused = shared.link.refused();
    let why = if refused.is_empty() {
        "broker link down\n".to_owned()
    } else {
        format!(
            "broker link down: the broker refused the subscriptions to {} (check its ACL)\n",
            refused.join(", ")
        )
    };
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

/// Cross-site WebSocket hijacking guard: a browser always sends `Origin`; only the bridge's own
/// origin and configured ones may use the user's certificate to open a socket.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("https://{host}")));
    own || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.metrics.render(&shared.hub.presence_counts());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn websocket(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&headers, &shared.config.security.allowed_origins) {
        warn!(origin = ?headers.get(header::ORIGIN), "websocket from a foreign origin refused");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    // The client's order of preference decides; no offer at all means JSON (simple scripts).
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let wire = if offered.is_empty() {
        Wire::Json
    } else {
        match offered.iter().find_map(|p| Wire::from_subprotocol(p)) {
            Some(wire) => wire,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unsupported subprotocol; this bridge speaks {SUBPROTOCOL_JSON} and {SUBPROTOCOL_CBOR}\n"),
                )
                    .into_response()
            }
        }
    };
    let limits = &shared.config.limits;
    info!(
        subprotocol = wire.subprotocol(),
        "websocket session starting"
    );
    ws.protocols([wire.subprotocol()])
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        // tungstenite reserves its read buffer per connection: keep it small for many idle clients.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| crate::session::run(socket, wire, peer, shared))
}

#[derive(rust_embed::RustEmbed)]
#[folder = "../dashboard/public/"]
struct Dashboard;

async fn dashboard_file(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match Dashboard::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype();
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_str(mime)
                            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    // The dashboard must not be framed by another site (clickjacking).
                    (
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static("frame-ancestors 'none'"),
                    ),
                    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                    (
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    ),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://dash.example.com".to_string()];
        let cases = [
            (headers(&[("host", "localhost:8443")]), true),
            (
                headers(&[
                    ("host", "localhost:8443"),
                    ("origin", "https://localhost:8443"),
                ]),
                true,
            ),
            (
                headers(&[
                    ("host", "localhost:8443"),
                    ("origin", "https://evil.example"),
                ]),
                false,
            ),
            (
                headers(&[
                    ("host", "localhost:8443"),
                    ("origin", "http://localhost:8443"),
                ]),
                false,
            ),
            (
                headers(&[
                    ("host", "localhost:8443"),
                    ("origin", "https://dash.example.com"),
                ]),
                true,
            ),
            (headers(&[("origin", "null")]), false),
        ];
        for (h, want) in cases {
            assert_eq!(origin_allowed(&h, &allowed), want, "{h:?}");
        }
    }
}
