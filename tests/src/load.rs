//! Steady load for the slow-client tests: reading clients that log delivery delays and check
//! every sequence number, clients that read everything and then stall, a bulk publisher that
//! gives a stalled client megabytes to hold, and the process's resident memory.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use crate::mqtt::ManualDevice;
use crate::{raw_ws, tls, ws, E2eError, Pki, WsClient};

const WAIT: Duration = Duration::from_secs(20);

/// Where a run is: readers sort their samples by it, publishers stop on it.
#[derive(Debug, Clone)]
pub struct Phase {
    pub started: Instant,
    /// Samples before this much time are warm-up and not kept.
    pub warm_up: Duration,
    pub stalled: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
}

impl Phase {
    pub fn new(warm_up: Duration) -> Phase {
        Phase {
            started: Instant::now(),
            warm_up,
            stalled: Arc::default(),
            stop: Arc::default(),
        }
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

/// What one reading client saw.
#[derive(Debug, Default)]
pub struct ReaderLog {
    /// Delivery delays in ms (receipt minus the device's `ts`) before the stall.
    pub before_ms: Vec<i64>,
    /// Delivery delays during the stall, by whole second since the run started.
    pub during_ms: BTreeMap<u64, Vec<i64>>,
    pub gaps: Vec<String>,
    pub lagging: usize,
    pub received: usize,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Resident memory of this process (and so of a bridge it runs), from /proc/self/status.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The 95th percentile (0 for no values).
pub fn p95(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    let at = (values.len() * 95 / 100).min(values.len().saturating_sub(1));
    values.get(at).copied().unwrap_or(0)
}

/// For a group of readers, the p95 delay of each second of the stall, and the median of those:
/// a typical second, which one hiccup of a busy machine does not decide.
pub fn stall_p95(logs: &[ReaderLog]) -> (Vec<i64>, i64) {
    let mut by_second: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for log in logs {
        for (second, delays) in &log.during_ms {
            by_second.entry(*second).or_default().extend(delays);
        }
    }
    let per_second: Vec<i64> = by_second.into_values().map(p95).collect();
    let mut sorted = per_second.clone();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    (per_second, median)
}

/// A WebSocket client of the bridge at `addr` as `name`, past its welcome.
pub async fn connect_to(pki: &Pki, addr: SocketAddr, name: &str) -> Result<WsClient, E2eError> {
    let cert = pki.client(name)?;
    let mut client = WsClient::connect(addr, &cert.cert_pem, &cert.key_pem, pki.ca_pem()).await?;
    client.recv_until(|m| m["type"] == "welcome", WAIT).await?;
    Ok(client)
}

/// Subscribes `client` to `ids` and starts a task that reads until the phase stops, checking
/// that every device's seq grows by exactly one.
pub async fn start_reader(
    mut client: WsClient,
    ids: &[&str],
    phase: &Phase,
) -> Result<JoinHandle<Result<ReaderLog, E2eError>>, E2eError> {
    let snapshot = client.subscribe(ids, "s", WAIT).await?;
    let last: HashMap<String, u64> = snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let id = d["id"].as_str().unwrap_or_default().to_owned();
            (id, d["seq"].as_u64().unwrap_or(0))
        })
        .collect();
    Ok(tokio::spawn(read(client, last, phase.clone())))
}

async fn read(
    mut client: WsClient,
    mut last: HashMap<String, u64>,
    phase: Phase,
) -> Result<ReaderLog, E2eError> {
    let mut log = ReaderLog::default();
    while !phase.stop.load(Ordering::Relaxed) {
        let msg = match client.recv(Duration::from_millis(200)).await {
            Ok(msg) => msg,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        if msg["type"] == "lagging" {
            log.lagging += 1;
        }
        if msg["type"] != "telemetry" {
            continue;
        }
        let delay = now_ms() - msg["ts"].as_i64().unwrap_or(0);
        let id = msg["device"].as_str().unwrap_or_default().to_owned();
        let seq = msg["seq"].as_u64().unwrap_or(0);
        let previous = last.insert(id.clone(), seq);
        if previous.map(|p| p + 1) != Some(seq) {
            log.gaps.push(format!("{id}: {previous:?} -> {seq}"));
        }
        log.received += 1;
        let elapsed = phase.started.elapsed();
        if phase.is_stalled() {
            let second = elapsed.as_secs();
            log.during_ms.entry(second).or_default().push(delay);
        } else if elapsed > phase.warm_up {
            log.before_ms.push(delay);
        }
    }
    client.close().await?;
    Ok(log)
}

/// Waits for every reader task.
pub async fn join_readers(
    tasks: Vec<JoinHandle<Result<ReaderLog, E2eError>>>,
) -> Result<Vec<ReaderLog>, E2eError> {
    let mut logs = Vec::new();
    for task in tasks {
        let log = task
            .await
            .map_err(|e| E2eError::Bridge(format!("reader task: {e}")))??;
        logs.push(log);
    }
    Ok(logs)
}

/// A hand-driven client of the bridge at `addr` subscribed to every device, with a small receive
/// buffer so that the bridge feels it after kilobytes, not megabytes, once it stops reading.
pub async fn subscribe_everything(
    pki: &Pki,
    addr: SocketAddr,
    name: &str,
) -> Result<TlsStream<TcpStream>, E2eError> {
    let cert = pki.client(name)?;
    let config = tls::client_config(pki.ca_pem(), Some(&cert))?;
    let mut stream = raw_ws::upgrade(addr, config, ws::SUBPROTOCOL, Some(4096)).await?;
    let subscribe = json!({"type": "subscribe", "req": "all", "devices": ["*"]});
    raw_ws::send_text(&mut stream, &subscribe.to_string()).await?;
    Ok(stream)
}

/// A stalling client's connection: the stream, and the start of a frame it had begun to read
/// when it stopped (for [`raw_ws::read_rest`]).
pub type Stalled = (TlsStream<TcpStream>, Vec<u8>);

/// Reads and discards whole frames while `reading`, then hands the stream back, unread from
/// there on.
pub async fn drain_while(mut stream: TlsStream<TcpStream>, reading: Arc<AtomicBool>) -> Stalled {
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial = Vec::new();
    while reading.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => {
                partial.extend_from_slice(&buf[..n]);
                raw_ws::take_frames(&mut partial);
            }
            Err(_) => {}
        }
    }
    (stream, partial)
}

/// Publishes telemetry of about `bytes` every `every` until the phase stops; returns how many
/// bytes went out while it was stalled.
pub async fn publish_bulk(
    mut device: ManualDevice,
    bytes: usize,
    every: Duration,
    phase: Phase,
) -> Result<usize, E2eError> {
    let blob = "b".repeat(bytes);
    let mut tick = tokio::time::interval(every);
    let mut during = 0;
    for n in 0u64.. {
        tick.tick().await;
        if phase.stop.load(Ordering::Relaxed) {
            break;
        }
        let payload = json!({"n": n, "blob": blob}).to_string();
        let size = payload.len();
        device.publish("telemetry", payload, false).await?;
        if phase.is_stalled() {
            during += size;
        }
    }
    device.mqtt.disconnect().await;
    Ok(during)
}
