//! "Nothing lost, nobody slowed": a client that stops reading costs the bridge one bounded queue
//! and its other clients nothing, and is closed with 4008 once it stays too slow.
//!
//! These run in their own test binary, one at a time, because they measure the whole process
//! (the bridge runs in it) and delivery delays. Delays are compared with a control: a second
//! bridge on the same broker with the same readers and a twin of the stalled client that never
//! stalls, over the same seconds, so whatever else the machine does weighs on both alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::load::{self, Phase, ReaderLog, Stalled};
use e2e::mqtt::{simple_meta, ManualDevice};
use e2e::{raw_ws, Bridge, E2eError, TestEnv};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
/// The tests here measure the whole process: they never run at the same time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Readers on the bridge with the stalled client, and as many on the control bridge.
const READERS: usize = 20;
const WARM_UP: Duration = Duration::from_millis(500);
const BASELINE: Duration = Duration::from_secs(2);
/// Below the bridge's 10 s slow-client limit: these tests are about the time before the close.
const STALL: Duration = Duration::from_secs(7);
/// Bulk telemetry (about 3.2 MB/s) that only the stalling clients subscribe to: it fills the
/// socket's buffers within a second or two, so the bridge's queue for the client is what holds
/// the rest, and an unbounded queue would show in the process's memory.
const BULK_BYTES: usize = 64 * 1024;
const BULK_EVERY: Duration = Duration::from_millis(20);

async fn start_bulk(
    env: &TestEnv,
    phase: &Phase,
) -> Result<tokio::task::JoinHandle<Result<usize, E2eError>>, E2eError> {
    let meta = simple_meta("bulk", &[]);
    let device = ManualDevice::start(&env.pki, &env.mosquitto, "bulk-1", &meta).await?;
    env.wait_online(&["bulk-1"], WAIT).await?;
    let publish = load::publish_bulk(device, BULK_BYTES, BULK_EVERY, phase.clone());
    Ok(tokio::spawn(publish))
}

/// Reads the stalled client's backlog for a moment: the bridge told it it lagged (telemetry
/// was conflated for it), unless it already closed it for being too slow.
async fn assert_it_lagged(env: &TestEnv, stalled: Stalled) -> Result<(), E2eError> {
    let (mut stream, partial) = stalled;
    let (frames, _) = raw_ws::read_rest(&mut stream, partial, Duration::from_secs(2)).await;
    let lagging = frames
        .iter()
        .filter(|f| f.opcode == raw_ws::OP_TEXT)
        .filter_map(|f| serde_json::from_slice::<Value>(&f.payload).ok())
        .find(|m| m["type"] == "lagging");
    let closed = env
        .metrics()
        .await?
        .get("iotbridge_clients_closed_total", &[("reason", "too_slow")]);
    match lagging {
        Some(m) => assert!(m["conflated"].as_u64().is_some_and(|n| n > 0), "{m}"),
        None => assert!(
            closed > 0.0,
            "never told it lagged ({} frames)",
            frames.len()
        ),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_slows_no_one_and_costs_no_one_a_message() -> Result<(), E2eError> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let tweak = |c: &mut iot_bridge::Config| {
        // Room for a reader's hiccup of a couple of seconds on a busy machine.
        c.limits.session_queue = 512;
        c.history.max_samples = 16;
    };
    let env = TestEnv::new()
        .devices(10)
        .telemetry_interval(Duration::from_millis(50))
        .bridge_config(tweak)
        .start()
        .await?;
    let ids = env.fleet().ids();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut control = Bridge::start(&env.pki, env.mosquitto.port(), tweak).await?;
    let phase = Phase::new(WARM_UP);
    let bulk = start_bulk(&env, &phase).await?;
    wait_listed(&env, &control, &ids).await?;

    let (mut readers, mut controls) = (Vec::new(), Vec::new());
    for n in 0..READERS {
        let client = env.connect(&format!("reader-{n}")).await?;
        readers.push(load::start_reader(client, &ids, &phase).await?);
        let client = load::connect_to(&env.pki, control.addr(), &format!("control-{n}")).await?;
        controls.push(load::start_reader(client, &ids, &phase).await?);
    }
    // The client that will stall reads everything, bulk included, until the stall: then it
    // just stops. Its twin on the control bridge never stops.
    let staller = load::subscribe_everything(&env.pki, env.bridge.addr(), "staller").await?;
    let twin = load::subscribe_everything(&env.pki, control.addr(), "twin").await?;
    let (reading, twin_reading) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let staller = tokio::spawn(load::drain_while(staller, reading.clone()));
    let twin = tokio::spawn(load::drain_while(twin, twin_reading.clone()));
    tokio::time::sleep(BASELINE).await;

    reading.store(false, Ordering::Relaxed);
    let staller = staller
        .await
        .map_err(|e| E2eError::Bridge(format!("{e}")))?;
    phase.stalled.store(true, Ordering::Relaxed);
    tokio::time::sleep(STALL).await;
    phase.stop.store(true, Ordering::Relaxed);
    twin_reading.store(false, Ordering::Relaxed);
    bulk.await
        .map_err(|e| E2eError::Bridge(format!("bulk: {e}")))??;
    let logs = load::join_readers(readers).await?;
    let control_logs = load::join_readers(controls).await?;
    drop(twin.await);
    control.stop().await?;

    assert_it_lagged(&env, staller).await?;
    // Nothing lost: every reader saw every seq of every device and was never told it lagged.
    let expected = (ids.len() as f64 * (BASELINE + STALL).as_secs_f64() / 0.05 * 0.5) as usize;
    for (n, log) in logs.iter().chain(&control_logs).enumerate() {
        assert!(
            log.gaps.is_empty(),
            "reader {n} missed messages: {:?}",
            log.gaps
        );
        assert_eq!(log.lagging, 0, "reader {n} was told it lagged");
        assert!(
            log.received >= expected,
            "reader {n} got {} of {expected}",
            log.received
        );
    }
    // Nobody slowed: in a typical second of the stall, the slowest 5% of deliveries to the
    // stalled client's neighbours are no slower than on the control bridge (twice, plus 10 ms
    // for millisecond timestamps).
    let (seconds, during) = load::stall_p95(&logs);
    let (control_seconds, control_during) = load::stall_p95(&control_logs);
    let before =
        |logs: &[ReaderLog]| load::p95(logs.iter().flat_map(|l| l.before_ms.clone()).collect());
    eprintln!(
        "p95 delivery delay before the stall: {} ms, control {} ms; per second of the stall: \
         {seconds:?} ms, control {control_seconds:?} ms",
        before(&logs),
        before(&control_logs)
    );
    assert!(
        during <= control_during * 2 + 10,
        "a typical second of the stall: p95 {during} ms, control bridge {control_during} ms"
    );
    env.shutdown().await
}

/// Waits until `bridge` lists every one of `ids` as online.
async fn wait_listed(env: &TestEnv, bridge: &Bridge, ids: &[&str]) -> Result<(), E2eError> {
    let started = Instant::now();
    loop {
        let mut client = load::connect_to(&env.pki, bridge.addr(), "e2e-setup").await?;
        let list = client
            .request(&json!({"type": "list", "req": "l"}), WAIT)
            .await?;
        client.close().await?;
        let online = |id: &&str| {
            list["devices"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|d| d["id"] == *id && d["presence"] == "online")
            })
        };
        if ids.iter().all(online) {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            return Err(E2eError::timeout(
                "the control bridge to list the fleet",
                WAIT,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_holds_a_bounded_queue_then_is_closed_with_4008() -> Result<(), E2eError> {
    // The limit is fixed at 10 s; idle stays at its default (75 s) so nothing else closes it.
    const SLOW_LIMIT: Duration = Duration::from_secs(10);
    let _alone = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new()
        .devices(10)
        .telemetry_interval(Duration::from_millis(50))
        .bridge_config(|c| {
            c.limits.session_queue = 64;
            c.history.max_samples = 16;
        })
        .start()
        .await?;
    let phase = Phase::new(WARM_UP);
    phase.stalled.store(true, Ordering::Relaxed);
    let bulk = start_bulk(&env, &phase).await?;
    let mut reader = env.connect("reader").await?;
    reader.subscribe(&["*"], "s", WAIT).await?;
    let mut staller = load::subscribe_everything(&env.pki, env.bridge.addr(), "staller").await?;
    let started = Instant::now();
    let rss_before = load::rss_bytes();
    let mut rss_peak = rss_before;

    let closed_after = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_peak = rss_peak.max(load::rss_bytes());
        let m = env.metrics().await?;
        if m.get("iotbridge_clients_closed_total", &[("reason", "too_slow")]) > 0.0 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < SLOW_LIMIT + Duration::from_secs(5),
            "still not closed for being too slow after {:?}",
            started.elapsed()
        );
    };
    phase.stop.store(true, Ordering::Relaxed);
    let volume = bulk
        .await
        .map_err(|e| E2eError::Bridge(format!("bulk: {e}")))??;
    assert!(closed_after >= SLOW_LIMIT, "closed after {closed_after:?}");

    // Until then its queue stayed bounded: an unbounded one would have kept every bulk message
    // alive; a bounded one holds a few frames plus what the socket holds, which is not the
    // process's memory.
    let growth = rss_peak.saturating_sub(rss_before);
    eprintln!(
        "RSS grew by {} KiB while {} KiB of bulk telemetry went to the stalled client",
        growth / 1024,
        volume / 1024
    );
    assert!(
        volume > 15 << 20,
        "too little volume to tell: {volume} bytes"
    );
    assert!(
        growth < volume as u64 / 2,
        "RSS grew by {growth} bytes for {volume} bytes sent to the stalled client"
    );

    // When it reads again it finds the end of the connection: the 4008 close frame if the
    // bridge could still write it into the full socket, else just the end of the stream.
    let (frames, ended) = raw_ws::read_to_end(&mut staller, WAIT).await;
    assert!(ended, "the connection was ended");
    let codes: Vec<Option<u16>> = frames
        .iter()
        .filter(|f| f.opcode == raw_ws::OP_CLOSE)
        .map(raw_ws::ServerFrame::close_code)
        .collect();
    assert!(
        codes.iter().all(|c| *c == Some(4008)),
        "close codes {codes:?}"
    );

    // The reader kept going throughout.
    reader.take_backlog();
    let msg = reader
        .recv_until(|m| m["type"] == "telemetry", WAIT)
        .await?;
    assert!(msg["seq"].as_u64().is_some());
    env.shutdown().await
}
