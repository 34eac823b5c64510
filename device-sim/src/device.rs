//! One simulated device: a single task with one `select!` loop over its connection, one timer,
//! its control channel and the fleet's shutdown token. It publishes telemetry, answers commands
//! the way its profile says, and plays the faults it is told to.
//!
//! Everything the loop writes is queued on the link and written once per turn, outside the
//! `select!`, so no branch ever cancels a half-written packet.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use rustls::ClientConfig;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::behaviour::Decision;
use crate::broker::{self, BrokerOpts, TlsFactory};
use crate::codec::{self, PayloadFormat};
use crate::command;
use crate::fault::{AckMode, BadPayload, DeviceTopic, ModeChange, Modes};
use crate::link::{Backoff, Link, LinkError, Target};
use crate::profile::Profile;
use crate::ramp::Ramp;
use crate::rng::SplitMix64;
use crate::sim::Sim;
use crate::spec::DeviceSpec;

/// How long a graceful stop may take before the connection is simply dropped (the will covers it).
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Packet ids of the connect burst: meta, status, state; the command subscription comes next.
const BURST_PUBLISHES: u8 = 0b0111;
const BURST_SUBSCRIBED: u8 = 0b1000;
const BURST_DONE: u8 = BURST_PUBLISHES | BURST_SUBSCRIBED;
/// Outages (lost or failed connections) logged at `warn` before only powers of two are.
const LOUD_OUTAGES: u64 = 5;
/// Outages across every device of the process, for logging them sparingly.
static FLEET_OUTAGES: AtomicU64 = AtomicU64::new(0);

/// What the device task and its handle share. Small on purpose: one per simulated device.
pub(crate) struct Shared {
    pub id: String,
    /// The kind's shared description (8 bytes here, one copy per kind).
    pub profile: Arc<Profile>,
    pub state: Mutex<Map<String, Value>>,
    /// Connected (CONNACK received) and the connection has not failed since.
    pub connected: AtomicBool,
    /// Connected, subscribed, and meta/status/state acknowledged by the broker.
    pub online: watch::Sender<bool>,
    /// Commands answered with an ack.
    pub commands: AtomicU64,
    /// Commands read and deliberately never answered (behaviour or a fault).
    pub ignored: AtomicU64,
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    /// Active faults that make commands to this device unreliable (disconnects, ack faults).
    pub disturbed: AtomicU32,
}

impl Shared {
    pub(crate) fn set_state(&self, state: &Map<String, Value>) {
        match self.state.lock() {
            Ok(mut s) => s.clone_from(state),
            Err(poisoned) => poisoned.into_inner().clone_from(state),
        }
    }
}

pub(crate) type Reply = oneshot::Sender<()>;

/// Requests to a device task. Kept small: every device's channel buffers a few of them.
pub(crate) enum Control {
    /// Drop the connection without DISCONNECT (the broker fires the will) and stay down.
    Kill(Reply),
    /// Reconnect if down; `immediate` skips the connection ramp and the backoff.
    Revive {
        immediate: bool,
        reply: Reply,
    },
    /// Publish `offline`, DISCONNECT and stay down.
    Stop(Reply),
    Mode(Box<ModeChange>),
    Garbage {
        payload: BadPayload,
        messages: u32,
    },
    Junk {
        topic: DeviceTopic,
        payload: BadPayload,
    },
    /// Publish the real retained value of `topic` again after junk.
    Restore(DeviceTopic),
}

/// What every device of a fleet shares: where to connect and how.
pub(crate) struct Context {
    pub target: Target,
    pub tls: TlsFactory,
    pub ramp: Ramp,
    pub opts: BrokerOpts,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<(Link, Arc<ClientConfig>), LinkError>> + Send>>;

enum Conn {
    /// Down until revived (killed, stopped, or never started).
    Parked,
    /// Down; reconnect at this time (backoff).
    Waiting(Instant),
    /// Holding a slot of the connection ramp; open the connection at this time.
    Queued(Instant),
    Connecting(Connecting),
    Up(Box<Up>),
}

struct Up {
    link: Link,
    /// Which of the connect burst's acks have arrived.
    burst: u8,
    /// QoS 1 publishes not yet acknowledged.
    inflight: u32,
    last_write: Instant,
    ping_sent: Option<Instant>,
}

struct PendingAck {
    due: Instant,
    id: Box<str>,
    outcome: Result<Map<String, Value>, String>,
}

#[derive(Debug, PartialEq)]
enum StopPhase {
    /// `offline` is queued; waiting until every QoS 1 publish has its PUBACK.
    OfflineAck,
    /// DISCONNECT is queued; close once it is written.
    Closing,
}

struct Stopping {
    phase: StopPhase,
    deadline: Instant,
    replies: Vec<Reply>,
    /// The task ends afterwards (fleet shutdown) instead of staying down until revived.
    exit: bool,
}

enum ConnEvent {
    Opened(Box<Result<(Link, Arc<ClientConfig>), LinkError>>),
    Read(Result<(), LinkError>),
}

/// Everything one device task owns.
pub(crate) struct Device {
    pub(crate) shared: Arc<Shared>,
    ctx: Arc<Context>,
    profile: Arc<Profile>,
    name: Box<str>,
    room: Box<str>,
    /// `{prefix}/{id}/`
    base: Box<str>,
    format: PayloadFormat,
    qos: QoS,
    interval: Duration,
    sim: Sim,
    rng: SplitMix64,
    modes: Modes,
    /// Reorder fault: the telemetry message held back to go out after the next one.
    held: Option<Vec<u8>>,
    acks: VecDeque<PendingAck>,
    /// A minted certificate's config, kept for reconnects.
    tls: Option<Arc<ClientConfig>>,
    conn: Conn,
    backoff: Backoff,
    next_tick: Instant,
    stopping: Option<Stopping>,
    has_been_online: bool,
    done: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Device {
    pub(crate) fn new(spec: DeviceSpec, ctx: Arc<Context>, phase: Duration) -> Device {
        let sim = Sim::new(&spec.profile, spec.seed);
        let shared = Arc::new(Shared {
            profile: spec.profile.clone(),
            state: Mutex::new(sim.controls().clone()),
            connected: AtomicBool::new(false),
            online: watch::Sender::new(false),
            commands: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            disturbed: AtomicU32::new(0),
            id: spec.id,
        });
        let base = format!("{}/{}/", ctx.opts.topic_prefix, shared.id).into_boxed_str();
        Device {
            shared,
            ctx,
            name: spec.name.into_boxed_str(),
            room: spec.room.into_boxed_str(),
            base,
            format: spec.format,
            qos: if spec.telemetry_qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            interval: spec.telemetry_interval,
            sim,
            rng: SplitMix64::stream(spec.seed, 0xbe4a),
            profile: spec.profile,
            modes: Modes::default(),
            held: None,
            acks: VecDeque::new(),
            tls: None,
            conn: Conn::Parked,
            backoff: Backoff::default(),
            next_tick: Instant::now() + phase,
            stopping: None,
            has_been_online: false,
            done: false,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        shutdown: CancellationToken,
    ) {
        let mut control_open = true;
        let mut exit_requested = false;
        self.connect(false);
        while !self.done {
            let wake = self.next_wake();
            tokio::select! {
                event = conn_event(&mut self.conn) => self.on_conn_event(event),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => self.on_timer(),
                msg = control.recv(), if control_open => match msg {
                    Some(msg) => self.on_control(msg),
                    None => control_open = false,
                },
                _ = shutdown.cancelled(), if !exit_requested => {
                    exit_requested = true;
                    self.begin_stop(None, true);
                }
            }
            self.flush().await;
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    fn up(&mut self) -> Option<&mut Up> {
        match &mut self.conn {
            Conn::Up(up) => Some(up),
            _ => None,
        }
    }

    /// Starts connecting: through the ramp unless `immediate` (which also forgets the backoff).
    fn connect(&mut self, immediate: bool) {
        if immediate {
            self.backoff.reset();
            return self.open();
        }
        match self.ctx.ramp.reserve() {
            Some(slot) if slot > Instant::now() => self.conn = Conn::Queued(slot),
            _ => self.open(),
        }
    }

    /// Opens the connection now, minting a certificate first if this device needs one.
    /// The future is only allocated here, so devices queued on the ramp cost nothing extra.
    fn open(&mut self) {
        let ctx = self.ctx.clone();
        let cached = self.tls.clone();
        let id = self.shared.id.clone();
        let status = self.topic("status");
        self.conn = Conn::Connecting(Box::pin(async move {
            let tls = match cached {
                Some(tls) => tls,
                None => ctx
                    .tls
                    .for_device(&id)
                    .map_err(|e| LinkError::Protocol(e.to_string()))?,
            };
            let connect = broker::connect_packet(&ctx.opts, &id, &status);
            let link = Link::open(&ctx.target, tls.clone(), &connect).await?;
            Ok((link, tls))
        }));
    }

    fn set_disconnected(&mut self) {
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.online.send_replace(false);
        // Commands in flight die with the connection, like on a real device that rebooted.
        self.acks.clear();
        self.held = None;
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = self.stopping.as_ref().map(|s| s.deadline);
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        match &self.conn {
            Conn::Waiting(t) | Conn::Queued(t) => at(*t),
            Conn::Up(up) => {
                if self.stopping.is_none() {
                    at(self.next_tick);
                }
                if let Some(ack) = self.acks.front() {
                    at(ack.due);
                }
                let keep_alive = self.ctx.opts.keep_alive;
                if !keep_alive.is_zero() {
                    match up.ping_sent {
                        Some(sent) => at(sent + keep_alive),
                        None => at(up.last_write + keep_alive),
                    }
                }
            }
            Conn::Parked | Conn::Connecting(_) => {}
        }
        wake
    }

    fn on_conn_event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Opened(opened) => match *opened {
                Ok((link, tls)) => {
                    if !self.ctx.tls.is_shared() {
                        self.tls = Some(tls);
                    }
                    self.on_connected(link);
                }
                Err(e) => self.on_lost(e),
            },
            ConnEvent::Read(Ok(())) => self.drain_packets(),
            ConnEvent::Read(Err(e)) => self.on_lost(e),
        }
    }

    fn on_connected(&mut self, link: Link) {
        self.shared.connected.store(true, Ordering::Relaxed);
        self.backoff.reset();
        self.conn = Conn::Up(Box::new(Up {
            link,
            burst: 0,
            inflight: 0,
            last_write: Instant::now(),
            ping_sent: None,
        }));
        debug!("connected");
        let meta = self.profile.meta_json(&self.name, &self.room);
        self.publish("meta", QoS::AtLeastOnce, true, &meta);
        self.publish("status", QoS::AtLeastOnce, true, b"online");
        let state = codec::encode(self.format, self.sim.controls());
        self.publish("state", QoS::AtLeastOnce, true, &state);
        let filter = self.topic("cmd");
        if let Some(up) = self.up() {
            up.link.queue_subscribe(&filter, QoS::AtLeastOnce);
        }
    }

    /// The connection failed or was lost: back off and try again (unless stopping).
    fn on_lost(&mut self, err: LinkError) {
        let was_connected = self.shared.connected.load(Ordering::Relaxed);
        self.set_disconnected();
        if self.stopping.is_some() {
            debug!(error = %err, "connection closed while stopping");
            self.finish_stop();
            return;
        }
        let delay = self.backoff.next_delay();
        // Say it once per outage, and only a few times across a fleet: 50,000 devices losing
        // the broker together must not print 50,000 lines. Retries only matter when debugging.
        let first = was_connected || self.backoff.failures() == 1;
        let n = if first {
            FLEET_OUTAGES.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let loud = first && (n <= LOUD_OUTAGES || n.is_power_of_two());
        match (loud, was_connected) {
            (true, true) => warn!(error = %err, retry_in = ?delay, outages = n, "connection lost"),
            (true, false) => {
                warn!(error = %err, retry_in = ?delay, outages = n, "cannot connect; retrying with backoff")
            }
            _ => debug!(error = %err, retry_in = ?delay, "connect failed"),
        }
        self.conn = Conn::Waiting(Instant::now() + delay);
    }

    fn drain_packets(&mut self) {
        loop {
            let Some(up) = self.up() else { return };
            match up.link.next_packet() {
                Ok(Some(packet)) => self.on_packet(packet),
                Ok(None) => return,
                Err(e) => return self.on_lost(e),
            }
        }
    }

    fn on_packet(&mut self, packet: Packet) {
        let Some(up) = self.up() else { return };
        match packet {
            Packet::SubAck(ack) => {
                up.burst |= BURST_SUBSCRIBED;
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    // Usually a broker ACL: the device still reports, but cannot be controlled.
                    warn!("broker refused the command subscription");
                }
                self.check_online();
            }
            Packet::PubAck(ack) => {
                up.inflight = up.inflight.saturating_sub(1);
                if (1..=3).contains(&ack.pkid) {
                    up.burst |= 1 << (ack.pkid - 1);
                }
                self.check_online();
                self.advance_stop();
            }
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PingResp => up.ping_sent = None,
            other => debug!(packet = ?other, "ignoring unexpected packet"),
        }
    }

    fn check_online(&mut self) {
        let Some(up) = self.up() else { return };
        if up.burst == BURST_DONE && !*self.shared.online.borrow() {
            self.shared.online.send_replace(true);
            // The first time is routine (and a large fleet would flood the log); coming back is news.
            if self.has_been_online {
                info!("device back online");
            } else {
                debug!("device online");
                self.has_been_online = true;
            }
        }
    }

    /// Queues a publish; without a connection it is dropped and counted.
    fn publish(&mut self, suffix: &str, qos: QoS, retain: bool, payload: &[u8]) {
        let topic = self.topic(suffix);
        let Conn::Up(up) = &mut self.conn else {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        up.link.queue_publish(&topic, qos, retain, payload);
        if qos != QoS::AtMostOnce {
            up.inflight += 1;
        }
        self.shared.published.fetch_add(1, Ordering::Relaxed);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.stopping.as_ref().is_some_and(|s| now >= s.deadline) {
            debug!("graceful stop timed out; dropping the connection");
            return self.finish_stop();
        }
        match self.conn {
            Conn::Waiting(at) if now >= at => return self.connect(false),
            Conn::Queued(at) if now >= at => return self.open(),
            Conn::Waiting(_) | Conn::Queued(_) => return,
            _ => {}
        }
        let keep_alive = self.ctx.opts.keep_alive;
        let Some(up) = self.up() else { return };
        if !keep_alive.is_zero() {
            match up.ping_sent {
                Some(sent) if now >= sent + keep_alive => return self.on_lost(LinkError::Timeout),
                None if now >= up.last_write + keep_alive => {
                    up.link.queue_pingreq();
                    up.ping_sent = Some(now);
                }
                _ => {}
            }
        }
        while self.acks.front().is_some_and(|a| a.due <= now) {
            if let Some(ack) = self.acks.pop_front() {
                self.answer(&ack.id, ack.outcome);
            }
        }
        if self.stopping.is_none() && now >= self.next_tick {
            self.publish_telemetry();
            // A device that was down does not burst its missed readings when it comes back.
            let behind = (now - self.next_tick).as_nanos() / self.interval.as_nanos().max(1);
            self.next_tick += self.interval * (u32::try_from(behind).unwrap_or(u32::MAX - 1) + 1);
        }
    }

    fn telemetry_reading(&mut self) -> Map<String, Value> {
        let mut reading = self.sim.step(&self.profile, self.interval.as_secs_f64());
        reading.insert("ts".into(), Value::from(now_ms() + self.modes.skew_ms));
        reading
    }

    fn publish_telemetry(&mut self) {
        let reading = self.telemetry_reading();
        let payload = codec::encode(self.format, &reading);
        let copies = if self.modes.duplicate { 2 } else { 1 };
        if self.modes.reorder {
            match self.held.take() {
                None => return self.held = Some(payload),
                Some(earlier) => {
                    for _ in 0..copies {
                        self.publish("telemetry", self.qos, false, &payload);
                    }
                    for _ in 0..copies {
                        self.publish("telemetry", self.qos, false, &earlier);
                    }
                }
            }
            return;
        }
        for _ in 0..copies {
            self.publish("telemetry", self.qos, false, &payload);
        }
    }

    fn on_publish(&mut self, publish: Publish) {
        if let Some(up) = self.up() {
            if publish.qos == QoS::AtLeastOnce {
                up.link.queue_puback(publish.pkid);
            }
        }
        if publish.topic.strip_prefix(&*self.base) != Some("cmd") {
            return debug!(topic = %publish.topic, "ignoring message on unexpected topic");
        }
        if self.stopping.is_some() {
            return;
        }
        let Some(cmd) = command::parse(&publish.payload) else {
            return warn!(
                bytes = publish.payload.len(),
                "ignoring a command payload with no id to answer"
            );
        };
        if self.modes.acks == AckMode::Stop {
            self.shared.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let profile = &self.profile;
        let outcome = match cmd.body {
            Err(reason) => Err(reason),
            Ok((action, params))
                if action == "set" && (profile.controls.is_empty() || profile.accepts_set()) =>
            {
                match Sim::validate(profile, &params) {
                    Err(reason) => Err(reason),
                    Ok(changes) => {
                        match profile
                            .behaviour
                            .decide(&changes, self.sim.controls(), &mut self.rng)
                        {
                            Decision::Apply => Ok(changes),
                            Decision::Reject(reason) => Err(reason),
                            Decision::Ignore => {
                                self.shared.ignored.fetch_add(1, Ordering::Relaxed);
                                return debug!(cmd = %cmd.id, "command ignored");
                            }
                        }
                    }
                }
            }
            Ok((action, _)) => Err(format!("unsupported action '{action}'")),
        };
        let latency = match &self.modes.acks {
            AckMode::Slow(latency) => latency.sample(&mut self.rng),
            _ => profile.behaviour.ack_latency.sample(&mut self.rng),
        };
        if latency.is_zero() && self.acks.is_empty() {
            return self.answer(&cmd.id, outcome);
        }
        let due = Instant::now() + latency;
        // Acks go out in due order; a slow one does not hold back a quicker later one.
        let at = self
            .acks
            .iter()
            .position(|a| a.due > due)
            .unwrap_or(self.acks.len());
        self.acks.insert(
            at,
            PendingAck {
                due,
                id: cmd.id.into_boxed_str(),
                outcome,
            },
        );
    }

    fn answer(&mut self, id: &str, outcome: Result<Map<String, Value>, String>) {
        self.shared.commands.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(changes) => {
                debug!(cmd = %id, "command applied");
                self.sim.apply(changes);
                let state = self.sim.controls().clone();
                self.shared.set_state(&state);
                // New state first, so whoever sees the ack can already read the state it describes.
                let encoded = codec::encode(self.format, &state);
                self.publish("state", QoS::AtLeastOnce, true, &encoded);
                self.publish("ack", QoS::AtLeastOnce, false, &command::ack_ok(id, &state));
            }
            Err(reason) => {
                debug!(cmd = %id, %reason, "command rejected");
                self.publish(
                    "ack",
                    QoS::AtLeastOnce,
                    false,
                    &command::ack_err(id, &reason),
                );
            }
        }
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Kill(reply) => {
                // Dropping the link closes the socket without DISCONNECT: the broker sees a dead
                // connection and publishes the will.
                if matches!(self.conn, Conn::Up(_)) {
                    debug!("killed");
                }
                self.conn = Conn::Parked;
                self.set_disconnected();
                if let Some(stop) = self.stopping.take() {
                    stop.replies.into_iter().for_each(|r| {
                        let _ = r.send(());
                    });
                    self.done = stop.exit;
                }
                let _ = reply.send(());
            }
            Control::Revive { immediate, reply } => {
                let down = matches!(self.conn, Conn::Parked | Conn::Waiting(_) | Conn::Queued(_));
                if down && self.stopping.is_none() {
                    debug!("reviving");
                    self.connect(immediate);
                }
                let _ = reply.send(());
            }
            Control::Stop(reply) => self.begin_stop(Some(reply), false),
            Control::Mode(change) => self.modes.apply(*change),
            Control::Garbage { payload, messages } => {
                let mut probe = self.sim.clone();
                for _ in 0..messages {
                    let good = probe.step(&self.profile, self.interval.as_secs_f64());
                    let encoded = codec::encode(PayloadFormat::Json, &good);
                    let bytes = payload.bytes(&mut self.rng, &good, &encoded);
                    self.publish("telemetry", QoS::AtMostOnce, false, &bytes);
                }
            }
            Control::Junk { topic, payload } => {
                let good = self.sim.controls().clone();
                let encoded = codec::encode(PayloadFormat::Json, &good);
                let bytes = payload.bytes(&mut self.rng, &good, &encoded);
                self.publish(topic.as_str(), QoS::AtLeastOnce, true, &bytes);
            }
            Control::Restore(topic) => {
                let bytes = match topic {
                    DeviceTopic::Meta => self.profile.meta_json(&self.name, &self.room),
                    DeviceTopic::Status => b"online".to_vec(),
                    DeviceTopic::State => codec::encode(self.format, self.sim.controls()),
                    // Nothing real is retained there: an empty retained message clears the junk.
                    DeviceTopic::Telemetry | DeviceTopic::Ack => Vec::new(),
                };
                self.publish(topic.as_str(), QoS::AtLeastOnce, true, &bytes);
            }
        }
    }

    fn begin_stop(&mut self, reply: Option<Reply>, exit: bool) {
        if let Some(stop) = self.stopping.as_mut() {
            stop.replies.extend(reply);
            stop.exit |= exit;
            return;
        }
        self.stopping = Some(Stopping {
            phase: StopPhase::OfflineAck,
            deadline: Instant::now() + STOP_GRACE,
            replies: reply.into_iter().collect(),
            exit,
        });
        self.acks.clear();
        match self.conn {
            Conn::Up(_) => {
                self.publish("status", QoS::AtLeastOnce, true, b"offline");
            }
            // Not connected: the broker already has our will (or never saw us); nothing to say.
            _ => self.finish_stop(),
        }
    }

    /// Moves a graceful stop on once everything we published, `offline` last, is acknowledged.
    fn advance_stop(&mut self) {
        let Some(stop) = self.stopping.as_mut() else {
            return;
        };
        let Conn::Up(up) = &mut self.conn else { return };
        if stop.phase == StopPhase::OfflineAck && up.inflight == 0 {
            stop.phase = StopPhase::Closing;
            up.link.queue_disconnect();
        }
    }

    fn finish_stop(&mut self) {
        self.conn = Conn::Parked;
        self.set_disconnected();
        if let Some(stop) = self.stopping.take() {
            debug!("device stopped");
            for reply in stop.replies {
                let _ = reply.send(());
            }
            self.done = stop.exit;
        }
    }

    /// Writes what this turn queued; closes the link after a queued DISCONNECT.
    async fn flush(&mut self) {
        let Conn::Up(up) = &mut self.conn else { return };
        if up.link.has_queued() {
            match up.link.flush().await {
                Ok(()) => up.last_write = Instant::now(),
                Err(e) => return self.on_lost(e),
            }
        }
        if self
            .stopping
            .as_ref()
            .is_some_and(|s| s.phase == StopPhase::Closing)
        {
            // Keep the box: moving the link itself into this future would make every device's
            // task future a kilobyte larger.
            if let Conn::Up(mut up) = std::mem::replace(&mut self.conn, Conn::Parked) {
                up.link.close().await;
            }
            self.finish_stop();
        }
    }
}

/// The next thing the connection has for the device; never resolves while it is down.
async fn conn_event(conn: &mut Conn) -> ConnEvent {
    match conn {
        Conn::Connecting(opening) => ConnEvent::Opened(Box::new(opening.await)),
        Conn::Up(up) => ConnEvent::Read(up.link.read_more().await),
        Conn::Parked | Conn::Waiting(_) | Conn::Queued(_) => std::future::pending().await,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn size_of_future<F: Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A fleet of 50,000 holds 50,000 of these: keep the per-device footprint from creeping up.
    #[tokio::test]
    async fn a_device_task_stays_small() {
        let ca = iot_certs::Ca::generate("size test CA").unwrap();
        let identity = crate::DeviceIdentity::MintFromCa {
            ca_cert_pem: ca.cert_pem().into(),
            ca_key_pem: ca.key_pem().into(),
        };
        let opts = BrokerOpts::new("127.0.0.1", 1, ca.cert_pem(), identity);
        let ctx = Arc::new(Context {
            target: broker::target(&opts).unwrap(),
            tls: TlsFactory::new(&opts).unwrap(),
            ramp: Ramp::new(None),
            opts,
        });
        let device = Device::new(
            DeviceSpec::builtin("light-1", crate::Kind::Light),
            ctx,
            Duration::ZERO,
        );
        let (_control, rx) = mpsc::channel(4);
        let task = device.run(rx, CancellationToken::new());
        let size = size_of_future(&task);
        assert!(size <= 2048, "device task future grew to {size} bytes");
        // Every device's control channel buffers a block of these.
        assert!(std::mem::size_of::<Control>() <= 16);
    }
}
