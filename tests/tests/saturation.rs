//! A saturated bridge paces its writes: while its runtime has no idle moment, each client gets
//! its telemetry in batches (the `iotbridge_sessions_paced` gauge says so), every message
//! still arriving, in order; once the runtime has time again, writes go out at once.
//!
//! The bridge runs on this test's runtime, so two tasks that spin and yield without ever
//! letting a worker park saturate it on purpose. In a binary of its own: the spinning would
//! slow any test running beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::metrics::Scrape;
use e2e::mqtt::{simple_meta, ManualDevice};
use e2e::{E2eError, TestEnv};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const MESSAGES: u64 = 40;

/// Writes to clients that carried more than one frame so far: the session queue depth
/// histogram's observations above its first bucket (`le="1.0"`).
fn batched_writes(scrape: &Scrape) -> f64 {
    let depth = "iotbridge_session_queue_depth";
    scrape.get(&format!("{depth}_count"), &[])
        - scrape.get(&format!("{depth}_bucket"), &[("le", "1.0")])
}

/// Keeps every worker of the runtime busy until `on` is cleared: each task spins for a
/// millisecond and yields, so other tasks still run but no worker ever parks.
fn saturate(workers: usize, on: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|_| {
            let on = on.clone();
            tokio::spawn(async move {
                while on.load(Ordering::Relaxed) {
                    let until = Instant::now() + Duration::from_millis(1);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_bridge_batches_telemetry_and_loses_none() -> Result<(), E2eError> {
    let env = TestEnv::new().devices(0).start().await?;
    let paced = |scrape: &Scrape| scrape.get("iotbridge_sessions_paced", &[]);
    let meta = simple_meta("meter", &["n"]);
    let mut device = ManualDevice::start(&env.pki, &env.mosquitto, "meter-1", &meta).await?;
    env.wait_online(&["meter-1"], WAIT).await?;
    let mut client = env.connect("alice").await?;
    client.subscribe(&["meter-1"], "s1", WAIT).await?;
    let before = env.metrics().await?;
    assert_eq!(paced(&before), 0.0, "idle: nothing paced");

    // Telemetry every 20 ms while the runtime is saturated, until the session has been seen
    // pacing and at least MESSAGES were sent.
    let on = Arc::new(AtomicBool::new(true));
    let hogs = saturate(2, on.clone());
    let started = Instant::now();
    let (mut sent, mut was_paced) = (0u64, false);
    while !(was_paced && sent >= MESSAGES) && started.elapsed() < WAIT {
        device.telemetry(&json!({ "n": sent })).await?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if sent % 8 == 0 {
            was_paced |= paced(&env.metrics().await?) == 1.0;
        }
    }
    on.store(false, Ordering::Relaxed);
    for hog in hogs {
        let _ = hog.await;
    }
    assert!(was_paced, "the session never paced in {sent} messages");
    // Sent 20 ms apart, written at most once per 40 ms: paced writes carry two frames or more.
    // Unpaced, each message is written on its own.
    let batched = batched_writes(&env.metrics().await?) - batched_writes(&before);
    assert!(
        batched >= 3.0,
        "{batched} writes of several frames while paced"
    );

    let mut seen = Vec::new();
    while seen.len() < sent as usize {
        let msg = client.recv(WAIT).await?;
        if msg["type"] == "telemetry" {
            seen.push(msg["data"]["n"].as_u64());
        }
    }
    let expected: Vec<_> = (0..sent).map(Some).collect();
    assert_eq!(seen, expected, "every message, in order");

    // Idle again: within a few windows a message goes out at once and the session no longer
    // counts as paced.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        device.telemetry(&json!({ "n": sent })).await?;
        let msg = client
            .recv_until(|m| m["type"] == "telemetry", WAIT)
            .await?;
        assert_eq!(msg["data"]["n"], sent, "in order after the load too");
        sent += 1;
        if paced(&env.metrics().await?) == 0.0 {
            break;
        }
        assert!(started.elapsed() < WAIT, "still paced long after the load");
    }
    env.shutdown().await
}
