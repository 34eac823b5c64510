//! The scale-out model (docs/operations.md, "Several instances"): several bridge instances on
//! one broker. Every instance streams all telemetry; command ids carry the instance id, so each
//! instance answers its own clients' commands and ignores the acks meant for another.

use std::time::{Duration, Instant};

use e2e::audit::warnings_with;
use e2e::load::connect_to;
use e2e::metrics::Scrape;
use e2e::mqtt::{simple_meta, ManualDevice};
use e2e::{Bridge, E2eError, TestEnv};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_broker_each_stream_everything_and_answer_only_their_own_commands(
) -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(0)
        .bridge_config(|c| c.instance_id = Some("east".into()))
        .start()
        .await?;
    let mut west = Bridge::start(&env.pki, env.mosquitto.port(), |c| {
        c.instance_id = Some("west".into())
    })
    .await?;
    let mut relay = ManualDevice::start(
        &env.pki,
        &env.mosquitto,
        "relay-1",
        &simple_meta("relay", &["t"]),
    )
    .await?;
    env.wait_online(&["relay-1"], WAIT).await?;
    let mut a = env.connect("alice").await?;
    let mut b = connect_to(&env.pki, west.addr(), "alice").await?;
    b.wait_online(&["relay-1"], WAIT).await?;
    let east_snapshot = a.subscribe(&["relay-1"], "s", WAIT).await?;
    b.subscribe(&["relay-1"], "s", WAIT).await?;

    // Every instance sees all telemetry.
    relay.telemetry(&json!({"t": 21.5})).await?;
    let mut seqs = Vec::new();
    for client in [&mut a, &mut b] {
        let msg = client
            .recv_until(
                |m| m["type"] == "telemetry" && m["device"] == "relay-1",
                WAIT,
            )
            .await?;
        assert_eq!(msg["data"]["t"], 21.5, "{msg}");
        seqs.push(msg["seq"].clone());
    }

    // A client resuming on the other instance gets a fresh snapshot: the rings are per instance.
    let mut moved = connect_to(&env.pki, west.addr(), "alice").await?;
    let since = json!({"epoch": east_snapshot["epoch"], "seqs": {"relay-1": seqs[0]}});
    let resumed = moved
        .request(
            &json!({"type": "subscribe", "req": "s2", "devices": ["relay-1"], "since": since}),
            WAIT,
        )
        .await?;
    assert_eq!(resumed["type"], "snapshot", "{resumed}");
    assert_eq!(resumed["recovered"], false, "{resumed}");
    assert_ne!(resumed["epoch"], east_snapshot["epoch"], "{resumed}");
    moved.close().await?;

    // The same request id through each instance: the device gets two commands whose ids name
    // the instance that sent them.
    let cmd = |on: bool| {
        json!({"type": "command", "req": "r1", "device": "relay-1", "action": "set",
               "params": {"on": on}})
    };
    a.send(&cmd(true)).await?;
    let first = relay.next_command(WAIT).await?;
    b.send(&cmd(false)).await?;
    let second = relay.next_command(WAIT).await?;
    let id = |c: &Value| c["id"].as_str().unwrap_or_default().to_owned();
    assert!(id(&first).starts_with("east-"), "{first}");
    assert!(id(&second).starts_with("west-"), "{second}");

    // Both instances receive both acks; each answers only its own client, with its own result.
    // West's goes first, so east has seen an ack that is not its own before its own comes.
    relay.ack(&second, &json!({"on": false})).await?;
    relay.ack(&first, &json!({"on": true})).await?;
    let via_east = a.command_statuses("r1", WAIT).await?;
    let via_west = b.command_statuses("r1", WAIT).await?;
    for (got, on) in [(&via_east, true), (&via_west, false)] {
        let names: Vec<_> = got.iter().filter_map(|s| s["status"].as_str()).collect();
        assert_eq!(names, ["accepted", "sent", "ok"], "{got:?}");
        assert_eq!(got[2]["result"], json!({"on": on}), "{got:?}");
    }
    // Nothing more for r1 on either side.
    for client in [&mut a, &mut b] {
        client.expect_nothing_more_for("r1", WAIT).await?;
    }

    // One instance going away leaves the other serving: west stops, east still answers.
    west.stop().await?;
    a.send(&cmd(false)).await?;
    let third = relay.next_command(WAIT).await?;
    relay.ack(&third, &json!({"on": false})).await?;
    let after = a.command_statuses("r1", WAIT).await?;
    assert_eq!(
        after.last().map(|s| &s["status"]),
        Some(&json!("ok")),
        "{after:?}"
    );
    env.shutdown().await
}

/// Two instances given one `instance_id` share one MQTT client id, and the broker drops the
/// older connection whenever the other connects: each is told what is wrong, and they back
/// off instead of taking the link from each other at the shortest reconnect delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_instance_id_are_warned_and_back_off() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(0)
        .bridge_config(|c| c.instance_id = Some("twin".into()))
        .start()
        .await?;
    let connects = |s: &Scrape| s.get("iotbridge_broker_connects_total", &[]);
    let first = connects(&env.metrics().await?);
    let mut twin = Bridge::start(&env.pki, env.mosquitto.port(), |c| {
        c.instance_id = Some("twin".into());
        c.broker.reconnect_min_ms = 100;
    })
    .await?;
    let started = Instant::now();
    let warned = loop {
        let found = warnings_with("client_id", "iot-bridge-twin");
        if let Some(w) = found.first() {
            break w.clone();
        }
        if started.elapsed() > WAIT {
            return Err(E2eError::timeout("the takeover warning", WAIT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = warned.get("message").unwrap_or_default();
    assert!(
        text.contains("same instance_id") && text.contains("3 times"),
        "{warned:?}"
    );
    // Backing off: over the next 3 s the first instance connects two or three times; at its
    // shortest delay (200 ms), as before a short-lived link counted as a failure, about ten.
    let before = connects(&env.metrics().await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = connects(&env.metrics().await?) - before;
    assert!(
        during <= 6.0,
        "{during} connects by the first instance in 3 s"
    );
    assert!(before > first, "the first instance was taken over at all");

    // With the twin gone, the first instance holds its link again.
    twin.stop().await?;
    env.wait_readyz(200, WAIT).await?;
    env.shutdown().await
}
