//! Command round trips, open loop: a client sends commands on a fixed schedule and times each
//! from its send to the device's answer.
//!
//! The schedule is `rate` a second, each command shifted by its own share of `spread` (the
//! telemetry interval running meanwhile), so that commands land at every phase of the telemetry
//! stream. On a plain `k / rate` schedule the two periodic streams lock at one phase for a whole
//! round: whether each command met a fan-out on its way to the device, on its way back or not
//! at all was decided by when the round started, and the medians of two rounds differed by
//! half a millisecond for that alone.
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
use crate::recorder::{histogram, quantile};
use crate::rig::Rig;
use crate::telemetry::{now_ns, parse_bridge, AckResult};
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
    /// The two legs of each round trip: client to device, device back to client.
    pub legs: Legs,
}

/// A round trip split at the device, which stamps when the command reached it.
#[derive(Debug, Clone)]
pub struct Legs {
    pub to_device: Histogram<u64>,
    pub from_device: Histogram<u64>,
}

impl Default for Legs {
    fn default() -> Self {
        Legs {
            to_device: histogram(),
            from_device: histogram(),
        }
    }
}

impl Legs {
    pub fn add(&mut self, other: &Legs) {
        let _ = self.to_device.add(&other.to_device);
        let _ = self.from_device.add(&other.from_device);
    }
}

impl CommandReport {
    /// Nothing answered yet of `sent` commands.
    fn new(sent: u64) -> CommandReport {
        CommandReport {
            sent,
            ok: 0,
            failed: 0,
            latency: histogram(),
            legs: Legs::default(),
        }
    }

    pub fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.ok + self.failed)
    }

    /// Command `k` answered `ok` now; `at_device` is the device's stamp (0 if it sent none).
    fn answered(&mut self, sent: &Sent, k: u64, at_device: u64) {
        let Some(t0) = sent.take(k) else { return };
        let now = now_ns();
        self.latency
            .saturating_record(now.saturating_sub(t0).max(1));
        if (t0..=now).contains(&at_device) {
            let legs = &mut self.legs;
            legs.to_device.saturating_record((at_device - t0).max(1));
            legs.from_device.saturating_record((now - at_device).max(1));
        }
        self.ok += 1;
    }

    /// Adds another round's counts and histograms.
    pub fn merge(&mut self, other: &CommandReport) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        let _ = self.latency.add(&other.latency);
        self.legs.add(&other.legs);
    }

    /// One line for the run's log.
    pub fn describe(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| quantile(h, q).as_secs_f64() * 1e3;
        format!(
            "{} commands, {} ok, {} failed, p50 {:.2} ms, p99 {:.2} ms (to the device p50 {:.2} ms, back p50 {:.2} ms)",
            self.sent,
            self.ok,
            self.failed,
            ms(&self.latency, 0.5),
            ms(&self.latency, 0.99),
            ms(&self.legs.to_device, 0.5),
            ms(&self.legs.from_device, 0.5),
        )
    }
}

/// Send times by command number; 0 while not sent yet.
struct Sent(Vec<AtomicU64>);

impl Sent {
    /// When command `k` went, once: a second answer to it finds nothing.
    fn take(&self, k: u64) -> Option<u64> {
        let t = self.0.get(k as usize)?.swap(0, Ordering::Relaxed);
        (t != 0).then_some(t)
    }
}

/// When command `k` is due, from the start: `k / rate` plus its share of `spread` (at most the
/// interval between commands, so they stay in order). The shares follow the golden ratio's
/// multiples, which cover `[0, 1)` evenly for any run length.
fn due(k: u64, rate: f64, spread: Duration) -> Duration {
    let interval = 1.0 / rate;
    let share = (k as f64 * 0.618_033_988_749_895).fract();
    Duration::from_secs_f64(k as f64 * interval + share * spread.as_secs_f64().min(interval))
}

/// Runs `rate` commands per second for `duration`, round robin over `devices`, on `side`,
/// spread over the phases of a stream with period `spread` (see the module documentation).
pub async fn run(
    rig: &Rig,
    side: Side,
    devices: &[String],
    rate: f64,
    spread: Duration,
    duration: Duration,
) -> Result<CommandReport, BenchError> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let sent = Arc::new(Sent((0..total).map(|_| AtomicU64::new(0)).collect()));
    let mut report = CommandReport::new(total);
    let done = |r: &CommandReport| r.unanswered() == 0;
    match side {
        Side::Bridge => {
            let (ws, _) = connect_bridge(rig.bridge.addr, None, &rig.certs.user).await?;
            let (sink, mut stream) = ws.split();
            let sender = tokio::spawn(send_paced(
                sink,
                sent.clone(),
                total,
                (rate, spread),
                devices.to_vec(),
                bridge_command,
            ));
            let deadline = tokio::time::Instant::now() + duration + ANSWER_GRACE;
            while !done(&report) {
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
                        report.answered(&sent, k, m.result.unwrap_or_default().t_ns);
                    }
                    _ => report.failed += 1,
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
                (rate, spread),
                devices.to_vec(),
            ));
            let deadline = tokio::time::Instant::now() + duration + ANSWER_GRACE;
            #[derive(serde::Deserialize)]
            struct Ack {
                id: String,
                ok: bool,
                #[serde(default)]
                result: Option<AckResult>,
            }
            let mut out = BytesMut::new();
            while !done(&report) {
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
                        if ack.ok {
                            report.answered(&sent, k, ack.result.unwrap_or_default().t_ns);
                        } else {
                            report.failed += 1;
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
    Ok(report)
}

fn bridge_command(k: u64, device: &str) -> Message {
    Message::text(format!(
        r#"{{"type":"command","req":"c{k}","device":"{device}","action":"set","params":{{"on":true}}}}"#
    ))
}

/// Sends command `k` when [`due`], recording when it went.
async fn send_paced(
    mut sink: SplitSink<Ws, Message>,
    sent: Arc<Sent>,
    total: u64,
    (rate, spread): (f64, Duration),
    devices: Vec<String>,
    make: fn(u64, &str) -> Message,
) -> Result<(), BenchError> {
    let start = tokio::time::Instant::now();
    for k in 0..total {
        tokio::time::sleep_until(start + due(k, rate, spread)).await;
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
    (rate, spread): (f64, Duration),
    devices: Vec<String>,
) -> Result<(), BenchError> {
    let start = tokio::time::Instant::now();
    let mut out = BytesMut::new();
    for k in 0..total {
        tokio::time::sleep_until(start + due(k, rate, spread)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_at(times: &[u64]) -> Sent {
        Sent(times.iter().map(|&t| AtomicU64::new(t)).collect())
    }

    #[test]
    fn an_answer_splits_at_the_device_stamp_and_counts_once() {
        let t0 = now_ns();
        let sent = sent_at(&[t0, 0]);
        let mut report = CommandReport::new(2);
        report.answered(&sent, 0, t0 + 1);
        // The same command again, one never sent, one out of range: nothing more is recorded.
        report.answered(&sent, 0, t0 + 1);
        report.answered(&sent, 1, t0 + 1);
        report.answered(&sent, 7, t0 + 1);
        assert_eq!(report.ok, 1);
        assert_eq!(report.latency.len(), 1);
        assert_eq!(report.legs.to_device.len(), 1);
        assert_eq!(report.legs.from_device.len(), 1);
        let to = report.legs.to_device.max();
        assert!(to <= 2, "to the device took the stamp's 1 ns, got {to}");
    }

    #[test]
    fn commands_cover_every_phase_of_the_telemetry_and_stay_in_order() {
        let (rate, spread) = (100.0, Duration::from_millis(5));
        let mut buckets = [0u32; 5];
        let mut last = Duration::ZERO;
        for k in 0..600 {
            let at = due(k, rate, spread);
            assert!(
                k == 0 || at > last,
                "command {k} before the one ahead of it"
            );
            let slot = at - Duration::from_millis(10 * k);
            assert!(slot < spread, "command {k} shifted by {slot:?}");
            buckets[(slot.as_micros() / 1000) as usize] += 1;
            last = at;
        }
        // 600 commands over five 1 ms phases: each near 120.
        assert!(
            buckets.iter().all(|&n| (100..=140).contains(&n)),
            "{buckets:?}"
        );
        // A spread wider than the interval is cut to it: order holds.
        assert!(due(1, 100.0, Duration::from_secs(1)) < due(2, 100.0, Duration::from_secs(1)));
    }

    #[test]
    fn a_stamp_outside_the_round_trip_is_not_split() {
        let t0 = now_ns();
        let sent = sent_at(&[t0, t0]);
        let mut report = CommandReport::new(2);
        report.answered(&sent, 0, 0); // no stamp
        report.answered(&sent, 1, t0 + 3_600_000_000_000); // a clock from elsewhere
        assert_eq!((report.ok, report.latency.len()), (2, 2));
        assert_eq!(report.legs.to_device.len(), 0);
        assert_eq!(report.legs.from_device.len(), 0);
    }
}
