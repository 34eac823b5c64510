//! What a connected device does: publish telemetry (with the telemetry faults it is under),
//! answer commands the way its behaviour says, and play the payload faults it is told to.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use rumqttc::mqttbytes::v4::Publish;
use rumqttc::mqttbytes::QoS;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Device, PendingAck};
use crate::behaviour::Decision;
use crate::codec::{self, PayloadFormat};
use crate::command;
use crate::fault::{AckMode, BadPayload, DeviceTopic};
use crate::sim::Sim;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Device {
    pub(super) fn telemetry_reading(&mut self) -> Map<String, Value> {
        let mut reading = self.sim.step(&self.profile, self.interval.as_secs_f64());
        reading.insert("ts".into(), Value::from(now_ms() + self.modes.skew_ms));
        reading
    }

    pub(super) fn publish_telemetry(&mut self) {
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

    pub(super) fn on_publish(&mut self, publish: Publish) {
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

    pub(super) fn answer(&mut self, id: &str, outcome: Result<Map<String, Value>, String>) {
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

    pub(super) fn play_garbage(&mut self, payload: BadPayload, messages: u32) {
        let mut probe = self.sim.clone();
        for _ in 0..messages {
            let good = probe.step(&self.profile, self.interval.as_secs_f64());
            let encoded = codec::encode(PayloadFormat::Json, &good);
            let bytes = payload.bytes(&mut self.fault_rng, &good, &encoded);
            self.publish("telemetry", QoS::AtMostOnce, false, &bytes);
        }
    }

    pub(super) fn play_junk(&mut self, topic: DeviceTopic, payload: BadPayload) {
        let good = self.sim.controls().clone();
        let encoded = codec::encode(PayloadFormat::Json, &good);
        let bytes = payload.bytes(&mut self.fault_rng, &good, &encoded);
        self.publish(topic.as_str(), QoS::AtLeastOnce, true, &bytes);
    }

    /// Publishes the real retained value of `topic` again after junk.
    pub(super) fn restore(&mut self, topic: DeviceTopic) {
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
