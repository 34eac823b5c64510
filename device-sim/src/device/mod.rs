//! One simulated device: a single task with one `select!` loop over its connection, one timer,
//! its control channel and the fleet's shutdown token. It publishes telemetry, answers commands
//! the way its profile says, and plays the faults it is told to.
//!
//! - this module: the state, the loop, the timer and control requests;
//! - `session`: the connection's lifecycle (ramp, connect burst, packets, backoff, graceful stop);
//! - `play`: telemetry, command answers and payload faults.
//!
//! Everything the loop writes is queued on the link and written once per turn, outside the
//! `select!`, so no branch ever cancels a half-written packet.

mod play;
mod session;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rustls::ClientConfig;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::broker::{BrokerOpts, TlsFactory};
use crate::codec::PayloadFormat;
use crate::fault::{BadPayload, DeviceTopic, ModeChange, Modes};
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
    /// Command behaviour draws from this one...
    rng: SplitMix64,
    /// ...and bad payloads from this one, so the bytes of a fault do not depend on how many
    /// commands came before it.
    fault_rng: SplitMix64,
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
            fault_rng: SplitMix64::stream(spec.seed, 0xfa17),
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
            Control::Garbage { payload, messages } => self.play_garbage(payload, messages),
            Control::Junk { topic, payload } => self.play_junk(topic, payload),
            Control::Restore(topic) => self.restore(topic),
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
            target: crate::broker::target(&opts).unwrap(),
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
