//! The device's connection lifecycle: connecting through the ramp, the connect burst, packets
//! from the broker, losing the connection and backing off, and the graceful stop.

use std::sync::atomic::Ordering;

use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::QoS;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Conn, ConnEvent, Device, Reply, StopPhase, Stopping, Up, BURST_DONE, BURST_SUBSCRIBED,
    FLEET_OUTAGES, LOUD_OUTAGES, STOP_GRACE,
};
use crate::broker;
use crate::codec;
use crate::link::{Link, LinkError};

impl Device {
    /// Starts connecting: through the ramp unless `immediate` (which also forgets the backoff).
    pub(super) fn connect(&mut self, immediate: bool) {
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
    pub(super) fn open(&mut self) {
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

    pub(super) fn set_disconnected(&mut self) {
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.online.send_replace(false);
        // Commands in flight die with the connection, like on a real device that rebooted.
        self.acks.clear();
        self.held = None;
    }

    pub(super) fn on_conn_event(&mut self, event: ConnEvent) {
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

    pub(super) fn on_connected(&mut self, link: Link) {
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
    pub(super) fn on_lost(&mut self, err: LinkError) {
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

    pub(super) fn drain_packets(&mut self) {
        loop {
            let Some(up) = self.up() else { return };
            match up.link.next_packet() {
                Ok(Some(packet)) => self.on_packet(packet),
                Ok(None) => return,
                Err(e) => return self.on_lost(e),
            }
        }
    }

    pub(super) fn on_packet(&mut self, packet: Packet) {
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

    pub(super) fn check_online(&mut self) {
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
    pub(super) fn publish(&mut self, suffix: &str, qos: QoS, retain: bool, payload: &[u8]) {
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

    pub(super) fn begin_stop(&mut self, reply: Option<Reply>, exit: bool) {
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
    pub(super) fn advance_stop(&mut self) {
        let Some(stop) = self.stopping.as_mut() else {
            return;
        };
        let Conn::Up(up) = &mut self.conn else { return };
        if stop.phase == StopPhase::OfflineAck && up.inflight == 0 {
            stop.phase = StopPhase::Closing;
            up.link.queue_disconnect();
        }
    }

    pub(super) fn finish_stop(&mut self) {
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
    pub(super) async fn flush(&mut self) {
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
