//! The broker link: one task owns rumqttc's event loop, decodes device messages once and hands
//! them to the hub; it reconnects with exponential backoff and full jitter and resubscribes.
//!
//! The task never awaits a publish (rumqttc #1025): commands are queued with `try_publish` from
//! the sessions through a cloned [`LinkHandle`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, Event, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, Publish, QoS, SubAck, SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::commands::Commands;
use crate::config::BrokerConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::payload::{self, PayloadError};
use crate::topic::{self, Channel};

/// Queued requests to the event loop; a command that finds it full is answered `offline`.
const REQUEST_CAPACITY: usize = 4096;

/// The largest packet MQTT can frame (a four-byte remaining length), which is what the link
/// reads. A publish over `limits.max_payload_bytes` is read whole and refused by the payload
/// checks like any junk; a smaller packet limit would make the client library drop the whole
/// link instead, and an oversized retained message would then cut the bridge off from every
/// device at each reconnect. The broker's `max_packet_size` is what bounds the memory a device
/// can make its subscribers spend (mosquitto/mosquitto.conf).
const MAX_INCOMING_PACKET: usize = 268_435_455;

/// The final `offline` of a command in flight when the link went down. The client library
/// may still deliver the command after reconnecting, so the device may yet carry it out.
const LINK_LOST: &str =
    "broker link lost before the device answered; the command may still be carried out";

/// A connection that lasted this long was a success: the next failure starts the backoff over.
/// One that ended sooner counts as a failed attempt, so a link the broker keeps dropping right
/// after accepting it backs off instead of reconnecting at the shortest delay forever.
const STABLE: Duration = Duration::from_secs(10);

/// How long the broker has to answer a SUBSCRIBE before the bridge asks again.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// What sessions use to publish commands, and `/readyz` to tell why the link is not up.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    client: AsyncClient,
    prefix: Arc<str>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl LinkHandle {
    /// Queues a QoS 1, never retained command to `{prefix}/{device}/cmd`. `device` was validated.
    pub fn try_publish_command(&self, device: &str, payload: String) -> Result<(), ClientError> {
        let topic = topic::device_topic(&self.prefix, device, Channel::Cmd);
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
    }

    /// The topic filters the broker refused on the current connection (its ACL does not grant
    /// them); the link is not up while there are any.
    pub fn refused(&self) -> Vec<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn disconnect(&self) {
        // Best effort: the process is going away either way.
        let _ = self.client.try_disconnect();
    }
}

pub struct MqttLink {
    client_id: String,
    eventloop: EventLoop,
    handle: LinkHandle,
    hub: Arc<Hub>,
    commands: Arc<Commands>,
    metrics: Arc<Metrics>,
    filters: Vec<SubscribeFilter>,
    backoff_min: Duration,
    backoff_max: Duration,
    max_payload: usize,
    bad_payload_warnings: Sparse,
}

impl MqttLink {
    pub fn new(
        config: &BrokerConfig,
        instance: &str,
        max_payload: usize,
        hub: Arc<Hub>,
        commands: Arc<Commands>,
        metrics: Arc<Metrics>,
    ) -> Result<MqttLink, LinkError> {
        let tls = crate::tls::client_config(&config.ca, &config.cert, &config.key)?;
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("iot-bridge-{instance}"));
        let mut options = MqttOptions::new(client_id.clone(), config.host.clone(), config.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            .set_clean_session(true)
            .set_max_packet_size(MAX_INCOMING_PACKET, 64 * 1024)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let filters = topic::bridge_filters(&config.topic_prefix)
            .into_iter()
            .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce))
            .collect();
        Ok(MqttLink {
            client_id,
            eventloop,
            handle: LinkHandle {
                client,
                prefix: Arc::from(config.topic_prefix.as_str()),
                refused: Arc::default(),
            },
            hub,
            commands,
            metrics,
            filters,
            backoff_min: Duration::from_millis(config.reconnect_min_ms),
            backoff_max: Duration::from_millis(config.reconnect_max_ms),
            max_payload,
            bad_payload_warnings: Sparse::default(),
        })
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown`; reconnects by itself on every error.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        // When the current connection was accepted, and recent connections that did not last.
        let mut up_since: Option<Instant> = None;
        let mut short = ShortLived::default();
        let mut subs = Subscriptions::default();
        loop {
            let retry = subs.retry_at;
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.eventloop.poll() => event,
                _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)),
                    if retry.is_some() => {
                    subs.retry_at = None;
                    let filters = if subs.awaiting() {
                        // A broker that never answers a SUBSCRIBE would leave the link down
                        // for good: ask for everything again (subscribing twice is harmless).
                        warn!(
                            waited = ?SUBACK_TIMEOUT,
                            "no SubAck from the broker; subscribing again"
                        );
                        subs = Subscriptions::default();
                        self.filters.clone()
                    } else {
                        debug!(attempt = subs.attempts, "subscribing again");
                        subs.take_retry()
                    };
                    self.subscribe(&mut subs, filters);
                    continue;
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code == ConnectReturnCode::Success {
                        up_since = Some(Instant::now());
                        self.metrics.broker_connects.inc();
                        info!("broker connected, subscribing");
                        // Clean session: the broker forgot our subscriptions, ask again.
                        subs = Subscriptions::default();
                        self.subscribe(&mut subs, self.filters.clone());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => subs.sent(pkid),
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.on_suback(&mut subs, &ack),
                Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(p),
                Ok(_) => {}
                Err(e) => {
                    self.hub.set_broker_up(false);
                    self.metrics.broker_up.set(0);
                    subs = Subscriptions::default();
                    self.set_refused(&subs);
                    // rumqttc keeps the dead connection's undelivered events, and returns them
                    // after the next ConnAck: its Outgoing::Subscribe would be taken for the
                    // new connection's. Device messages it had read still count.
                    self.eventloop
                        .state
                        .events
                        .retain(|e| matches!(e, Event::Incoming(Packet::Publish(_))));
                    if let Some(since) = up_since.take() {
                        // Their acks would come on this link: nothing will answer them now.
                        self.commands.fail_all(LINK_LOST);
                        let now = Instant::now();
                        if now - since >= STABLE {
                            failures = 0;
                        } else if short.ended(now) {
                            warn!(
                                client_id = %self.client_id,
                                "the broker closed the link {} times in {} s, each time within {} s \
                                 of accepting it: is another client connected with the same client \
                                 id, such as another bridge with the same instance_id? The broker \
                                 drops the older of two connections with one id; give every \
                                 instance its own",
                                ShortLived::COUNT,
                                ShortLived::WINDOW.as_secs(),
                                STABLE.as_secs(),
                            );
                        }
                    }
                    let delay = backoff(self.backoff_min, self.backoff_max, failures);
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        warn!(error = %e, "broker link down, reconnecting");
                    } else {
                        debug!(error = %e, attempt = failures, ?delay, "broker reconnect failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.handle.disconnect();
        // Let the DISCONNECT go out; a broker that is gone must not hold up shutdown.
        let _ = tokio::time::timeout(Duration::from_millis(200), self.eventloop.poll()).await;
        self.hub.set_broker_up(false);
        info!("broker link stopped");
    }

    /// Asks the broker for `filters` (none: nothing to do); gives it SUBACK_TIMEOUT to answer.
    fn subscribe(&self, subs: &mut Subscriptions, filters: Vec<SubscribeFilter>) {
        if filters.is_empty() {
            return;
        }
        debug_assert!(!subs.awaiting(), "one subscribe request at a time");
        match self.handle.client.try_subscribe_many(filters.clone()) {
            Ok(()) => {
                subs.request = Some(Request {
                    pkid: None,
                    filters,
                });
                subs.retry_at = Some(tokio::time::Instant::now() + SUBACK_TIMEOUT);
            }
            Err(e) => {
                // The request queue is full (commands fill it too): try again shortly.
                warn!(error = %e, "cannot queue the subscribe request; trying again");
                subs.unsent.extend(filters);
                self.retry_later(subs);
            }
        }
    }

    /// The link is up once the broker granted every subscription. One it refused (its ACL
    /// does not grant the bridge that topic) is asked for again with backoff, since the ACL may
    /// be fixed and reloaded; until then the link is down, so `/readyz` says why and clients
    /// are not told the bridge sees devices it cannot.
    fn on_suback(&mut self, subs: &mut Subscriptions, ack: &SubAck) {
        let Some(request) = subs.request.take_if(|r| r.pkid == Some(ack.pkid)) else {
            return;
        };
        for (filter, code) in request.filters.into_iter().zip(&ack.return_codes) {
            if matches!(code, SubscribeReasonCode::Failure) {
                subs.refused.push(filter);
            }
        }
        subs.retry_at = None;
        self.set_refused(subs);
        if subs.refused.is_empty() && subs.unsent.is_empty() {
            subs.attempts = 0;
            info!("broker link up");
            self.hub.set_broker_up(true);
            self.metrics.broker_up.set(1);
            return;
        }
        if !subs.refused.is_empty() && subs.attempts == 0 {
            warn!(
                refused = %subs.topics().join(", "),
                "the broker refused the bridge's subscriptions: its ACL must let the bridge's \
                 certificate read these topics; the link stays down until it does"
            );
        }
        self.retry_later(subs);
    }

    fn retry_later(&self, subs: &mut Subscriptions) {
        let delay = backoff(self.backoff_min, self.backoff_max, subs.attempts);
        debug!(refused = %subs.topics().join(", "), retry_in = ?delay, "subscribing again later");
        subs.attempts = subs.attempts.saturating_add(1);
        subs.retry_at = Some(tokio::time::Instant::now() + delay);
    }

    fn set_refused(&self, subs: &Subscriptions) {
        self.metrics.broker_refused.set(subs.refused.len() as i64);
        *self
            .handle
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = subs.topics();
    }

    fn on_publish(&mut self, p: Publish) {
        let Some((device, channel)) = topic::parse(&self.handle.prefix, &p.topic) else {
            debug!(topic = %p.topic, "ignoring message on an unexpected topic");
            return;
        };
        self.metrics.message_in(channel);
        if let Err(e) = self.dispatch(device, channel, &p.payload) {
            self.metrics.bad_payloads.inc();
            // A device that sends junk many times a second must not drown the log; the metric
            // counts every one.
            if let Some(unlogged_since_last) = self.bad_payload_warnings.due(Instant::now()) {
                warn!(
                    device,
                    channel = channel.as_str(),
                    error = %e,
                    unlogged_since_last,
                    "bad payload from device"
                );
            }
        }
    }

    fn dispatch(&self, device: &str, channel: Channel, bytes: &[u8]) -> Result<(), PayloadError> {
        let limit = self.max_payload;
        match channel {
            // An empty retained message clears the topic: for meta that removes the device.
            Channel::Meta if bytes.is_empty() => self.hub.on_meta(device, None),
            Channel::Meta => {
                let meta = payload::decode_map(bytes, limit)?;
                self.hub
                    .on_meta(device, Some(serde_json::Value::Object(meta)));
            }
            Channel::Status | Channel::State if bytes.is_empty() => {}
            Channel::Status => self.hub.on_status(device, payload::decode_status(bytes)?),
            Channel::State => self
                .hub
                .on_state(device, payload::decode_map(bytes, limit)?),
            Channel::Telemetry => {
                let (ts, data) = crate::telemetry::decode(bytes, limit)?;
                self.hub.on_telemetry(device, ts, data);
            }
            Channel::Ack => self
                .commands
                .on_ack(device, payload::decode_ack(bytes, limit)?),
            Channel::Cmd => {}
        }
        Ok(())
    }
}

/// Connections the broker accepted and then dropped within [`STABLE`]: [`ShortLived::COUNT`]
/// of them within [`ShortLived::WINDOW`] are worth a warning, once per window.
#[derive(Debug, Default)]
struct ShortLived {
    ends: VecDeque<Instant>,
    warned: Option<Instant>,
}

impl ShortLived {
    const COUNT: usize = 3;
    const WINDOW: Duration = Duration::from_secs(60);

    /// A short-lived connection ended at `now`; says whether to warn.
    fn ended(&mut self, now: Instant) -> bool {
        self.ends.push_back(now);
        while self.ends.front().is_some_and(|&t| now - t > Self::WINDOW) {
            self.ends.pop_front();
        }
        let due = self.warned.is_none_or(|t| now - t > Self::WINDOW);
        if self.ends.len() >= Self::COUNT && due {
            self.warned = Some(now);
            return true;
        }
        false
    }
}

/// A warning logged at most once per [`Sparse::EVERY`], saying how many it left out.
#[derive(Debug, Default)]
struct Sparse {
    last: Option<Instant>,
    left_out: u64,
}

impl Sparse {
    const EVERY: Duration = Duration::from_secs(1);

    /// Whether to log at `now`, and if so how many were left out since the last one.
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now - t < Self::EVERY) {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

/// The bridge's subscriptions on the current connection.
#[derive(Debug, Default)]
struct Subscriptions {
    /// The subscribe request waiting for its SubAck. There is one at a time: the first of a
    /// connection, then a retry of what it did not get.
    request: Option<Request>,
    /// Refused by the broker, to be asked for again at `retry_at`.
    refused: Vec<SubscribeFilter>,
    /// Not handed to the client (its request queue was full), to be asked for at `retry_at`.
    unsent: Vec<SubscribeFilter>,
    /// While awaiting SubAcks, when to give up on them; otherwise when to ask again for what
    /// was refused or unsent.
    retry_at: Option<tokio::time::Instant>,
    attempts: u32,
}

impl Subscriptions {
    /// Whether a SubAck is still to come.
    fn awaiting(&self) -> bool {
        self.request.is_some()
    }

    /// What to ask for again: everything refused or unsent.
    fn take_retry(&mut self) -> Vec<SubscribeFilter> {
        let mut filters = std::mem::take(&mut self.refused);
        filters.append(&mut self.unsent);
        filters
    }

    /// The request went out with this packet id, which its SubAck will carry.
    fn sent(&mut self, pkid: u16) {
        if let Some(request) = self.request.as_mut().filter(|r| r.pkid.is_none()) {
            request.pkid = Some(pkid);
        }
    }

    fn topics(&self) -> Vec<String> {
        self.refused.iter().map(|f| f.path.clone()).collect()
    }
}

/// A subscribe request handed to the client; its packet id is known once it is sent.
#[derive(Debug)]
struct Request {
    pkid: Option<u16>,
    filters: Vec<SubscribeFilter>,
}

/// Exponential backoff with full jitter: uniform in [min, min * 2^attempt] capped at max.
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = min
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let ms = rand::rng().random_range(min.as_millis()..=ceiling.as_millis().max(min.as_millis()));
    Duration::from_millis(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_short_lived_connections_within_a_minute_warn_once_a_minute() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut short = ShortLived::default();
        assert!(!short.ended(at(0)));
        assert!(!short.ended(at(1)));
        assert!(short.ended(at(2)), "the third within a minute");
        assert!(!short.ended(at(3)), "once per window");
        assert!(!short.ended(at(30)));
        assert!(short.ended(at(63)), "still flapping a minute later: again");
        // Spread out, they are a flaky network, not a takeover.
        let mut spread = ShortLived::default();
        assert!(![0, 40, 80, 120, 160]
            .into_iter()
            .any(|s| spread.ended(at(s))));
    }

    #[test]
    fn sparse_warnings_say_how_many_they_left_out() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut sparse = Sparse::default();
        assert_eq!(sparse.due(at(0)), Some(0));
        assert_eq!(sparse.due(at(10)), None);
        assert_eq!(sparse.due(at(999)), None);
        assert_eq!(sparse.due(at(1000)), Some(2));
        assert_eq!(sparse.due(at(5000)), Some(0));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = backoff(min, max, attempt);
            let ceiling = (100u64 << attempt.min(20)).min(5000);
            assert!(
                d >= min && d.as_millis() as u64 <= ceiling,
                "{attempt}: {d:?}"
            );
        }
        // Jitter: the late attempts are not all the same.
        let samples: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(min, max, 10)).collect();
        assert!(samples.len() > 1);
    }
}
