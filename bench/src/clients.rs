//! The receiving side: many clients as tokio tasks, each counting and timing the telemetry it
//! gets into a shared [`Recorder`].
//!
//! Three kinds, one per path that is compared:
//! - [`Side::Bridge`]: the bridge's WebSocket protocol (`iotbridge.v1.json`), subscribed to `*`.
//! - [`Side::Peer`]: MQTT over WebSockets straight to Mosquitto, as a browser would do it.
//! - [`Side::Direct`]: a plain MQTT-over-TLS subscriber, the ceiling for one client.
//!
//! Both WebSocket kinds use the same WebSocket library, TLS stack and buffer sizes, so that the
//! load generator spends about the same per message on either side.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::mqtt::{self, Packet, QoS};
use crate::recorder::Recorder;
use crate::rig::Rig;
use crate::telemetry::{parse_bridge, parse_payload};
use crate::{tls, BenchError};

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long one client may take to connect and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Handshakes in flight at once while connecting many clients.
const CONNECT_CONCURRENCY: usize = 64;
/// Telemetry topic filter of MQTT subscribers: every device.
pub const TELEMETRY_FILTER: &str = "iot/+/telemetry";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bridge,
    Peer,
    Direct,
}

/// The same small buffers for every WebSocket client (tungstenite's default read buffer is
/// 128 KiB per connection, which 50,000 idle clients could not afford either).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
}

async fn websocket(
    addr: SocketAddr,
    source: Option<IpAddr>,
    config: &Arc<ClientConfig>,
    path: &str,
    subprotocol: &'static str,
) -> Result<Ws, BenchError> {
    let stream = tls::connect(addr, source, config).await?;
    let mut request =
        format!("wss://{}:{}{path}", tls::SERVER_NAME, addr.port()).into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(subprotocol),
    );
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())).await?;
    Ok(ws)
}

/// Next text message from the bridge (pings are answered by the library while reading).
async fn next_text(ws: &mut Ws) -> Result<String, BenchError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => {
                return Err(BenchError::Protocol(format!("bridge closed: {f:?}")))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(BenchError::Protocol("bridge closed the connection".into())),
        }
    }
}

/// Opens a bridge session and reads its `welcome`; returns whether the broker link is up.
pub async fn connect_bridge(
    addr: SocketAddr,
    source: Option<IpAddr>,
    config: &Arc<ClientConfig>,
) -> Result<(Ws, bool), BenchError> {
    let mut ws = websocket(addr, source, config, "/ws", "iotbridge.v1.json").await?;
    let welcome = next_text(&mut ws).await?;
    let msg = parse_bridge(&welcome)
        .ok_or_else(|| BenchError::Protocol(format!("unreadable first message {welcome}")))?;
    if msg.kind != "welcome" {
        return Err(BenchError::Protocol(format!(
            "expected welcome, got {welcome}"
        )));
    }
    let up = msg.broker.as_deref() == Some("up");
    Ok((ws, up))
}

/// Subscribes to every device and waits for the snapshot.
pub async fn bridge_subscribe_all(ws: &mut Ws) -> Result<(), BenchError> {
    let sub = r#"{"type":"subscribe","req":"all","devices":["*"]}"#;
    ws.send(Message::text(sub)).await?;
    loop {
        let text = next_text(ws).await?;
        match parse_bridge(&text) {
            Some(m) if m.kind == "snapshot" => return Ok(()),
            Some(m) if m.kind == "error" => return Err(BenchError::Protocol(text)),
            _ => {}
        }
    }
}

/// Waits until a new session's `welcome` says the bridge's broker link is up.
pub async fn wait_bridge_ready(
    addr: SocketAddr,
    user: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("never answered");
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), connect_bridge(addr, None, user)).await {
            Ok(Ok((mut ws, true))) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            Ok(Ok((mut ws, false))) => {
                let _ = ws.close(None).await;
                last = "broker link down".into();
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "welcome timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Timeout(format!("bridge not ready: {last}")))
}

/// Feeds complete MQTT packets at the front of `buf` to `on`, keeping any partial one.
pub fn drain_packets(
    buf: &mut BytesMut,
    mut on: impl FnMut(Packet<'_>) -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    while let Some((packet, used)) = mqtt::decode(buf)? {
        on(packet)?;
        buf.advance(used);
    }
    Ok(())
}

/// MQTT over WebSockets to Mosquitto: CONNECT, then SUBSCRIBE to `filter`; returns after SUBACK.
pub async fn connect_peer(
    addr: SocketAddr,
    source: Option<IpAddr>,
    config: &Arc<ClientConfig>,
    client_id: &str,
    filter: &str,
    qos: QoS,
) -> Result<(Ws, BytesMut), BenchError> {
    let mut ws = websocket(addr, source, config, "/mqtt", "mqtt").await?;
    let mut out = BytesMut::new();
    mqtt::connect(&mut out, client_id, 0);
    ws.send(Message::Binary(out.split().freeze())).await?;
    let mut buf = BytesMut::new();
    let mut stage = 0;
    while stage < 2 {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(Message::Close(_))) | None => {
                return Err(BenchError::Protocol("peer closed during setup".into()))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
        let mut send_subscribe = false;
        drain_packets(&mut buf, |p| match p {
            Packet::ConnAck { code: 0 } => {
                stage = 1;
                send_subscribe = true;
                Ok(())
            }
            Packet::ConnAck { code } => Err(mqtt::MqttError::Refused(code).into()),
            Packet::SubAck { codes, .. } if codes.iter().all(|c| *c < 0x80) => {
                stage = 2;
                Ok(())
            }
            Packet::SubAck { .. } => Err(mqtt::MqttError::SubscribeRefused.into()),
            _ => Ok(()),
        })?;
        if send_subscribe {
            mqtt::subscribe(&mut out, 1, filter, qos);
            ws.send(Message::Binary(out.split().freeze())).await?;
        }
    }
    Ok((ws, buf))
}

/// MQTT over TLS straight to Mosquitto's MQTT listener; returns after SUBACK.
pub async fn connect_direct(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    client_id: &str,
    filter: &str,
) -> Result<(TlsStream<TcpStream>, BytesMut), BenchError> {
    let mut stream = tls::connect(addr, None, config).await?;
    let mut out = BytesMut::new();
    mqtt::connect(&mut out, client_id, 0);
    mqtt::subscribe(&mut out, 1, filter, QoS::AtMostOnce);
    stream
        .write_all(&out)
        .await
        .map_err(BenchError::io("MQTT connect"))?;
    stream
        .flush()
        .await
        .map_err(BenchError::io("MQTT connect"))?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut subscribed = false;
    while !subscribed {
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(BenchError::io("MQTT setup"))?
            == 0
        {
            return Err(BenchError::Protocol("broker closed during setup".into()));
        }
        drain_packets(&mut buf, |p| match p {
            Packet::ConnAck { code } if code != 0 => Err(mqtt::MqttError::Refused(code).into()),
            Packet::SubAck { .. } => {
                subscribed = true;
                Ok(())
            }
            _ => Ok(()),
        })?;
    }
    Ok((stream, buf))
}

fn record_publishes(buf: &mut BytesMut, client: usize, rec: &Recorder) -> Result<(), BenchError> {
    drain_packets(buf, |p| {
        if let Packet::Publish { payload, .. } = p {
            if let Some(sample) = parse_payload(payload) {
                rec.record(client, sample);
            }
        }
        Ok(())
    })
}

/// Connected receiving clients; dropped or closed, they disconnect.
pub struct ClientSet {
    pub side: Side,
    pub recorder: Arc<Recorder>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// Clients whose connection ended on its own after setup.
    lost: Arc<AtomicUsize>,
    /// Deferred subscription: the go signal, and each client's answer.
    deferred: Option<Deferred>,
}

type Deferred = (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::Receiver<Result<(), BenchError>>,
);

/// Where the clients of a [`ClientSet`] connect to, and as whom.
#[derive(Clone)]
pub struct Targets {
    pub bridge: SocketAddr,
    /// Mosquitto's WSS listener (the peer), when there is one.
    pub peer: Option<SocketAddr>,
    /// Mosquitto's MQTT/TLS listener (the plain subscriber).
    pub direct: Option<SocketAddr>,
    /// TLS 1.3 with the `bench` user certificate.
    pub user: Arc<ClientConfig>,
}

impl Targets {
    pub fn of(rig: &Rig) -> Targets {
        Targets {
            bridge: rig.bridge.addr,
            peer: rig.broker.wss,
            direct: Some(rig.broker.mqtt),
            user: rig.certs.user.clone(),
        }
    }
}

/// Connections per source address: well under the ~28,000 ephemeral ports of one address.
pub const PER_SOURCE: usize = 15_000;

/// Which loopback addresses clients connect from: tens of thousands of connections would run
/// out of one address's ephemeral ports, so they are spread over 127.0.0.2 and up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    /// Offset of the first address past 127.0.0.2 (client processes each take their own).
    pub first: usize,
    pub count: usize,
}

impl Sources {
    /// 127.0.0.1, the kernel's choice: enough for a few thousand connections.
    pub const LOOPBACK: Sources = Sources { first: 0, count: 0 };

    /// As many addresses as `n` connections need, from the `first` one on.
    pub fn for_connections(n: usize, first: usize) -> Sources {
        Sources {
            first,
            count: n.div_ceil(PER_SOURCE),
        }
    }

    /// Where client `i` connects from (`None`: 127.0.0.1, the kernel's choice).
    pub fn of(&self, i: usize) -> Option<IpAddr> {
        if self.count <= 1 && self.first == 0 {
            return None;
        }
        let n = 2 + self.first + i % self.count.max(1);
        let last = u8::try_from(n).expect("fewer than 254 source addresses");
        Some(IpAddr::from([127, 0, 0, last]))
    }
}

impl ClientSet {
    /// Connects `n` clients of `side` to `rig` (at most [`CONNECT_CONCURRENCY`] handshakes at
    /// a time) from 127.0.0.1; returns once all are subscribed.
    pub async fn connect(rig: &Rig, side: Side, n: usize) -> Result<ClientSet, BenchError> {
        ClientSet::connect_with(&Targets::of(rig), side, n, Sources::LOOPBACK, false).await
    }

    /// [`ClientSet::connect`]; with `deferred`, bridge clients only open their session and
    /// subscribe when [`ClientSet::subscribe_deferred`] says so (to tell the cost of a bare
    /// connection from the cost of its subscription).
    pub async fn connect_with(
        targets: &Targets,
        side: Side,
        n: usize,
        sources: Sources,
        deferred: bool,
    ) -> Result<ClientSet, BenchError> {
        let deferred = deferred && side == Side::Bridge;
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let (sub_tx, sub_rx) = tokio::sync::mpsc::channel::<Result<(), BenchError>>(n.max(1));
        let recorder = Arc::new(Recorder::new(n));
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let (ready_tx, mut ready_rx) =
            tokio::sync::mpsc::channel::<Result<(), BenchError>>(n.max(1));
        let lost = Arc::new(AtomicUsize::new(0));
        let peer_addr = targets.peer;
        if side == Side::Peer && peer_addr.is_none() {
            return Err(BenchError::Setup(
                "the peer needs the WebSocket-capable Mosquitto (scripts/bench-peer-build)".into(),
            ));
        }
        for i in 0..n {
            let (rec, cancel, gate, ready) = (
                recorder.clone(),
                cancel.clone(),
                gate.clone(),
                ready_tx.clone(),
            );
            let lost = lost.clone();
            let (mut go, subscribed) = (go_rx.clone(), sub_tx.clone());
            let config = targets.user.clone();
            let (bridge, direct) = (targets.bridge, targets.direct);
            let source = sources.of(i);
            tasks.spawn(async move {
                let permit = gate.acquire_owned().await;
                let setup = async {
                    match side {
                        Side::Bridge => {
                            let (mut ws, _) = connect_bridge(bridge, source, &config).await?;
                            if !deferred {
                                bridge_subscribe_all(&mut ws).await?;
                            }
                            Ok(Conn::Bridge(ws))
                        }
                        Side::Peer => {
                            let addr = peer_addr
                                .ok_or_else(|| BenchError::Setup("no WSS listener".into()))?;
                            let id = format!("bench-peer-{i}");
                            let (ws, buf) = connect_peer(
                                addr,
                                source,
                                &config,
                                &id,
                                TELEMETRY_FILTER,
                                QoS::AtMostOnce,
                            )
                            .await?;
                            Ok(Conn::Peer(ws, buf))
                        }
                        Side::Direct => {
                            let direct = direct
                                .ok_or_else(|| BenchError::Setup("no MQTT listener".into()))?;
                            let (s, buf) = connect_direct(
                                direct,
                                &config,
                                &format!("bench-direct-{i}"),
                                TELEMETRY_FILTER,
                            )
                            .await?;
                            Ok(Conn::Direct(s, buf))
                        }
                    }
                };
                let conn = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return drop(ready.send(Err(e)).await),
                    Err(_) => {
                        return drop(
                            ready
                                .send(Err(BenchError::Timeout(format!("client {i} setup"))))
                                .await,
                        )
                    }
                };
                drop(permit);
                let _ = ready.send(Ok(())).await;
                let conn = match conn {
                    Conn::Bridge(mut ws) if deferred => {
                        // Keep reading (pings want pongs) until told to subscribe.
                        loop {
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                changed = go.changed() => if changed.is_err() { return } else { break },
                                msg = ws.next() => if !matches!(msg, Some(Ok(_))) {
                                    lost.fetch_add(1, Ordering::Relaxed);
                                    let _ = subscribed.send(Err(BenchError::Protocol(format!("client {i} lost before subscribing")))).await;
                                    return;
                                },
                            }
                        }
                        let sub = tokio::time::timeout(SETUP_TIMEOUT, bridge_subscribe_all(&mut ws)).await;
                        let sub = sub.unwrap_or_else(|_| Err(BenchError::Timeout(format!("client {i} subscribe"))));
                        let failed = sub.is_err();
                        let _ = subscribed.send(sub).await;
                        if failed {
                            return;
                        }
                        Conn::Bridge(ws)
                    }
                    conn => conn,
                };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = conn.receive(i, &rec) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    cancel.cancel();
                    return Err(e);
                }
                None => return Err(BenchError::Setup("a client task ended during setup".into())),
            }
        }
        Ok(ClientSet {
            side,
            recorder,
            cancel,
            tasks,
            lost,
            deferred: deferred.then_some((go_tx, sub_rx)),
        })
    }

    /// Tells deferred clients to subscribe to every device; returns once all got their snapshot.
    pub async fn subscribe_deferred(&mut self) -> Result<(), BenchError> {
        let Some((go, answers)) = self.deferred.as_mut() else {
            return Ok(());
        };
        let _ = go.send(true);
        for _ in 0..self.recorder.clients() {
            match answers.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(BenchError::Setup(
                        "a client ended before subscribing".into(),
                    ))
                }
            }
        }
        self.deferred = None;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.recorder.clients()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients whose connection ended since setup (the server closed it or it failed).
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::Relaxed)
    }

    pub async fn close(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

enum Conn {
    Bridge(Ws),
    Peer(Ws, BytesMut),
    Direct(TlsStream<TcpStream>, BytesMut),
}

impl Conn {
    /// Receives until the connection ends, recording every telemetry message.
    async fn receive(self, i: usize, rec: &Recorder) {
        match self {
            Conn::Bridge(mut ws) => {
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Some(m) = parse_bridge(text.as_str()) else {
                        continue;
                    };
                    match (m.kind.as_ref(), m.data) {
                        ("telemetry", Some(sample)) => rec.record(i, sample),
                        ("lagging", _) => rec.lagging(),
                        _ => {}
                    }
                }
            }
            Conn::Peer(mut ws, mut buf) => {
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Binary(b) = msg else { continue };
                    buf.extend_from_slice(&b);
                    if record_publishes(&mut buf, i, rec).is_err() {
                        break;
                    }
                }
            }
            Conn::Direct(mut stream, mut buf) => loop {
                match stream.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if record_publishes(&mut buf, i, rec).is_err() {
                            break;
                        }
                    }
                }
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(16 * 1024);
                }
            },
        }
    }
}

/// Proves a server does mutual TLS: without a client certificate, no WebSocket session opens.
pub async fn refuses_anonymous(rig: &Rig, side: Side) -> Result<bool, BenchError> {
    let anonymous = &rig.certs.anonymous;
    let attempt = async {
        match side {
            Side::Bridge => connect_bridge(rig.bridge.addr, None, anonymous)
                .await
                .map(|_| ()),
            Side::Peer => {
                let addr = rig
                    .broker
                    .wss
                    .ok_or_else(|| BenchError::Setup("no WSS listener".into()))?;
                connect_peer(
                    addr,
                    None,
                    anonymous,
                    "bench-anonymous",
                    TELEMETRY_FILTER,
                    QoS::AtMostOnce,
                )
                .await
                .map(|_| ())
            }
            Side::Direct => connect_direct(
                rig.broker.mqtt,
                anonymous,
                "bench-anonymous",
                TELEMETRY_FILTER,
            )
            .await
            .map(|_| ()),
        }
    };
    Ok(matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Err(_))
    ))
}
