//! One WebSocket client: a single task and `select!` loop over the socket, the session's outbox,
//! the ping timer and shutdown. Requests are answered through the same outbox as the streams,
//! so a client sees everything in one order.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::acl::Grants;
use crate::commands::{CommandError, CommandRequest};
use crate::gate::Gated;
use crate::history::Query;
use crate::hub::{ReadScope, SessionId, SubOptions, SubscribeRequest};
use crate::outbox::{Frame, Hold, Outbox};
use crate::protocol::{self, ClientMsg, ErrorCode, LimitsView, Permissions, ServerMsg, Wire};
use crate::server::Peer;
use crate::Shared;

/// Frames written per flush: large enough to batch, small enough to keep reading in between.
const WRITE_BATCH: usize = 256;
/// Bytes written per flush: tungstenite buffers a whole batch, so this bounds that buffer.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// A client whose queue stays over capacity this long is closed.
const SLOW_CLIENT_LIMIT: Duration = Duration::from_secs(10);
/// Close code for a client that cannot keep up (private range, documented in docs/protocol.md).
pub const CLOSE_TOO_SLOW: u16 = 4008;

pub async fn run(socket: WebSocket, wire: Wire, peer: Peer, shared: Arc<Shared>) {
    // Keeps shutdown waiting for this session; axum spawned the task, not our tracker.
    let _tracked = shared.tracker.token();
    let limits = &shared.config.limits;
    let outbox = Outbox::new(limits.session_queue, limits.session_queue_bytes);
    // Read before the grants: a reload in between shows as a newer version, and is applied.
    let acl_version = shared.acl_version();
    let grants = shared.acl().grants(&peer.identity);
    let readable = read_scope(&grants);
    let first = |broker_up| welcome(&shared, &peer.identity, &grants, wire, broker_up);
    let id = shared
        .hub
        .register(outbox.clone(), wire, readable.clone(), first);
    shared.metrics.client(wire).inc();
    // Leaves the hub however the session ends, a panic included: an outbox left registered
    // would keep collecting frames that nobody drains.
    let _registered = Registered {
        shared: shared.clone(),
        id,
        wire,
    };
    let span =
        tracing::info_span!("session", peer = %peer.addr, identity = %peer.identity, session = id);
    let session = Session {
        id,
        wire,
        peer,
        shared: shared.clone(),
        outbox,
        readable,
        grants,
        acl_version,
    };
    session.run(socket).instrument(span).await;
}

/// A session's place in the hub and in the client gauge, given up when dropped.
struct Registered {
    shared: Arc<Shared>,
    id: SessionId,
    wire: Wire,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.hub.unregister(self.id);
        self.shared.metrics.client(self.wire).dec();
    }
}

struct Session {
    id: SessionId,
    wire: Wire,
    peer: Peer,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    readable: ReadScope,
    grants: Grants,
    /// The ACL version `grants` were computed from.
    acl_version: u64,
}

/// The first message of every session: who the client is, what it may do, what the bridge
/// offers.
fn welcome(shared: &Shared, identity: &str, grants: &Grants, wire: Wire, broker_up: bool) -> Frame {
    let limits = &shared.config.limits;
    let (read, control) = (grants.read_patterns(), grants.control_patterns());
    let msg = ServerMsg::Welcome {
        protocol: protocol::PROTOCOL_VERSION,
        server: format!("iot-bridge {}", crate::VERSION),
        instance: &shared.instance,
        identity,
        permissions: Permissions {
            read: &read,
            control: &control,
        },
        broker: if broker_up { "up" } else { "down" },
        limits: LimitsView {
            max_frame_bytes: limits.max_frame_bytes,
            max_subscriptions: limits.max_subscriptions,
        },
        features: protocol::FEATURES,
    };
    Frame::control(&msg, wire)
}

fn read_scope(grants: &Grants) -> ReadScope {
    let grants = grants.clone();
    Arc::new(move |id: &str| grants.can_read(id))
}

/// Why the loop ended and what to tell the client.
enum End {
    PeerGone,
    /// The client sent a close frame: the library has queued the answer, still to be written.
    ClientClosed,
    /// Close code, reason for the client, reason label for metrics.
    Close(u16, &'static str, &'static str),
}

impl Session {
    async fn run(mut self, ws: WebSocket) {
        // A turn of the loop polls only what belongs to this session. Shutdown, ACL reloads and
        // keepalive pings reach it through its outbox (`Hub::nudge_sessions`, `keepalive`),
        // not as futures on shared state that every session would lock on every turn or as a
        // timer per session, and the socket's read side is polled only when it has something
        // (see `gate`).
        let outbox = self.outbox.clone();
        let mut ws = Gated::new(ws);
        let limits = &self.shared.config.limits;
        let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
        self.shared.keepalive.add(&outbox);
        let mut last_heard = Instant::now();
        let mut pacer = Pacer::new(
            Duration::from_millis(limits.busy_write_interval_ms),
            self.shared.metrics.paced_sessions.clone(),
        );
        let hold = Hold {
            frames: WRITE_BATCH.min(limits.session_queue / 2),
            bytes: WRITE_BATCH_BYTES.min(limits.session_queue_bytes / 2),
        };
        // When telemetry held back by the pacer is to be written.
        let flush = sleep_until(Instant::now());
        let mut flush_at: Option<Instant> = None;
        tokio::pin!(flush);
        // When the earliest frame held back by a subscription's `max_rate_hz` is due.
        let throttle = sleep_until(Instant::now());
        let mut armed: Option<Instant> = None;
        tokio::pin!(throttle);

        let end = loop {
            if self.shared.closing() {
                // Deliver what is queued (final command statuses among it), then say goodbye.
                let _ = self.write_queued(ws.get_mut(), idle_timeout).await;
                break End::Close(close_code::AWAY, "bridge shutting down", "shutdown");
            }
            if self.shared.acl_version() != self.acl_version {
                self.regrant();
            }
            let due = outbox.next_due();
            if due != armed {
                if let Some(at) = due {
                    throttle.as_mut().reset(at);
                }
                armed = due;
            }
            tokio::select! {
                incoming = ws.next() => match incoming {
                    None => break End::PeerGone,
                    Some(Err(e)) => break self.read_error(e),
                    Some(Ok(msg)) => {
                        last_heard = Instant::now();
                        match msg {
                            Message::Text(text) => self.on_frame(Frame_::Text(&text)),
                            Message::Binary(bytes) => self.on_frame(Frame_::Binary(&bytes)),
                            Message::Close(_) => break End::ClientClosed,
                            Message::Ping(_) | Message::Pong(_) => {}
                        }
                    }
                },
                _ = outbox.ready() => {
                    // Saturated: hold telemetry until the interval is over, unless something
                    // urgent is queued or a batch is full (then everything goes now).
                    let now = Instant::now();
                    let saturation = &self.shared.saturation;
                    if let Some(at) = pacer.hold_until(now, || saturation.saturated(now)) {
                        if flush_at.is_none() && outbox.hold(hold) {
                            flush.as_mut().reset(at);
                            flush_at = Some(at);
                            continue;
                        }
                    }
                    if outbox.take_ping() {
                        if last_heard.elapsed() > idle_timeout {
                            break End::Close(close_code::AWAY, "idle timeout: no pong received", "idle");
                        }
                        let ping = ws.get_mut().send(Message::Ping(Default::default()));
                        if tokio::time::timeout(idle_timeout, ping).await.is_err() {
                            break End::PeerGone;
                        }
                    }
                    if let Err(end) = self.paced_write(&mut ws, &mut pacer, &mut flush_at, idle_timeout).await {
                        break end;
                    }
                }
                _ = &mut flush, if flush_at.is_some() => {
                    if let Err(end) = self.paced_write(&mut ws, &mut pacer, &mut flush_at, idle_timeout).await {
                        break end;
                    }
                }
                _ = &mut throttle, if armed.is_some() => {
                    outbox.release_due();
                    armed = None;
                }
            }
        };
        let ws = ws.get_mut();
        match end {
            End::PeerGone => {}
            End::ClientClosed => {
                // The close handshake: echo the client's close, so it sees a clean close.
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
            }
            End::Close(code, reason, label) => {
                self.shared.metrics.closed(label);
                debug!(code, reason, "closing session");
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    // Wait briefly for the client's close so the TCP close is clean.
                    while let Some(Ok(msg)) = ws.next().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
        info!("websocket session ended");
    }

    fn read_error(&self, e: axum::Error) -> End {
        use tokio_tungstenite::tungstenite::Error as WsError;
        // axum wraps tungstenite's error; its variant, not its text, says what went wrong.
        let inner = e.into_inner();
        match inner.downcast_ref::<WsError>() {
            Some(WsError::Capacity(_)) => {
                warn!(error = %inner, "client sent an oversized message");
                End::Close(close_code::SIZE, "message too big", "oversized")
            }
            Some(WsError::Utf8(_)) => {
                warn!(error = %inner, "client sent invalid UTF-8");
                End::Close(
                    close_code::INVALID,
                    "text frame is not valid UTF-8",
                    "invalid_utf8",
                )
            }
            Some(WsError::Protocol(_)) => {
                warn!(error = %inner, "client broke the WebSocket protocol");
                End::Close(
                    close_code::PROTOCOL,
                    "websocket protocol error",
                    "protocol_error",
                )
            }
            _ => {
                debug!(error = %inner, "websocket read ended");
                End::PeerGone
            }
        }
    }

    /// Writes what is queued and ends any hold (see [`Pacer`]).
    async fn paced_write(
        &self,
        ws: &mut Gated<WebSocket>,
        pacer: &mut Pacer,
        flush_at: &mut Option<Instant>,
        deadline: Duration,
    ) -> Result<(), End> {
        if flush_at.take().is_some() {
            self.outbox.release();
        }
        let started = Instant::now();
        // A wake-up that wrote nothing (a ping, a nudge) does not start the next interval.
        if self.write_queued(ws.get_mut(), deadline).await? > 0 {
            pacer.wrote(started);
        }
        Ok(())
    }

    /// Writes queued frames in batches with one flush each, and says how many. A client that
    /// cannot take a batch within the idle timeout is dead to us.
    async fn write_queued(&self, ws: &mut WebSocket, deadline: Duration) -> Result<usize, End> {
        let metrics = &self.shared.metrics;
        // Wakes with nothing queued (a ping, a nudge) say nothing about how far behind it is.
        let queued = self.outbox.len();
        if queued > 0 {
            metrics.queue_depth.observe(queued as f64);
        }
        // Lives for this call only: an idle session holds no batch buffer.
        let mut batch = Vec::new();
        let mut written = 0;
        loop {
            let info = self
                .outbox
                .drain(&mut batch, WRITE_BATCH, WRITE_BATCH_BYTES);
            if batch.is_empty() && info.conflated == 0 {
                return Ok(written);
            }
            written += batch.len();
            if info
                .over_since
                .is_some_and(|t| t.elapsed() > SLOW_CLIENT_LIMIT)
            {
                return Err(End::Close(
                    CLOSE_TOO_SLOW,
                    "client too slow: queue over limit",
                    "too_slow",
                ));
            }
            let write = async {
                // Counted per run of one type, not per frame: the counters are shared by
                // every session, and a batch is mostly telemetry.
                let mut run = (usize::MAX, 0);
                for frame in batch.drain(..) {
                    if frame.type_index() != run.0 {
                        metrics.messages_out(run.0, run.1);
                        run = (frame.type_index(), 0);
                    }
                    run.1 += 1;
                    ws.feed(frame.message(self.wire)).await?;
                }
                metrics.messages_out(run.0, run.1);
                if info.conflated > 0 {
                    metrics.conflated.inc_by(info.conflated);
                    let lag = ServerMsg::Lagging {
                        conflated: info.conflated,
                    };
                    metrics.message_out(lag.type_index());
                    ws.feed(Frame::control(&lag, self.wire).message(self.wire))
                        .await?;
                }
                ws.flush().await
            };
            // A client that takes no bytes at all for the slow-client limit is too slow, even
            // though its queue never gets a chance to show it (the write itself is stuck).
            match tokio::time::timeout(deadline.min(SLOW_CLIENT_LIMIT), write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "write failed");
                    return Err(End::PeerGone);
                }
                Err(_) => {
                    return Err(End::Close(
                        CLOSE_TOO_SLOW,
                        "client too slow: not reading",
                        "too_slow",
                    ))
                }
            }
            if self.outbox.is_empty() {
                return Ok(written);
            }
        }
    }

    /// The ACL changed: recompute what this identity may do; streams it may no longer read stop.
    fn regrant(&mut self) {
        self.acl_version = self.shared.acl_version();
        self.grants = self.shared.acl().grants(&self.peer.identity);
        self.readable = read_scope(&self.grants);
        self.shared.hub.set_readable(self.id, self.readable.clone());
        let (read, control) = (self.grants.read_patterns(), self.grants.control_patterns());
        info!(read = ?read, control = ?control, "permissions changed");
        self.send(&ServerMsg::Permissions {
            read: &read,
            control: &control,
        });
    }

    fn send(&self, msg: &ServerMsg<'_>) {
        self.outbox.push(Frame::control(msg, self.wire));
    }

    fn error(&self, req: Option<&Value>, code: ErrorCode, message: &str) {
        self.send(&ServerMsg::Error { req, code, message });
    }

    fn on_frame(&self, frame: Frame_<'_>) {
        let decoded = match (self.wire, frame) {
            (Wire::Json, Frame_::Text(text)) => protocol::decode_json(text),
            (Wire::Cbor, Frame_::Binary(bytes)) => protocol::decode_cbor(bytes),
            (Wire::Json, Frame_::Binary(_)) => {
                return self.error(
                    None,
                    ErrorCode::BadFrame,
                    "binary frame on iotbridge.v1.json: send JSON in text frames",
                );
            }
            (Wire::Cbor, Frame_::Text(_)) => {
                return self.error(
                    None,
                    ErrorCode::BadFrame,
                    "text frame on iotbridge.v1.cbor: send CBOR in binary frames",
                );
            }
        };
        let request = match decoded {
            Ok(r) => r,
            Err(e) => {
                debug!(code = ?e.code, message = %e.message, "bad request");
                return self.error(e.req.as_ref(), e.code, &e.message);
            }
        };
        let req = request.req.as_ref();
        let hub = &self.shared.hub;
        let limits = &self.shared.config.limits;
        match request.body {
            ClientMsg::Subscribe {
                devices,
                since,
                max_rate_hz,
                fields,
            } => {
                if devices.is_empty() {
                    return self.error(req, ErrorCode::BadRequest, "devices must not be empty");
                }
                let opts = match subscription_options(max_rate_hz, fields) {
                    Ok(opts) => opts,
                    Err(message) => return self.error(req, ErrorCode::BadRequest, message),
                };
                let request = SubscribeRequest {
                    patterns: &devices,
                    req,
                    since: since.map(|s| s.resume_point()),
                    opts,
                    max_subscriptions: limits.max_subscriptions,
                    max_replay: limits.session_queue,
                };
                if let Err(e) = hub.subscribe(self.id, request) {
                    let code = match e {
                        crate::hub::SubscribeError::InvalidPattern(_) => ErrorCode::InvalidPattern,
                        crate::hub::SubscribeError::TooMany(_) => ErrorCode::TooManySubscriptions,
                    };
                    self.error(req, code, &e.to_string());
                }
            }
            ClientMsg::Unsubscribe { devices } => {
                let removed = hub.unsubscribe(self.id, &devices);
                self.send(&ServerMsg::Unsubscribed {
                    req,
                    devices: removed.iter().map(String::as_str).collect(),
                });
            }
            ClientMsg::Command {
                device,
                action,
                params,
                timeout_ms,
            } => self.command(req, device, action, params, timeout_ms),
            ClientMsg::History {
                device,
                field,
                from,
                to,
                limit,
            } => {
                let max = self.shared.config.history.max_samples.max(1);
                let query = Query {
                    field,
                    from,
                    to,
                    limit: limit.unwrap_or(max).min(max),
                };
                match hub.history(req, &device, &query, &self.readable, self.wire) {
                    Some(frame) => self.outbox.push(frame),
                    None => self.error(
                        req,
                        ErrorCode::UnknownDevice,
                        &format!("unknown device {device:?}"),
                    ),
                }
            }
            ClientMsg::List {} => self.outbox.push(hub.list(req, &self.readable, self.wire)),
            ClientMsg::Ping {} => self.send(&ServerMsg::Pong { req }),
        }
    }

    fn command(
        &self,
        req: Option<&Value>,
        device: String,
        action: String,
        params: serde_json::Map<String, Value>,
        timeout_ms: Option<u64>,
    ) {
        let config = &self.shared.config.commands;
        let timeout = match timeout_ms {
            Some(0) => {
                return self.error(req, ErrorCode::BadRequest, "timeout_ms must be at least 1");
            }
            Some(ms) => ms.min(config.max_timeout_ms),
            None => config.default_timeout_ms,
        };
        let shared = &self.shared;
        if crate::topic::is_valid_device_id(&device) && !self.grants.can_read(&device) {
            // Not even its existence is told to an identity that may not read it.
            return self.error(
                req,
                ErrorCode::UnknownDevice,
                &format!("unknown device {device:?}"),
            );
        }
        if !shared.rate.allow(&self.peer.identity) {
            shared.metrics.rate_limited.inc();
            let message = format!(
                "too many commands: at most {} per second (burst {})",
                shared.config.limits.command_rate, shared.config.limits.command_burst
            );
            return self.error(req, ErrorCode::RateLimited, &message);
        }
        let request = CommandRequest {
            req: req.cloned(),
            identity: self.peer.identity.clone(),
            device,
            action,
            params,
            timeout: Duration::from_millis(timeout),
            outbox: self.outbox.clone(),
            wire: self.wire,
        };
        if crate::topic::is_valid_device_id(&request.device)
            && !self.grants.can_control(&request.device)
        {
            return shared.commands.forbid(request);
        }
        if let Err(e) = shared.commands.start(&shared.hub, &shared.link, request) {
            let code = match e {
                CommandError::UnknownDevice(_) => ErrorCode::UnknownDevice,
                CommandError::InvalidDevice(_) | CommandError::InvalidAction(_) => {
                    ErrorCode::BadRequest
                }
            };
            self.error(req, code, &e.to_string());
        }
    }
}

/// A received data frame, before decoding.
#[derive(Clone, Copy)]
enum Frame_<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Paces a session's telemetry writes while the bridge is saturated.
///
/// Every write to a client costs the kernel several microseconds whatever it carries (on
/// loopback, more than encrypting and framing a batch of telemetry), so a bridge with a thousand
/// clients that writes each message as soon as it can spends its CPU on writes, falls behind,
/// and its latency grows. While the runtime has no time to spare ([`Saturation`]), a session
/// writes telemetry at most once per interval instead (replies and notices still go out at
/// once, and a full batch does not wait): fewer, larger writes, which lets the bridge catch up.
/// A bridge with time to spare writes at once, however long its fan-outs take.
///
/// [`Saturation`]: crate::saturation::Saturation
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    /// Whether writes were paced at the last wake-up.
    paced: bool,
    last_write: Option<Instant>,
    /// Sessions pacing now (`iotbridge_sessions_paced`): this one counts while `paced`.
    gauge: Gauge,
}

impl Pacer {
    fn new(interval: Duration, gauge: Gauge) -> Pacer {
        Pacer {
            interval,
            paced: false,
            last_write: None,
            gauge,
        }
    }

    /// When a write due now should happen instead, if it should wait: only while the bridge
    /// is `saturated`, which is not even asked with a zero interval (pacing off).
    fn hold_until(&mut self, now: Instant, saturated: impl FnOnce() -> bool) -> Option<Instant> {
        let paced = !self.interval.is_zero() && saturated();
        if paced != self.paced {
            self.paced = paced;
            if paced {
                self.gauge.inc();
            } else {
                self.gauge.dec();
            }
        }
        if !paced {
            return None;
        }
        let at = self.last_write? + self.interval;
        (at > now).then_some(at)
    }

    fn wrote(&mut self, now: Instant) {
        self.last_write = Some(now);
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        if self.paced {
            self.gauge.dec();
        }
    }
}

/// The slowest `max_rate_hz`: once a day. Slower rates would hold a value for longer than a
/// `Duration` added to an `Instant` can reach, and no dashboard waits that long.
const MIN_RATE_HZ: f64 = 1.0 / 86_400.0;
const MAX_RATE_HZ: f64 = 1000.0;

/// Checks `max_rate_hz` and `fields` of a subscribe.
fn subscription_options(
    max_rate_hz: Option<f64>,
    fields: Option<Vec<String>>,
) -> Result<SubOptions, &'static str> {
    let min_interval = match max_rate_hz {
        None => None,
        // Also refuses NaN, which compares false to everything.
        Some(hz) if (MIN_RATE_HZ..=MAX_RATE_HZ).contains(&hz) => {
            Some(Duration::from_secs_f64(1.0 / hz))
        }
        Some(_) => return Err("max_rate_hz must be a number from 1/86400 (once a day) to 1000"),
    };
    let fields = match fields {
        None => None,
        Some(f) if f.is_empty() || f.len() > 64 => {
            return Err("fields must list 1 to 64 field names")
        }
        Some(f) if f.iter().any(|n| n.is_empty() || n.len() > 64) => {
            return Err("field names must be 1 to 64 bytes")
        }
        Some(f) => Some(Arc::from(f)),
    };
    Ok(SubOptions {
        fields,
        min_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_options_are_checked() {
        assert_eq!(subscription_options(None, None), Ok(SubOptions::default()));
        let o = subscription_options(Some(4.0), Some(vec!["t".into()])).unwrap();
        assert_eq!(o.min_interval, Some(Duration::from_millis(250)));
        assert_eq!(o.fields.as_deref(), Some(&["t".to_string()][..]));
        for hz in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e6,
            1e-6,
            1e-19,
            1e-20,
            5e-324,
        ] {
            assert!(subscription_options(Some(hz), None).is_err(), "{hz}");
        }
        let slowest = subscription_options(Some(MIN_RATE_HZ), None).unwrap();
        let day = slowest.min_interval.unwrap();
        assert!(day.abs_diff(Duration::from_secs(86_400)) < Duration::from_millis(1));
        let fastest = subscription_options(Some(MAX_RATE_HZ), None).unwrap();
        assert_eq!(fastest.min_interval, Some(Duration::from_millis(1)));
        assert!(subscription_options(None, Some(vec![])).is_err());
        assert!(subscription_options(None, Some(vec![String::new()])).is_err());
        assert!(subscription_options(None, Some(vec!["x".repeat(65)])).is_err());
    }

    #[test]
    fn pacing_holds_writes_only_while_saturated() {
        let every = Duration::from_millis(20);
        let gauge = Gauge::default();
        let mut p = Pacer::new(every, gauge.clone());
        let (idle, saturated) = (|| false, || true);
        let t0 = Instant::now();
        p.wrote(t0);
        let soon = t0 + Duration::from_millis(5);
        assert_eq!(
            p.hold_until(soon, idle),
            None,
            "time to spare: writes at once"
        );
        assert_eq!(gauge.get(), 0);

        assert_eq!(
            p.hold_until(soon, saturated),
            Some(t0 + every),
            "saturated: waits for the interval"
        );
        assert_eq!(gauge.get(), 1, "counted as paced");
        assert_eq!(p.hold_until(soon, saturated), Some(t0 + every));
        assert_eq!(gauge.get(), 1, "counted once");
        assert_eq!(p.hold_until(t0 + every, saturated), None, "interval over");

        assert_eq!(p.hold_until(soon, idle), None, "no longer saturated");
        assert_eq!(gauge.get(), 0, "and no longer counted");

        // A session that ends while pacing no longer counts.
        assert!(p.hold_until(soon, saturated).is_some());
        assert_eq!(gauge.get(), 1);
        drop(p);
        assert_eq!(gauge.get(), 0, "an ended session is not paced");
    }

    #[test]
    fn a_zero_interval_never_paces() {
        let gauge = Gauge::default();
        let mut p = Pacer::new(Duration::ZERO, gauge.clone());
        let t0 = Instant::now();
        p.wrote(t0);
        let asked = std::cell::Cell::new(false);
        let saturated = || {
            asked.set(true);
            true
        };
        assert_eq!(p.hold_until(t0, saturated), None);
        assert!(!asked.get(), "pacing off: the runtime is not even sampled");
        assert_eq!(gauge.get(), 0, "and never counts as paced");
    }

    #[test]
    fn the_first_write_never_waits() {
        let mut p = Pacer::new(Duration::from_millis(20), Gauge::default());
        assert_eq!(p.hold_until(Instant::now(), || true), None);
    }
}
