//! The bad-input matrix from the device side: garbage, truncated CBOR, non-UTF-8, non-maps,
//! meta that is not JSON, oversized and too deeply nested payloads, retained junk. Each is
//! counted in `iotbridge_bad_payloads_total` and changes nothing; other devices keep flowing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use device_sim::Kind;
use e2e::mqtt::{simple_meta, ManualDevice, MqttClient};
use e2e::{E2eError, TestEnv, WsClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const BAD: &str = "iotbridge_bad_payloads_total";

/// Checks that every fleet device's telemetry among `messages` continues `last` by exactly one.
fn continues(last: &mut HashMap<String, u64>, messages: &[Value]) {
    for m in messages.iter().filter(|m| m["type"] == "telemetry") {
        let id = m["device"].as_str().unwrap_or_default().to_owned();
        let seq = m["seq"].as_u64().unwrap_or(0);
        if let Some(previous) = last.insert(id.clone(), seq) {
            assert_eq!(seq, previous + 1, "{id} skipped or repeated: {m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_junk_is_counted_and_changes_nothing() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Plug, Kind::Sensor])
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.limits.max_payload_bytes = 1024)
        .start()
        .await?;
    let meta = simple_meta("junkbox", &["t"]);
    let mut junk = ManualDevice::start(&env.pki, &env.mosquitto, "junk-1", &meta).await?;
    env.wait_online(&["junk-1"], WAIT).await?;
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;
    let mut last: HashMap<String, u64> = snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["id"] != "junk-1")
        .map(|d| {
            (
                d["id"].as_str().unwrap_or_default().to_owned(),
                d["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let before = env.metrics().await?;

    let deep = "{\"a\":".repeat(20) + "1" + &"}".repeat(20);
    let oversized = json!({"t": 1.5, "pad": "p".repeat(2000)}).to_string();
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("telemetry", b"garbage".to_vec()),
        ("telemetry", vec![0xa2, 0x61, 0x61]), // a CBOR map cut short
        ("telemetry", vec![0xbf, 0xff, 0xff]), // a CBOR map, then junk
        ("telemetry", b"\xff\xfe\x00".to_vec()),
        ("telemetry", b"{\"t\": \"\xff\"}".to_vec()), // JSON with a non-UTF-8 string
        ("telemetry", b"[1,2,3]".to_vec()),
        ("telemetry", b"42".to_vec()),
        ("telemetry", Vec::new()),
        ("telemetry", deep.into_bytes()),
        ("telemetry", oversized.into_bytes()),
        ("state", b"{oops".to_vec()),
        ("state", b"\"on\"".to_vec()),
        ("meta", b"{\"kind\": ".to_vec()),
        ("meta", b"[\"not\", \"a map\"]".to_vec()),
        ("status", b"maybe".to_vec()),
        ("ack", b"{\"ok\": true}".to_vec()),
        ("ack", b"\x00\x01".to_vec()),
    ];
    for (channel, payload) in &payloads {
        junk.publish(channel, payload.clone(), false).await?;
    }
    // One good reading after all that: once it is here, everything before it was handled.
    junk.telemetry(&json!({"t": 21.5})).await?;
    let marker = client
        .recv_until(
            |m| m["type"] == "telemetry" && m["device"] == "junk-1",
            WAIT,
        )
        .await?;
    assert_eq!(
        marker["data"],
        json!({"t": 21.5}),
        "no junk got through first"
    );
    assert_eq!(marker["seq"], 1, "junk was not counted as readings");
    let passed = client.take_backlog();
    for m in &passed {
        assert!(m["device"] != "junk-1", "junk reached a client: {m}");
    }
    continues(&mut last, &passed);

    let after = env.metrics().await?;
    assert_eq!(
        after.get(BAD, &[]) - before.get(BAD, &[]),
        payloads.len() as f64,
        "every junk payload counted once"
    );
    // Its meta and presence are what they were.
    let list = client
        .request(&json!({"type": "list", "req": "l1"}), WAIT)
        .await?;
    let entry = list["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["id"] == "junk-1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&entry["kind"], &entry["presence"]),
        (&json!("junkbox"), &json!("online"))
    );

    // The rest of the fleet never noticed.
    for _ in 0..6 {
        let m = client
            .recv_until(|m| m["type"] == "telemetry", WAIT)
            .await?;
        continues(&mut last, &[m]);
    }
    junk.mqtt.disconnect().await;
    env.shutdown().await
}

async fn wait_bad(env: &TestEnv, want: f64) -> Result<(), E2eError> {
    let started = Instant::now();
    loop {
        let got = env.metrics().await?.get(BAD, &[]);
        if got == want {
            return Ok(());
        }
        assert!(got < want, "{got} bad payloads counted, expected {want}");
        if started.elapsed() > WAIT {
            return Err(E2eError::timeout(format!("{want} bad payloads"), WAIT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_junk_is_counted_again_after_a_restart_and_breaks_nothing() -> Result<(), E2eError>
{
    let mut env = TestEnv::new()
        .devices(2)
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.limits.max_payload_bytes = 1024)
        .start()
        .await?;
    // A device that only ever left junk behind, retained, on its own topics; its telemetry is
    // a payload hundreds of times over the bridge's limit, which must not cost the bridge its
    // link: the broker would hand it over again at every reconnect.
    let mut junk = MqttClient::connect(&env.pki, &env.mosquitto, "junk-2", None).await?;
    let huge = json!({"t": 1.5, "pad": "p".repeat(512 * 1024)}).to_string();
    for (channel, payload) in [
        ("meta", b"{oops".to_vec()),
        ("state", vec![0xa2, 0x61, 0x61]),
        ("status", b"\xff\xfe".to_vec()),
        ("telemetry", huge.into_bytes()),
    ] {
        junk.publish(&format!("iot/junk-2/{channel}"), payload, true)
            .await?;
    }
    junk.disconnect().await;
    wait_bad(&env, 4.0).await?;
    let connects = "iotbridge_broker_connects_total";
    assert_eq!(
        env.metrics().await?.get(connects, &[]),
        1.0,
        "the link survived the oversized payload"
    );

    // A restarted bridge gets the retained junk again on subscribing: counted, and ignored.
    env.bridge.restart().await?;
    env.wait_readyz(200, WAIT).await?;
    env.wait_devices_online(WAIT).await?;
    wait_bad(&env, 4.0).await?;
    let mut client: WsClient = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;
    let mut listed: Vec<String> = snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    listed.sort();
    let mut fleet = env.fleet().ids();
    fleet.sort();
    assert_eq!(
        listed, fleet,
        "junk-2 never existed: nothing it sent was valid"
    );
    for d in snapshot["devices"].as_array().into_iter().flatten() {
        assert!(d["meta"].is_object(), "{d}");
    }
    client
        .recv_until(|m| m["type"] == "telemetry", WAIT)
        .await?;
    env.shutdown().await
}
