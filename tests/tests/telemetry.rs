//! Telemetry from simulated devices (JSON and CBOR) reaches WebSocket clients in order, with
//! per-device sequence numbers that continue the snapshot's and grow by exactly one.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use device_sim::Kind;
use e2e::{E2eError, TestEnv};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_subscribers_with_gapless_per_device_seq() -> Result<(), E2eError> {
    // Half the devices publish CBOR: the client must see the same JSON either way.
    let env = TestEnv::new()
        .devices(6)
        .cbor_share(0.5)
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let ids = env.fleet().ids();
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;

    let mut last: HashMap<String, u64> = HashMap::new();
    for d in snapshot["devices"].as_array().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or_default().to_owned();
        assert!(
            d["meta"]["telemetry"].is_object(),
            "snapshot meta of {id}: {d}"
        );
        last.insert(id, d["seq"].as_u64().unwrap_or(0));
    }
    let mut known: Vec<_> = last.keys().cloned().collect();
    known.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(known, expected, "the snapshot lists every device");

    // Each device's telemetry fields, from its meta: what every data map must be made of.
    let fields: HashMap<String, Vec<String>> = snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let names = d["meta"]["telemetry"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            (d["id"].as_str().unwrap_or_default().to_owned(), names)
        })
        .collect();

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    while counts.len() < ids.len() || counts.values().any(|n| *n < 5) {
        assert!(started.elapsed() < WAIT, "telemetry so far: {counts:?}");
        let msg = client.recv(WAIT).await?;
        if msg["type"] != "telemetry" {
            continue;
        }
        let id = msg["device"].as_str().unwrap_or_default().to_owned();
        let seq = msg["seq"].as_u64().unwrap_or(0);
        let previous = last.get(&id).copied();
        assert_eq!(
            Some(seq),
            previous.map(|p| p + 1),
            "{id}: seq must continue from {previous:?} by exactly one: {msg}"
        );
        last.insert(id.clone(), seq);
        assert!(
            msg["ts"].as_i64().is_some_and(|ts| ts > 1_600_000_000_000),
            "{msg}"
        );
        let data = msg["data"].as_object().cloned().unwrap_or_default();
        assert!(!data.is_empty() && !data.contains_key("ts"), "{msg}");
        let allowed = &fields[&id];
        assert!(
            data.keys().all(|k| allowed.contains(k)),
            "{id}: fields {:?} not all in meta {allowed:?}",
            data.keys().collect::<Vec<_>>()
        );
        *counts.entry(id).or_default() += 1;
    }
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_gets_only_matching_devices() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(4)
        .kinds(&[Kind::Light, Kind::Plug])
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let lights = env.ids_of(Kind::Light);
    let mut client = env.connect("bob").await?;
    let snapshot = client.subscribe(&["light-*"], "s1", WAIT).await?;
    let listed: Vec<&str> = snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(listed, lights);

    let mut seen = 0;
    while seen < 10 {
        let msg = client.recv(WAIT).await?;
        if msg["type"] == "telemetry" {
            let id = msg["device"].as_str().unwrap_or_default();
            assert!(
                lights.iter().any(|l| l == id),
                "telemetry of {id} leaked: {msg}"
            );
            seen += 1;
        }
    }
    env.shutdown().await
}
