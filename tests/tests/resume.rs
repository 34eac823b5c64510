//! Gap-free resume over real sockets: a client that reconnects with what it last received gets
//! exactly the messages it missed, in order, then the live stream, nothing twice; when the gap
//! is gone from the ring or the bridge restarted it is told `recovered: false`. And `history`.

use std::collections::BTreeMap;
use std::time::Duration;

use device_sim::Kind;
use e2e::{E2eError, TestEnv, WsClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(50);

fn telemetry(m: &Value) -> bool {
    m["type"] == "telemetry"
}

/// Reads telemetry until every device in `last` has moved on by at least `n`, checking each
/// step is exactly +1; updates `last`.
async fn follow(
    client: &mut WsClient,
    last: &mut BTreeMap<String, u64>,
    n: u64,
) -> Result<(), E2eError> {
    let target: BTreeMap<String, u64> = last.iter().map(|(k, v)| (k.clone(), v + n)).collect();
    while last.iter().any(|(id, seq)| *seq < target[id]) {
        let m = client.recv_until(telemetry, WAIT).await?;
        let id = m["device"].as_str().unwrap_or_default().to_owned();
        let seq = m["seq"].as_u64().unwrap_or(0);
        let previous = last.insert(id.clone(), seq);
        assert_eq!(
            previous.map(|p| p + 1),
            Some(seq),
            "{id}: after {previous:?}: {m}"
        );
    }
    Ok(())
}

fn seqs_of(snapshot: &Value) -> BTreeMap<String, u64> {
    snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["id"].as_str().unwrap_or_default().to_owned(),
                d["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn resume(req: &str, epoch: &Value, seqs: &BTreeMap<String, u64>) -> Value {
    json!({"type": "subscribe", "req": req, "devices": ["*"],
           "since": {"epoch": epoch, "seqs": seqs}})
}

async fn env(max_samples: usize) -> Result<TestEnv, E2eError> {
    TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Plug, Kind::Sensor])
        .telemetry_interval(EVERY)
        .bridge_config(move |c| c.history.max_samples = max_samples)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_exactly_what_it_missed_then_the_live_stream(
) -> Result<(), E2eError> {
    let env = env(512).await?;
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;
    let epoch = snapshot["epoch"].clone();
    let mut last = seqs_of(&snapshot);
    follow(&mut client, &mut last, 3).await?;
    // Gone while telemetry flows: about ten messages per device are missed.
    client.close().await?;
    tokio::time::sleep(EVERY * 10).await;

    let mut client = env.connect("alice").await?;
    let snapshot = client.request(&resume("s2", &epoch, &last), WAIT).await?;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["recovered"], true, "{snapshot}");
    assert_eq!(snapshot["epoch"], epoch);
    for d in snapshot["devices"].as_array().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or_default();
        assert_eq!(
            d["seq"].as_u64(),
            Some(last[id]),
            "resumes where it left off: {d}"
        );
        assert!(
            d["telemetry"].is_null(),
            "missed telemetry is replayed instead: {d}"
        );
        assert_eq!(d["presence"], "online");
        assert!(d["meta"].is_object());
    }
    // Replay then live, one stream: every seq once, in order, for well past the gap.
    let resumed_at = last.clone();
    follow(&mut client, &mut last, 20).await?;
    for (id, seq) in &last {
        assert!(*seq >= resumed_at[id] + 20, "{id}");
    }
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_the_ring_gets_a_fresh_snapshot() -> Result<(), E2eError> {
    let env = env(5).await?;
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;
    let epoch = snapshot["epoch"].clone();
    let mut last = seqs_of(&snapshot);
    follow(&mut client, &mut last, 2).await?;
    client.close().await?;
    // Twenty or so messages missed; the ring holds five.
    tokio::time::sleep(EVERY * 20).await;

    let mut client = env.connect("alice").await?;
    let snapshot = client.request(&resume("s2", &epoch, &last), WAIT).await?;
    assert_eq!(snapshot["recovered"], false, "{snapshot}");
    let fresh = seqs_of(&snapshot);
    for d in snapshot["devices"].as_array().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or_default();
        assert!(
            fresh[id] > last[id] + 5,
            "a current snapshot, not the old point: {d}"
        );
        assert!(d["telemetry"].is_object(), "with the last value: {d}");
    }
    // No replay: the stream continues from the fresh snapshot.
    let mut last = fresh;
    follow(&mut client, &mut last, 3).await?;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_from_before_a_bridge_restart_is_not_recovered() -> Result<(), E2eError> {
    let mut env = env(512).await?;
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;
    let (epoch, token) = (snapshot["epoch"].clone(), snapshot["resume"].clone());
    let mut last = seqs_of(&snapshot);
    follow(&mut client, &mut last, 2).await?;

    env.bridge.restart().await?;
    env.wait_readyz(200, WAIT).await?;
    env.wait_devices_online(WAIT).await?;
    let mut client = env.connect("alice").await?;
    // Both forms of `since`: the seqs the client tracked, and the snapshot's opaque token.
    for (req, since) in [("s2", json!({"epoch": epoch, "seqs": last})), ("s3", token)] {
        let msg = json!({"type": "subscribe", "req": req, "devices": ["*"], "since": since});
        let snapshot = client.request(&msg, WAIT).await?;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        assert_eq!(snapshot["recovered"], false, "{snapshot}");
        assert_ne!(
            snapshot["epoch"], epoch,
            "a restarted bridge has a new epoch"
        );
    }
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_over_the_socket_by_field_time_range_and_limit() -> Result<(), E2eError> {
    let env = env(512).await?;
    let plug = env.ids_of(Kind::Plug)[0].clone();
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&[&plug], "s1", WAIT).await?;
    let mut last = seqs_of(&snapshot);
    follow(&mut client, &mut last, 12).await?;

    let all = client
        .request(
            &json!({"type": "history", "req": "h1", "device": plug}),
            WAIT,
        )
        .await?;
    assert_eq!(all["type"], "history", "{all}");
    let samples = all["samples"].as_array().cloned().unwrap_or_default();
    assert!(samples.len() >= 12, "{all}");
    let seqs: Vec<u64> = samples.iter().filter_map(|s| s["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "oldest first, no gaps: {seqs:?}"
    );
    assert!(*seqs.last().unwrap_or(&0) >= last[&plug]);

    let limited = client
        .request(
            &json!({"type": "history", "req": "h2", "device": plug,
                          "field": "power", "limit": 4}),
            WAIT,
        )
        .await?;
    assert_eq!(limited["field"], "power");
    let picked = limited["samples"].as_array().cloned().unwrap_or_default();
    assert_eq!(picked.len(), 4, "{limited}");
    for s in &picked {
        let data = s["data"].as_object().cloned().unwrap_or_default();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["power"], "{s}");
    }
    // The newest four of the full history at the time: no older than its tail.
    let tail: Vec<u64> = seqs[seqs.len() - 4..].to_vec();
    assert!(picked[0]["seq"].as_u64() >= Some(tail[0]), "{limited}");

    // A time window from the middle of what was there.
    let (from, to) = (samples[3]["ts"].as_i64(), samples[7]["ts"].as_i64());
    let window = client
        .request(
            &json!({"type": "history", "req": "h3", "device": plug,
                          "from": from, "to": to}),
            WAIT,
        )
        .await?;
    let in_window = window["samples"].as_array().cloned().unwrap_or_default();
    assert!(!in_window.is_empty(), "{window}");
    for s in &in_window {
        let ts = s["ts"].as_i64();
        assert!(ts >= from && ts <= to, "{s} outside {from:?}..={to:?}");
    }
    let window_seqs: Vec<u64> = in_window.iter().filter_map(|s| s["seq"].as_u64()).collect();
    for seq in &seqs[3..=7] {
        assert!(
            window_seqs.contains(seq),
            "{seq} missing from {window_seqs:?}"
        );
    }

    // Unknown devices and unknown fields.
    let unknown = client
        .request(
            &json!({"type": "history", "req": "h4", "device": "nope"}),
            WAIT,
        )
        .await?;
    assert_eq!(
        (&unknown["type"], &unknown["code"]),
        (&json!("error"), &json!("unknown_device"))
    );
    let none = client
        .request(
            &json!({"type": "history", "req": "h5", "device": plug, "field": "nope"}),
            WAIT,
        )
        .await?;
    assert_eq!(none["samples"], json!([]), "{none}");
    env.shutdown().await
}
