//! Scenario (d): one `device-sim` process holding a large fleet, each device publishing every
//! 10 s, against the rig's broker. What it costs the simulator: resident memory per device and
//! CPU; an MQTT observer proves the devices are really online and publishing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::clients::{connect_direct, drain_packets};
use crate::mqtt::Packet;
use crate::procstat;
use crate::rig::{Rig, DEVICE};
use crate::BenchError;

/// Device ids of the simulated fleet start with this, to tell them from the benchmark's own.
const ID_PREFIX: &str = "sim-";

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The `device-sim` binary; default: next to this program.
    pub binary: Option<PathBuf>,
    pub devices: usize,
    pub interval: Duration,
    /// New connections per second (device-sim's ramp).
    pub connect_rate: f64,
    /// How long the fleet is watched once every device is online.
    pub window: Duration,
}

impl FleetOptions {
    pub fn full() -> FleetOptions {
        FleetOptions {
            binary: None,
            devices: 50_000,
            interval: Duration::from_secs(10),
            // What Mosquitto sustains next to the simulator on two cores (BENCHMARKS.md, device
            // simulator); faster, handshakes time out and devices retry.
            connect_rate: 500.0,
            window: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetResult {
    pub wanted: usize,
    /// Devices whose retained status said `online` at the end.
    pub online: usize,
    pub connect_time: Duration,
    /// Telemetry messages per second seen by the observer during the window.
    pub telemetry_rate: f64,
    pub rss_bytes: u64,
    /// The simulator's CPU during the window, as a share of one core.
    pub cpu_share: f64,
}

impl FleetResult {
    pub fn bytes_per_device(&self) -> f64 {
        self.rss_bytes as f64 / self.online.max(1) as f64
    }
}

fn default_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let sibling = me.parent()?.join("device-sim");
    sibling.exists().then_some(sibling)
}

/// Runs the fleet and watches it; the process is killed at the end.
pub async fn run(
    rig: &Rig,
    opts: &FleetOptions,
    log: &mut dyn FnMut(String),
) -> Result<FleetResult, BenchError> {
    let binary = opts.binary.clone().or_else(default_binary).ok_or_else(|| {
        BenchError::Setup(
            "no device-sim binary next to iot-bench (cargo build --release -p device-sim)".into(),
        )
    })?;
    let online = Arc::new(Mutex::new(HashSet::<String>::new()));
    let telemetry = Arc::new(AtomicU64::new(0));
    let (mut stream, mut buf) = connect_direct(
        rig.broker.mqtt,
        &rig.certs.user,
        "bench-fleet-observer",
        "iot/#",
    )
    .await?;
    let observer = tokio::spawn({
        let (online, telemetry) = (online.clone(), telemetry.clone());
        async move {
            loop {
                let seen = drain_packets(&mut buf, |p| {
                    let Packet::Publish { topic, payload, .. } = p else {
                        return Ok(());
                    };
                    let Some(rest) = topic
                        .strip_prefix("iot/")
                        .filter(|r| r.starts_with(ID_PREFIX))
                    else {
                        return Ok(());
                    };
                    if let Some(id) = rest.strip_suffix("/status") {
                        let mut set = online.lock().unwrap_or_else(|e| e.into_inner());
                        if payload == b"online" {
                            set.insert(id.to_owned());
                        } else {
                            set.remove(id);
                        }
                    } else if rest.ends_with("/telemetry") {
                        telemetry.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                });
                if seen.is_err() || !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
            }
        }
    });
    let (cert, key) = rig.certs.paths.device(DEVICE);
    let mut child = Command::new(&binary)
        .args([
            "fleet",
            "--broker",
            &format!("localhost:{}", rig.broker.mqtt.port()),
        ])
        .arg("--ca")
        .arg(&rig.certs.paths.ca_cert)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args([
            "--count",
            &opts.devices.to_string(),
            "--kinds",
            "sensor",
            "--cbor-share",
            "0",
        ])
        .args(["--interval", &format!("{}ms", opts.interval.as_millis())])
        .args([
            "--connect-rate",
            &opts.connect_rate.to_string(),
            "--id-prefix",
            ID_PREFIX,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(rig.work_dir().join("device-sim.log"))
                .map_err(BenchError::io("device-sim.log"))?,
        ))
        .spawn()
        .map_err(BenchError::io(format!("starting {}", binary.display())))?;
    let pid = child.id();
    let count = || online.lock().unwrap_or_else(|e| e.into_inner()).len();
    let started = Instant::now();
    let allowed = Duration::from_secs_f64(opts.devices as f64 / opts.connect_rate * 3.0 + 30.0);
    let mut last_log = Instant::now();
    let mut last_count = (0, Instant::now());
    while count() < opts.devices && started.elapsed() < allowed {
        if let Ok(Some(status)) = child.try_wait() {
            observer.abort();
            return Err(BenchError::Setup(format!(
                "device-sim exited ({status}) with {} devices online; see its log",
                count()
            )));
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            log(format!(
                "(d) {} of {} devices online",
                count(),
                opts.devices
            ));
            last_log = Instant::now();
        }
        if count() != last_count.0 {
            last_count = (count(), Instant::now());
        } else if last_count.1.elapsed() > Duration::from_secs(30) {
            break; // no progress: the fleet is as large as it gets here
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_time = started.elapsed();
    let u0 = procstat::usage(pid);
    let t0 = telemetry.load(Ordering::Relaxed);
    let watch = Instant::now();
    tokio::time::sleep(opts.window).await;
    let window = watch.elapsed();
    let u1 = procstat::usage(pid);
    let sent = telemetry.load(Ordering::Relaxed) - t0;
    let online_now = count();
    let _ = child.kill();
    let _ = child.wait();
    observer.abort();
    let (Some(u0), Some(u1)) = (u0, u1) else {
        return Err(BenchError::Setup(
            "device-sim exited during the window".into(),
        ));
    };
    Ok(FleetResult {
        wanted: opts.devices,
        online: online_now,
        connect_time,
        telemetry_rate: sent as f64 / window.as_secs_f64(),
        rss_bytes: u1.rss_bytes.max(u0.rss_bytes),
        cpu_share: u1.cpu_since(&u0).as_secs_f64() / window.as_secs_f64(),
    })
}
