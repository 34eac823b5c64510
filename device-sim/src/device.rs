//! One simulated device: a single task that owns the MQTT event loop, publishes telemetry on a
//! timer, answers commands, and obeys kill/revive/stop from its handle.
//!
//! Every publish uses `try_publish`: this task is the only one polling the event loop (see
//! `link`), so awaiting a full request channel here would deadlock (rumqtt issue #1025).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, SubscribeReasonCode,
};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::{self, PayloadFormat};
use crate::command;
use crate::kind::{Kind, Meta};
use crate::link::{next_event, Backoff, Link};
use crate::model::Model;

/// How long a graceful stop may take before the connection is simply dropped (the will covers it).
const STOP_GRACE: Duration = Duration::from_secs(3);
/// After our DISCONNECT, how long to wait for the broker to close its side.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// QoS 1 publishes sent right after ConnAck before a device counts as online (meta, status, state).
const CONNECT_PUBLISHES: u32 = 3;

/// What the device task and its handle share. Small on purpose: one of these per simulated device.
pub(crate) struct Shared {
    pub id: String,
    pub kind: Kind,
    pub state: Mutex<Map<String, Value>>,
    /// ConnAck received and the connection has not failed since.
    pub connected: AtomicBool,
    /// Connected, subscribed, and meta/status/state acknowledged by the broker.
    pub online: watch::Sender<bool>,
    pub commands: AtomicU64,
    pub published: AtomicU64,
    pub dropped: AtomicU64,
}

/// Requests from a `DeviceHandle`; each is answered once it has taken effect.
pub(crate) enum Control {
    Kill(oneshot::Sender<()>),
    Revive(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

/// Counters of the current connection; reset on every ConnAck.
#[derive(Default)]
struct Session {
    subscribed: bool,
    qos1_sent: u32,
    qos1_acked: u32,
}

#[derive(Debug, PartialEq)]
enum StopPhase {
    /// `offline` is queued; waiting until every QoS 1 publish has its PubAck.
    OfflineAck,
    /// DISCONNECT is queued; waiting for it to be written.
    DisconnectQueued,
    /// DISCONNECT is written; waiting for the broker to close the connection.
    DisconnectSent,
}

struct Stopping {
    phase: StopPhase,
    deadline: Instant,
    replies: Vec<oneshot::Sender<()>>,
    /// The task ends afterwards (fleet shutdown) instead of staying down until revived.
    exit: bool,
}

/// Everything one device task owns.
pub(crate) struct Device {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
    pub(crate) room: String,
    pub(crate) format: PayloadFormat,
    pub(crate) interval: Duration,
    /// Delay before the first telemetry so a fleet does not publish in lockstep.
    pub(crate) phase: Duration,
    /// `{prefix}/{id}/`
    pub(crate) base: String,
    pub(crate) mqtt: MqttOptions,
    pub(crate) model: Model,
    link: Option<Link>,
    session: Session,
    backoff: Backoff,
    stopping: Option<Stopping>,
    has_been_online: bool,
    done: bool,
}

impl Device {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: String,
        room: String,
        format: PayloadFormat,
        interval: Duration,
        phase: Duration,
        base: String,
        mqtt: MqttOptions,
        model: Model,
    ) -> Device {
        Device {
            shared,
            name,
            room,
            format,
            interval,
            phase,
            base,
            mqtt,
            model,
            link: None,
            session: Session::default(),
            backoff: Backoff::default(),
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
        let mut ticker = tokio::time::interval_at(Instant::now() + self.phase, self.interval);
        // A device that was offline does not burst its missed readings when it comes back.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut control_open = true;
        let mut exit_requested = false;
        self.connect();
        while !self.done {
            let ticking = self.shared.connected.load(Ordering::Relaxed) && self.stopping.is_none();
            let deadline = self.stopping.as_ref().map(|s| s.deadline);
            tokio::select! {
                (eventloop, result) = next_event(&mut self.link) => self.on_poll(eventloop, result),
                _ = ticker.tick(), if ticking => self.publish_telemetry(),
                msg = control.recv(), if control_open => match msg {
                    Some(msg) => self.on_control(msg),
                    None => control_open = false,
                },
                _ = shutdown.cancelled(), if !exit_requested => {
                    exit_requested = true;
                    self.begin_stop(None, true);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    debug!("graceful stop timed out; dropping the connection");
                    self.finish_stop();
                }
            }
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    /// Starts a fresh MQTT session (new socket, clean session) and polls it at once.
    fn connect(&mut self) {
        self.backoff.reset();
        self.link = Some(Link::open(&self.mqtt));
    }

    fn set_disconnected(&mut self) {
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.online.send_replace(false);
    }

    fn on_poll(&mut self, eventloop: EventLoop, result: Result<Event, ConnectionError>) {
        let next_delay = match result {
            Ok(event) => self.on_event(event).then_some(Duration::ZERO),
            Err(err) => self.on_error(err),
        };
        match (next_delay, self.link.as_mut()) {
            (Some(delay), Some(link)) => link.poll_again(eventloop, delay),
            // Dropping the event loop closes the socket.
            _ => self.link = None,
        }
    }

    /// Returns `None` to drop the connection, else the delay before polling again.
    fn on_error(&mut self, err: ConnectionError) -> Option<Duration> {
        let was_connected = self.shared.connected.load(Ordering::Relaxed);
        self.set_disconnected();
        if self.stopping.is_some() {
            debug!(error = %err, "connection closed while stopping");
            self.finish_stop();
            return None;
        }
        let delay = self.backoff.next_delay();
        // Say it once per outage; every retry after that is only interesting when debugging.
        if was_connected {
            warn!(error = %err, retry_in = ?delay, "connection lost");
        } else if self.backoff.failures() == 1 {
            warn!(error = %err, retry_in = ?delay, "cannot connect; retrying with backoff");
        } else {
            debug!(error = %err, retry_in = ?delay, "connect failed");
        }
        Some(delay)
    }

    /// Returns whether to keep polling.
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => self.on_connack(),
            Event::Incoming(Incoming::SubAck(ack)) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    // Usually a broker ACL: the device still reports, but cannot be controlled.
                    warn!(topic = %self.topic("cmd"), "broker refused the command subscription");
                }
                self.session.subscribed = true;
                self.check_online();
            }
            Event::Incoming(Incoming::PubAck(_)) => {
                self.session.qos1_acked += 1;
                self.check_online();
                self.advance_stop();
            }
            Event::Incoming(Incoming::Publish(publish)) => {
                let is_cmd = publish.topic.strip_prefix(self.base.as_str()) == Some("cmd");
                if is_cmd && self.stopping.is_none() {
                    self.on_command(&publish.payload);
                } else if !is_cmd {
                    debug!(topic = %publish.topic, "ignoring message on unexpected topic");
                }
            }
            Event::Outgoing(Outgoing::Publish(_)) => {
                self.shared.published.fetch_add(1, Ordering::Relaxed);
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                if let Some(stop) = self.stopping.as_mut() {
                    stop.phase = StopPhase::DisconnectSent;
                    stop.deadline = stop.deadline.min(Instant::now() + CLOSE_GRACE);
                }
            }
            _ => {}
        }
        true
    }

    fn on_connack(&mut self) {
        self.shared.connected.store(true, Ordering::Relaxed);
        self.backoff.reset();
        self.session = Session::default();
        debug!("connected");
        let subscribed = match &self.link {
            Some(link) => link
                .client
                .try_subscribe(self.topic("cmd"), QoS::AtLeastOnce),
            None => return,
        };
        if let Err(err) = subscribed {
            warn!(error = %err, "could not queue the command subscription");
        }
        let meta = Meta {
            kind: self.model.kind(),
            name: &self.name,
            room: &self.room,
        }
        .to_json();
        self.publish("meta", QoS::AtLeastOnce, true, meta);
        self.publish("status", QoS::AtLeastOnce, true, b"online".to_vec());
        let state = codec::encode(self.format, self.model.controls());
        self.publish("state", QoS::AtLeastOnce, true, state);
    }

    fn check_online(&mut self) {
        let s = &self.session;
        if s.subscribed && s.qos1_acked >= CONNECT_PUBLISHES && !*self.shared.online.borrow() {
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

    /// Queues a publish without waiting; a full queue drops it and counts the drop.
    fn publish(&mut self, suffix: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        match link
            .client
            .try_publish(self.topic(suffix), qos, retain, payload)
        {
            Ok(()) => {
                if qos != QoS::AtMostOnce {
                    self.session.qos1_sent += 1;
                }
                true
            }
            Err(err) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                debug!(topic = suffix, error = %err, "publish dropped: request queue full");
                false
            }
        }
    }

    fn publish_telemetry(&mut self) {
        let mut telemetry = self.model.step(self.interval.as_secs_f64());
        telemetry.insert("ts".into(), Value::from(now_ms()));
        let payload = codec::encode(self.format, &telemetry);
        self.publish("telemetry", QoS::AtMostOnce, false, payload);
    }

    fn on_command(&mut self, payload: &[u8]) {
        let Some(cmd) = command::parse(payload) else {
            warn!(
                bytes = payload.len(),
                "ignoring a command payload with no id to answer"
            );
            return;
        };
        let outcome = match cmd.body {
            Err(reason) => Err(reason),
            Ok((action, params)) if action == "set" => self.model.apply_set(&params).cloned(),
            Ok((action, _)) => Err(format!("unsupported action '{action}'")),
        };
        self.shared.commands.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(state) => {
                info!(cmd = %cmd.id, "command applied");
                match self.shared.state.lock() {
                    Ok(mut shared) => shared.clone_from(&state),
                    Err(poisoned) => poisoned.into_inner().clone_from(&state),
                }
                // New state first, so whoever sees the ack can already read the state it describes.
                let encoded = codec::encode(self.format, &state);
                self.publish("state", QoS::AtLeastOnce, true, encoded);
                self.publish(
                    "ack",
                    QoS::AtLeastOnce,
                    false,
                    command::ack_ok(&cmd.id, &state),
                );
            }
            Err(reason) => {
                info!(cmd = %cmd.id, %reason, "command rejected");
                self.publish(
                    "ack",
                    QoS::AtLeastOnce,
                    false,
                    command::ack_err(&cmd.id, &reason),
                );
            }
        }
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Kill(reply) => {
                // Dropping the link drops the event loop and with it the socket, without DISCONNECT:
                // the broker sees a dead connection and publishes the will.
                if self.link.take().is_some() {
                    info!("killed");
                }
                self.set_disconnected();
                if let Some(stop) = self.stopping.take() {
                    stop.replies.into_iter().for_each(|r| {
                        let _ = r.send(());
                    });
                    self.done = stop.exit;
                }
                let _ = reply.send(());
            }
            Control::Revive(reply) => {
                if self.link.is_none() && self.stopping.is_none() {
                    info!("reviving");
                    self.connect();
                }
                let _ = reply.send(());
            }
            Control::Stop(reply) => self.begin_stop(Some(reply), false),
        }
    }

    fn begin_stop(&mut self, reply: Option<oneshot::Sender<()>>, exit: bool) {
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
        let connected = self.shared.connected.load(Ordering::Relaxed);
        if !connected || !self.publish("status", QoS::AtLeastOnce, true, b"offline".to_vec()) {
            // Not connected: the broker already has our will (or never saw us); nothing to say.
            self.finish_stop();
        }
    }

    /// Moves a graceful stop on once everything we published, `offline` last, is acknowledged.
    fn advance_stop(&mut self) {
        let all_acked = self.session.qos1_acked >= self.session.qos1_sent;
        let Some(stop) = self.stopping.as_mut() else {
            return;
        };
        if stop.phase != StopPhase::OfflineAck || !all_acked {
            return;
        }
        stop.phase = StopPhase::DisconnectQueued;
        let queued = self
            .link
            .as_ref()
            .map(|l| l.client.try_disconnect().is_ok());
        if queued != Some(true) {
            self.finish_stop();
        }
    }

    fn finish_stop(&mut self) {
        self.link = None;
        self.set_disconnected();
        if let Some(stop) = self.stopping.take() {
            info!("device stopped");
            for reply in stop.replies {
                let _ = reply.send(());
            }
            self.done = stop.exit;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
