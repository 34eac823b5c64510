//! A hand-driven MQTT client at the test broker, with any certificate from the test CA: a device
//! the test plays itself (exact payloads, late acks, junk) or an observer of the broker's traffic.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{tls, E2eError, Mosquitto, Pki};

const WAIT: Duration = Duration::from_secs(20);
/// Publishes received and not yet read; beyond this the oldest are dropped (and counted).
const INBOX: usize = 100_000;
/// Largest packet either way: room for the bulk payloads of the slow-client test.
const MAX_PACKET: usize = 1 << 20;

/// What the event loop task reports.
enum Report {
    Connected,
    PubAck,
    SubAck,
}

/// One MQTT connection; its event loop runs in a task that ends with the connection (no
/// reconnects: a test that loses its client should notice).
pub struct MqttClient {
    client: AsyncClient,
    reports: mpsc::UnboundedReceiver<Report>,
    inbox: mpsc::Receiver<Publish>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient").finish_non_exhaustive()
    }
}

impl MqttClient {
    /// Connects as `name` (the certificate's CN, so the broker's user name) and waits for the
    /// broker's ConnAck. `will` is an optional `(topic, payload)` last will, QoS 1, retained.
    pub async fn connect(
        pki: &Pki,
        broker: &Mosquitto,
        name: &str,
        will: Option<(&str, &str)>,
    ) -> Result<MqttClient, E2eError> {
        let cert = pki.client(name)?;
        let config = tls::client_config(pki.ca_pem(), Some(&cert))?;
        let client_id = format!("{name}-{}", std::process::id());
        let mut options = MqttOptions::new(client_id, "localhost", broker.port());
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(&config),
            )))
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some((topic, payload)) = will {
            options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (report, reports) = mpsc::unbounded_channel();
        let (deliver, inbox) = mpsc::channel(INBOX);
        let task = tokio::spawn(async move {
            loop {
                let sent = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => report.send(Report::Connected),
                    Ok(Event::Incoming(Packet::PubAck(_))) => report.send(Report::PubAck),
                    Ok(Event::Incoming(Packet::SubAck(_))) => report.send(Report::SubAck),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if deliver.try_send(p).is_err() {
                            tracing::warn!("test MQTT inbox full, dropping a message");
                        }
                        Ok(())
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => Ok(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "test MQTT client ended");
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        let mut mqtt = MqttClient {
            client,
            reports,
            inbox,
            task,
        };
        mqtt.expect(|r| matches!(r, Report::Connected), "the broker's ConnAck")
            .await?;
        Ok(mqtt)
    }

    /// Publishes QoS 1 and waits for the broker's PubAck (so the broker has it, in order).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<(), E2eError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .map_err(|e| E2eError::Bridge(format!("queueing a publish to {topic}: {e}")))?;
        self.expect(|r| matches!(r, Report::PubAck), "a PubAck")
            .await
    }

    /// Subscribes (QoS 1) and waits for the SubAck.
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), E2eError> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| E2eError::Bridge(format!("subscribing to {filter}: {e}")))?;
        self.expect(|r| matches!(r, Report::SubAck), "a SubAck")
            .await
    }

    /// The next message received on a subscription.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Publish, E2eError> {
        match tokio::time::timeout(timeout, self.inbox.recv()).await {
            Err(_) => Err(E2eError::timeout("an MQTT message", timeout)),
            Ok(None) => Err(E2eError::Closed("an MQTT message".into())),
            Ok(Some(p)) => Ok(p),
        }
    }

    /// Messages received and not read yet, without waiting.
    pub fn drain(&mut self) -> Vec<Publish> {
        let mut all = Vec::new();
        while let Ok(p) = self.inbox.try_recv() {
            all.push(p);
        }
        all
    }

    /// Says goodbye (no last will) and waits for the event loop to end.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }

    /// Drops the connection without a DISCONNECT, like a device losing power: the broker
    /// publishes the last will.
    pub fn kill(self) {
        self.task.abort();
    }

    async fn expect(&mut self, want: fn(&Report) -> bool, what: &str) -> Result<(), E2eError> {
        let wait = async {
            loop {
                match self.reports.recv().await {
                    None => return Err(E2eError::Closed(what.to_owned())),
                    Some(r) if want(&r) => return Ok(()),
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .map_err(|_| E2eError::timeout(what, WAIT))?
    }
}

/// A device the test plays itself with a device certificate (CN = its id): the broker's ACL
/// lets it write its own topics and read its own `cmd`.
pub struct ManualDevice {
    pub id: String,
    pub mqtt: MqttClient,
}

impl std::fmt::Debug for ManualDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualDevice")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ManualDevice {
    /// Connects (last will: retained `offline`), publishes `meta` and `online`, both retained,
    /// and subscribes to its `cmd` topic.
    pub async fn start(
        pki: &Pki,
        broker: &Mosquitto,
        id: &str,
        meta: &Value,
    ) -> Result<ManualDevice, E2eError> {
        let status = format!("iot/{id}/status");
        let mut mqtt = MqttClient::connect(pki, broker, id, Some((&status, "offline"))).await?;
        mqtt.subscribe(&format!("iot/{id}/cmd")).await?;
        let mut device = ManualDevice {
            id: id.to_owned(),
            mqtt,
        };
        device.publish("meta", meta.to_string(), true).await?;
        device.publish("status", "online", true).await?;
        Ok(device)
    }

    /// Publishes to `iot/{id}/{channel}`, QoS 1, and waits for the broker's PubAck.
    pub async fn publish(
        &mut self,
        channel: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<(), E2eError> {
        let topic = format!("iot/{}/{channel}", self.id);
        self.mqtt.publish(&topic, payload, retain).await
    }

    /// Publishes one JSON telemetry map.
    pub async fn telemetry(&mut self, data: &Value) -> Result<(), E2eError> {
        self.publish("telemetry", data.to_string(), false).await
    }

    /// Waits for the next command and returns it as JSON.
    pub async fn next_command(&mut self, timeout: Duration) -> Result<Value, E2eError> {
        let p = self.mqtt.recv(timeout).await?;
        serde_json::from_slice(&p.payload).map_err(|source| E2eError::Json {
            text: String::from_utf8_lossy(&p.payload).into_owned(),
            source,
        })
    }

    /// Acknowledges a command (`ok: true`) with `result`.
    pub async fn ack(&mut self, command: &Value, result: &Value) -> Result<(), E2eError> {
        let ack = json!({"id": command["id"], "ok": true, "result": result});
        self.publish("ack", ack.to_string(), false).await
    }
}

/// A `meta` for a manual device with these telemetry fields (floats) and one bool control `on`.
pub fn simple_meta(kind: &str, fields: &[&str]) -> Value {
    let telemetry: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| ((*f).to_owned(), json!({"type": "float"})))
        .collect();
    json!({
        "kind": kind,
        "name": format!("Test {kind}"),
        "room": "Lab",
        "telemetry": telemetry,
        "controls": {"on": {"type": "bool"}},
        "actions": ["set"],
    })
}
