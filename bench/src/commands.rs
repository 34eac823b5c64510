//! Command round trips, open loop: a client sends commands on a fixed schedule and times each
//! from its send to the device's answer.
//!
//! Bridge side: `command` over the bridge's WebSocket, answered by `command_status` `ok`.
//! Peer side: what a browser would do with MQTT over WebSockets: publish QoS 1 to
//! `iot/{id}/cmd` and wait for the device's QoS 1 publish on `iot/{id}/ack`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{connect_bridge, connect_peer, drain_packets, Side, Ws};
use crate::mqtt::{self, Packet, QoS};
use crate::recorder::histogram;
use crate::rig::Rig;
use crate::telemetry::{now_ns, parse_bridge};
use crate::BenchError;

/// How long after the last command its answer may still come.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct CommandReport {
    pub sent: u64,
    pub ok: u64,
    /// Answered with anything but `ok` (rejected, timeout, offline, an error).
    pub failed: u64,
    pub latency: Histogram<u64>,
}

impl CommandReport {
    pub fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.ok + self.failed)
    }
}

/// Send times by command number; 0 while not sent yet.
struct Sent(Vec<AtomicU64>);

impl Sent {
    fn latency(&self, k: u64) -> Option<u64> {
        let t = self.0.get(k as usize)?.swap(0, Ordering::Relaxed);
        (t != 0).then(|| now_ns().saturating_sub(t).max(1))
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
}

/// Runs `rate` commands per second for `duration`, round robin over `devices`, on `side`.
pub async fn run(
    rig: &Rig,
    side: Side,
    devices: &[String],
    rate: f64,
    duration: Duration,
) -> Result<CommandReport, BenchError> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let sent = Arc::new(Sent((0..total).map(|_| AtomicU64::new(0)).collect()));
    let mut latency = histogram();
    let mut tally = Tally::default();
    let done = |t: &Tally| t.ok + t.failed >= total;
    match side {
        Side::Bridge => {
            let (ws, _) = connect_bridge(rig.bridge.addr, None, &rig.certs.user).await?;
            let (sink, mut stream) = ws.split();
            let sender = tokio::spawn(send_paced(
                sink,
                sent.clone(),
                total,
                rate,
                devices.to_vec(),
                bridge_command,
            ));
            let deadline = tokio::time::Instant::now() + duration + ANSWER_GRACE;
            while !done(&tally) {
                let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await
                else {
                    break;
                };
                let Message::Text(text) = msg else { continue };
                let Some(m) = parse_bridge(text.as_str()) else {
                    continue;
                };
                let Some(k) = m
                    .req
                    .as_deref()
                    .and_then(|r| r.strip_prefix('c'))
                    .and_then(|k| k.parse().ok())
                else {
                    continue;
                };
                match (m.kind.as_ref(), m.status.as_deref()) {
                    ("command_status", Some("accepted" | "sent")) => {}
                    ("command_status", Some("ok")) => {
                        if let Some(l) = sent.latency(k) {
                            latency.saturating_record(l);
                            tally.ok += 1;
                        }
                    }
                    _ => tally.failed += 1,
                }
            }
            sender.abort();
        }
        Side::Peer | Side::Direct => {
            let addr = rig
                .broker
                .wss
                .ok_or_else(|| BenchError::Setup("no WSS listener".into()))?;
            let (ws, mut buf) = connect_peer(
                addr,
                None,
                &rig.certs.user,
                "bench-peer-commands",
                "iot/+/ack",
                QoS::AtLeastOnce,
            )
            .await?;
            let (sink, mut stream) = ws.split();
            let sink = Arc::new(Mutex::new(sink));
            let sender = tokio::spawn(send_paced_shared(
                sink.clone(),
                sent.clone(),
                total,
                rate,
                devices.to_vec(),
            ));
            let deadline = tokio::time::Instant::now() + duration + ANSWER_GRACE;
            #[derive(serde::Deserialize)]
            struct Ack {
                id: String,
                ok: bool,
            }
            let mut out = BytesMut::new();
            while !done(&tally) {
                let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await
                else {
                    break;
                };
                let Message::Binary(b) = msg else { continue };
                buf.extend_from_slice(&b);
                drain_packets(&mut buf, |p| {
                    if let Packet::Publish { payload, pid, .. } = p {
                        if let Some(pid) = pid {
                            mqtt::puback(&mut out, pid);
                        }
                        let Ok(ack) = serde_json::from_slice::<Ack>(payload) else {
                            return Ok(());
                        };
                        let Some(k) = ack.id.strip_prefix('p').and_then(|k| k.parse().ok()) else {
                            return Ok(());
                        };
                        match (ack.ok, sent.latency(k)) {
                            (true, Some(l)) => {
                                latency.saturating_record(l);
                                tally.ok += 1;
                            }
                            (false, _) => tally.failed += 1,
                            (true, None) => {}
                        }
                    }
                    Ok(())
                })?;
                if !out.is_empty() {
                    sink.lock()
                        .await
                        .send(Message::Binary(out.split().freeze()))
                        .await?;
                }
            }
            sender.abort();
        }
    }
    Ok(CommandReport {
        sent: total,
        ok: tally.ok,
        failed: tally.failed,
        latency,
    })
}

fn bridge_command(k: u64, device: &str) -> Message {
    Message::text(format!(
        r#"{{"type":"command","req":"c{k}","device":"{device}","action":"set","params":{{"on":true}}}}"#
    ))
}

/// Sends command `k` at `start + k / rate`, recording when it went.
async fn send_paced(
    mut sink: SplitSink<Ws, Message>,
    sent: Arc<Sent>,
    total: u64,
    rate: f64,
    devices: Vec<String>,
    make: fn(u64, &str) -> Message,
) -> Result<(), BenchError> {
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        let device = &devices[(k as usize) % devices.len().max(1)];
        sent.0[k as usize].store(now_ns(), Ordering::Relaxed);
        sink.send(make(k, device)).await?;
    }
    Ok(())
}

async fn send_paced_shared(
    sink: Arc<Mutex<SplitSink<Ws, Message>>>,
    sent: Arc<Sent>,
    total: u64,
    rate: f64,
    devices: Vec<String>,
) -> Result<(), BenchError> {
    let start = tokio::time::Instant::now();
    let mut out = BytesMut::new();
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        let device = &devices[(k as usize) % devices.len().max(1)];
        let cmd = format!(r#"{{"id":"p{k}","action":"set","params":{{"on":true}}}}"#);
        mqtt::publish(
            &mut out,
            &format!("iot/{device}/cmd"),
            cmd.as_bytes(),
            QoS::AtLeastOnce,
            false,
            (k % 65535 + 1) as u16,
        );
        sent.0[k as usize].store(now_ns(), Ordering::Relaxed);
        sink.lock()
            .await
            .send(Message::Binary(out.split().freeze()))
            .await?;
    }
    Ok(())
}
