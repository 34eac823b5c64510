//! Simulated devices for the benchmark: one MQTT/TLS connection each, on a thread and runtime
//! of their own so that a thousand busy client tasks do not delay the publish schedule.
//!
//! The pacer is open loop: message `k` of a trial is due at `start + k / rate`, whatever the
//! system under test does. Each message carries the time it was actually written; if the pacer
//! falls behind its schedule (the broker stopped reading, or the machine is saturated) that is
//! reported as lag, and a trial with lag does not count as sustained. Each device answers every
//! command at once with an `ok` ack, like a well-behaved device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Mutex;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::clients::drain_packets;
use crate::mqtt::{self, Packet, QoS};
use crate::rig::Rig;
use crate::telemetry::{self, now_ns, Sample};
use crate::{tls, BenchError};

type Writer = Mutex<WriteHalf<TlsStream<TcpStream>>>;

struct Link {
    telemetry_topic: String,
    writer: Writer,
}

/// How a paced trial went on the sending side.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaceReport {
    pub sent: u64,
    /// The furthest the pacer fell behind its schedule.
    pub max_lag: Duration,
    pub elapsed: Duration,
}

pub struct Devices {
    pub ids: Vec<String>,
    links: Arc<Vec<Arc<Link>>>,
    runtime: Handle,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    answered: Arc<AtomicU64>,
}

pub fn device_id(i: usize) -> String {
    format!("bench-{i:04}")
}

impl Devices {
    /// Connects `count` devices; each publishes its retained meta and `online`, and subscribes
    /// to its command topic before this returns.
    pub async fn start(rig: &Rig, count: usize) -> Result<Devices, BenchError> {
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-devices".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(stopped.cancelled());
                    }
                    Err(e) => drop(tx.send(Err(e))),
                }
            })
            .map_err(BenchError::io("starting the device thread"))?;
        let runtime = rx
            .await
            .map_err(|_| BenchError::Setup("device thread ended".into()))?
            .map_err(BenchError::io("device runtime"))?;
        let answered = Arc::new(AtomicU64::new(0));
        let mut links = Vec::with_capacity(count);
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let id = device_id(i);
            let (addr, config, answered) =
                (rig.broker.mqtt, rig.certs.device.clone(), answered.clone());
            let (link, reader) = runtime
                .spawn({
                    let id = id.clone();
                    async move { connect(addr, &config, &id).await }
                })
                .await
                .map_err(|e| BenchError::Setup(format!("device task: {e}")))??;
            let link = Arc::new(link);
            runtime.spawn(answer_commands(reader, link.clone(), answered));
            links.push(link);
            ids.push(id);
        }
        Ok(Devices {
            ids,
            links: Arc::new(links),
            runtime,
            stop,
            thread: Some(thread),
            answered,
        })
    }

    /// Publishes `rate` messages per second, round robin over the devices, for `duration`.
    pub async fn pace(
        &self,
        trial: u32,
        rate: f64,
        duration: Duration,
    ) -> Result<PaceReport, BenchError> {
        let links = self.links.clone();
        self.runtime
            .spawn(pace(links, trial, rate, duration))
            .await
            .map_err(|e| BenchError::Setup(format!("pacer: {e}")))?
    }

    /// Commands answered so far by all devices.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects one device: CONNECT, SUBSCRIBE to its commands, retained meta and `online`.
async fn connect(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    id: &str,
) -> Result<(Link, (ReadHalf<TlsStream<TcpStream>>, BytesMut)), BenchError> {
    let mut stream = tls::connect(addr, None, config).await?;
    let mut out = BytesMut::new();
    mqtt::connect(&mut out, &format!("bench-dev-{id}"), 0);
    mqtt::subscribe(&mut out, 1, &format!("iot/{id}/cmd"), QoS::AtLeastOnce);
    let meta = format!(
        r#"{{"kind":"sensor","name":"Bench {id}","telemetry":{{"temperature":{{"type":"float","unit":"C"}},"humidity":{{"type":"float","unit":"%"}}}},"controls":{{"on":{{"type":"bool"}}}},"actions":["set"]}}"#
    );
    mqtt::publish(
        &mut out,
        &format!("iot/{id}/meta"),
        meta.as_bytes(),
        QoS::AtMostOnce,
        true,
        0,
    );
    mqtt::publish(
        &mut out,
        &format!("iot/{id}/status"),
        b"online",
        QoS::AtMostOnce,
        true,
        0,
    );
    stream
        .write_all(&out)
        .await
        .map_err(BenchError::io("device connect"))?;
    stream
        .flush()
        .await
        .map_err(BenchError::io("device connect"))?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut subscribed = false;
    while !subscribed {
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(BenchError::io("device setup"))?
            == 0
        {
            return Err(BenchError::Protocol(format!(
                "broker closed device {id} during setup"
            )));
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
    let (reader, writer) = tokio::io::split(stream);
    let link = Link {
        telemetry_topic: format!("iot/{id}/telemetry"),
        writer: Mutex::new(writer),
    };
    Ok((link, (reader, buf)))
}

/// A device's receive loop: every command (QoS 1) is acknowledged to the broker and answered
/// with an `ok` ack at once.
async fn answer_commands(
    (mut reader, mut buf): (ReadHalf<TlsStream<TcpStream>>, BytesMut),
    link: Arc<Link>,
    answered: Arc<AtomicU64>,
) {
    #[derive(serde::Deserialize)]
    struct Cmd {
        id: String,
    }
    let ack_topic = link.telemetry_topic.replace("/telemetry", "/ack");
    let mut pid: u16 = 0;
    let mut out = BytesMut::new();
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut acks = 0u64;
        let drained = drain_packets(&mut buf, |p| {
            if let Packet::Publish {
                payload,
                pid: their,
                ..
            } = p
            {
                if let Some(their) = their {
                    mqtt::puback(&mut out, their);
                }
                if let Ok(cmd) = serde_json::from_slice::<Cmd>(payload) {
                    pid = pid.checked_add(1).unwrap_or(1);
                    // When the command arrived, so the client can split its round trip in two.
                    let ack = format!(
                        r#"{{"id":"{}","ok":true,"result":{{"on":true,"t_ns":{}}}}}"#,
                        cmd.id,
                        now_ns()
                    );
                    mqtt::publish(
                        &mut out,
                        &ack_topic,
                        ack.as_bytes(),
                        QoS::AtLeastOnce,
                        false,
                        pid,
                    );
                    acks += 1;
                }
            }
            Ok(())
        });
        if drained.is_err() {
            return;
        }
        if !out.is_empty() {
            let mut w = link.writer.lock().await;
            if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
                return;
            }
            out.clear();
        }
        answered.fetch_add(acks, Ordering::Relaxed);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
    }
}

/// The open-loop schedule: see the module documentation.
async fn pace(
    links: Arc<Vec<Arc<Link>>>,
    trial: u32,
    rate: f64,
    duration: Duration,
) -> Result<PaceReport, BenchError> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let n = links.len().max(1) as u64;
    let interval_ns = 1e9 / rate.max(0.001);
    let start = now_ns() + 1_000_000;
    let due_at = |k: u64| start + (k as f64 * interval_ns) as u64;
    let mut bufs: Vec<BytesMut> = links.iter().map(|_| BytesMut::new()).collect();
    let mut payload = String::with_capacity(telemetry::PAYLOAD_BYTES + 16);
    let (mut next, mut max_lag) = (0u64, 0u64);
    while next < total {
        let now = now_ns();
        let due = if now < start {
            0
        } else {
            (((now - start) as f64 / interval_ns) as u64 + 1).min(total)
        };
        if due > next {
            max_lag = max_lag.max(now.saturating_sub(due_at(next)));
            for k in next..due {
                let dev = (k % n) as usize;
                telemetry::encode(
                    &mut payload,
                    Sample {
                        t_ns: now_ns(),
                        trial,
                        seq: k,
                    },
                );
                mqtt::publish(
                    &mut bufs[dev],
                    &links[dev].telemetry_topic,
                    payload.as_bytes(),
                    QoS::AtMostOnce,
                    false,
                    0,
                );
            }
            for (link, buf) in links
                .iter()
                .zip(bufs.iter_mut())
                .filter(|(_, b)| !b.is_empty())
            {
                let mut w = link.writer.lock().await;
                w.write_all(buf)
                    .await
                    .map_err(BenchError::io("publishing telemetry"))?;
                w.flush()
                    .await
                    .map_err(BenchError::io("publishing telemetry"))?;
                buf.clear();
            }
            next = due;
        }
        if next < total {
            tokio::time::sleep_until(telemetry::instant_of(due_at(next)).into()).await;
        }
    }
    Ok(PaceReport {
        sent: total,
        max_lag: Duration::from_nanos(max_lag),
        elapsed: Duration::from_nanos(now_ns().saturating_sub(start)),
    })
}
