//! Commands end to end: WebSocket client -> bridge -> Mosquitto -> simulated device and back,
//! with every status in order, the new state fanned out to every subscriber, and the failure
//! answers (rejected, unknown device, offline).

use std::time::{Duration, Instant};

use device_sim::Kind;
use e2e::metrics::Scrape;
use e2e::mqtt::{simple_meta, ManualDevice};
use e2e::{E2eError, TestEnv};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn set(req: &str, device: &str, params: Value) -> Value {
    json!({"type": "command", "req": req, "device": device, "action": "set", "params": params})
}

fn is_state<'a>(device: &'a str, key: &'a str, value: Value) -> impl Fn(&Value) -> bool + 'a {
    move |m: &Value| m["type"] == "state" && m["device"] == device && m["state"][key] == value
}

fn names(statuses: &[Value]) -> Vec<&str> {
    statuses
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_command_reaches_the_device_and_every_subscriber_sees_the_new_state(
) -> Result<(), E2eError> {
    let env = TestEnv::new().devices(5).start().await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let mut alice = env.connect("alice").await?;
    let mut bob = env.connect("bob").await?;
    alice.subscribe(&[&light], "sa", WAIT).await?;
    bob.subscribe(&["*"], "sb", WAIT).await?;

    // Start from "off" so the "on" state below can only come from the command under test.
    alice.send(&set("c0", &light, json!({"on": false}))).await?;
    assert_eq!(
        names(&alice.command_statuses("c0", WAIT).await?),
        ["accepted", "sent", "ok"]
    );
    bob.recv_until(is_state(&light, "on", json!(false)), WAIT)
        .await?;
    alice
        .recv_until(is_state(&light, "on", json!(false)), WAIT)
        .await?;
    alice.take_backlog();
    bob.take_backlog();

    alice.send(&set("c1", &light, json!({"on": true}))).await?;
    let c1 = alice.command_statuses("c1", WAIT).await?;
    assert_eq!(names(&c1), ["accepted", "sent", "ok"], "{c1:?}");
    let id = c1[0]["id"].as_str().unwrap_or_default();
    assert!(!id.is_empty());
    for status in &c1 {
        assert_eq!(status["req"], "c1");
        assert_eq!(status["device"], light.as_str());
        assert_eq!(status["id"], id, "one command id throughout: {c1:?}");
    }
    assert_eq!(
        c1[2]["result"]["on"], true,
        "the ack's result is the new state"
    );

    for (who, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        let state = client
            .recv_until(is_state(&light, "on", json!(true)), WAIT)
            .await?;
        assert!(state["ts"].is_i64(), "{who}: {state}");
    }
    // Bob asked for nothing: he sees the state, never the requester's statuses.
    assert!(bob.backlog().all(|m| m["type"] != "command_status"));

    let device = env.device(&light).expect("the light is part of the fleet");
    assert_eq!(
        device.state()["on"],
        true,
        "the device itself says it is on"
    );
    assert_eq!(device.commands_handled(), 2);
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_params_are_rejected_with_the_devices_reason() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Light])
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let device = env.device(&light).expect("the light is part of the fleet");
    let before = device.state();
    let mut client = env.connect("alice").await?;

    client
        .send(&set("r1", &light, json!({"brightness": 500})))
        .await?;
    let r1 = client.command_statuses("r1", WAIT).await?;
    assert_eq!(names(&r1), ["accepted", "sent", "rejected"], "{r1:?}");
    let reason = r1[2]["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("brightness") && reason.contains("between 0 and 100"),
        "the device's own reason: {reason:?}"
    );
    assert_eq!(device.state(), before, "a rejected command changes nothing");
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_times_out_at_each_commands_own_deadline(
) -> Result<(), E2eError> {
    let env = TestEnv::new().devices(0).start().await?;
    let meta = simple_meta("relay", &["t"]);
    let mut mute = ManualDevice::start(&env.pki, &env.mosquitto, "mute-1", &meta).await?;
    env.wait_online(&["mute-1"], WAIT).await?;
    let mut client = env.connect("alice").await?;
    let timeouts = |s: &Scrape| {
        s.get(
            "iotbridge_command_duration_seconds_count",
            &[("outcome", "timeout")],
        )
    };
    let before = env.metrics().await?;

    // A long deadline first, then a short one: the short one must not wait for the long one.
    let with_timeout = |req: &str, ms: u64| {
        let mut cmd = set(req, "mute-1", json!({"on": true}));
        cmd["timeout_ms"] = json!(ms);
        cmd
    };
    client.send(&with_timeout("long", 4_000)).await?;
    let sent = Instant::now();
    client.send(&with_timeout("short", 300)).await?;
    let short = client.command_statuses("short", WAIT).await?;
    let waited = sent.elapsed();
    assert_eq!(names(&short), ["accepted", "sent", "timeout"], "{short:?}");
    assert!(
        short[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("within 300 ms")),
        "{short:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2_000),
        "the 300 ms deadline came after {waited:?}"
    );
    // The device got both, in order (one link, QoS 1); it answers the timed-out one late and
    // the long one in time.
    let long_cmd = mute.next_command(WAIT).await?;
    let short_cmd = mute.next_command(WAIT).await?;
    mute.ack(&short_cmd, &json!({"on": true})).await?;
    mute.ack(&long_cmd, &json!({"on": true})).await?;
    let long = client.command_statuses("long", WAIT).await?;
    assert_eq!(names(&long), ["accepted", "sent", "ok"], "{long:?}");
    // The late answer to "short" produced nothing.
    client.expect_nothing_more_for("short", WAIT).await?;
    let after = env.metrics().await?;
    assert_eq!(timeouts(&after) - timeouts(&before), 1.0);
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_an_unknown_device_is_an_error() -> Result<(), E2eError> {
    let env = TestEnv::new().devices(1).start().await?;
    let mut client = env.connect("alice").await?;
    let answer = client
        .request(&set("u1", "no-such-device", json!({"on": true})), WAIT)
        .await?;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "unknown_device", "{answer}");
    // Nothing else for that request follows.
    client.expect_nothing_more_for("u1", WAIT).await?;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_device_goes_offline_and_commands_to_it_answer_offline_at_once(
) -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Plug])
        .start()
        .await?;
    let plug = env.ids_of(Kind::Plug)[0].clone();
    let other = env.ids_of(Kind::Plug)[1].clone();
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s1", WAIT).await?;
    assert!(snapshot["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|d| d["presence"] == "online"));

    let device = env.device(&plug).expect("the plug is part of the fleet");
    let killed = Instant::now();
    device.kill().await;
    let presence = client
        .recv_until(
            |m| m["type"] == "presence" && m["device"] == plug.as_str(),
            WAIT,
        )
        .await?;
    assert_eq!(
        presence["presence"], "offline",
        "the will fired: {presence}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "offline took {:?}",
        killed.elapsed()
    );

    let sent = Instant::now();
    client.send(&set("k1", &plug, json!({"on": true}))).await?;
    let k1 = client.command_statuses("k1", WAIT).await?;
    assert_eq!(
        names(&k1),
        ["offline"],
        "no accepted before offline: {k1:?}"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(device.commands_handled(), 0);

    // The rest of the fleet is unaffected.
    client.send(&set("k2", &other, json!({"on": true}))).await?;
    assert_eq!(
        names(&client.command_statuses("k2", WAIT).await?),
        ["accepted", "sent", "ok"]
    );

    // And the device comes back.
    device.revive().await;
    let back = client
        .recv_until(
            |m| {
                m["type"] == "presence" && m["device"] == plug.as_str() && m["presence"] == "online"
            },
            WAIT,
        )
        .await?;
    assert_eq!(back["presence"], "online");
    client.send(&set("k3", &plug, json!({"on": true}))).await?;
    assert_eq!(
        names(&client.command_statuses("k3", WAIT).await?),
        ["accepted", "sent", "ok"]
    );
    env.shutdown().await
}

/// A command in flight when the broker link drops is answered `offline` at once, not at its
/// deadline: its ack would have come on that link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_flight_when_the_broker_link_drops_answers_offline_at_once(
) -> Result<(), E2eError> {
    let mut env = TestEnv::new().devices(0).start().await?;
    let meta = simple_meta("relay", &["t"]);
    let mut mute = ManualDevice::start(&env.pki, &env.mosquitto, "mute-2", &meta).await?;
    env.wait_online(&["mute-2"], WAIT).await?;
    let mut client = env.connect("alice").await?;
    let mut cmd = set("c1", "mute-2", json!({"on": true}));
    cmd["timeout_ms"] = json!(60_000);
    client.send(&cmd).await?;
    mute.next_command(WAIT).await?;

    let stopped = Instant::now();
    env.mosquitto.stop().await?;
    let statuses = client.command_statuses("c1", WAIT).await?;
    assert_eq!(
        names(&statuses),
        ["accepted", "sent", "offline"],
        "{statuses:?}"
    );
    assert!(
        statuses[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("broker link lost")),
        "{statuses:?}"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "answered after {:?}, long before its 60 s deadline",
        stopped.elapsed()
    );
    env.mosquitto.restart().await?;
    env.shutdown().await
}
