//! The demo command's code path: certificates made on first start, embedded broker, fleet and
//! bridge in one process, and a client with the demo user's certificate receiving telemetry.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::WsClient;
use iot_demo::{DemoOptions, DEMO_USER};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_live_telemetry_to_a_certificate_holder() {
    let dir = tempfile::tempdir().unwrap();
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let opts = DemoOptions {
        certs_dir: dir.path().join("dev-certs"),
        listen: local(0),
        mqtt: local(0),
        devices: 6,
        telemetry_interval: Duration::from_millis(100),
        seed: 7,
        extra_sans: Vec::new(),
    };
    let shutdown = CancellationToken::new();
    let demo = iot_demo::start(&opts, shutdown.clone()).await.unwrap();
    assert_eq!(demo.fleet.ids().len(), 6);

    // The first start made the certificates the README tells people to import.
    let (cert, key, p12) = demo.certs.user(DEMO_USER);
    assert!(p12.is_file(), "{} is missing", p12.display());
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let mut client = WsClient::connect(
        demo.bridge_addr,
        &read(&cert),
        &read(&key),
        &read(&demo.certs.ca_cert),
    )
    .await
    .unwrap();
    let welcome = client.recv(WAIT).await.unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    // The bridge's link is up once the embedded broker granted every one of its subscriptions.
    if welcome["broker"] != "up" {
        client
            .recv_until(|m| m["type"] == "broker" && m["status"] == "up", WAIT)
            .await
            .unwrap();
    }
    // The bridge may still be reading the fleet's retained messages when the client subscribes:
    // devices it does not know yet arrive after the snapshot, as on a dashboard.
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await.unwrap();
    let mut seen: std::collections::BTreeSet<String> = snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 6 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = client.recv(left).await.unwrap_or_else(|e| {
            panic!("saw only {seen:?} of the 6 demo devices: {e}");
        });
        if msg["type"] == "telemetry" {
            assert!(msg["seq"].as_u64().is_some_and(|s| s > 0), "{msg}");
        }
        if let Some(id) = msg["device"].as_str() {
            seen.insert(id.to_owned());
        }
    }
    client
        .recv_until(|m| m["type"] == "telemetry", WAIT)
        .await
        .unwrap();

    shutdown.cancel();
    tokio::time::timeout(WAIT, demo.wait())
        .await
        .unwrap()
        .unwrap();
}
