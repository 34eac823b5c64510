//! Failures the bridge must survive: a client sending garbage, the broker going away and
//! coming back on the same port, and the bridge itself restarting.

use std::collections::HashMap;
use std::time::Duration;

use device_sim::Kind;
use e2e::mqtt::MqttClient;
use e2e::{E2eError, TestEnv, TestEnvBuilder, WsClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn broker(status: &'static str) -> impl Fn(&Value) -> bool {
    move |m: &Value| m["type"] == "broker" && m["status"] == status
}

/// An environment whose bridge reconnects to the broker within 300 ms.
fn quick_reconnects() -> TestEnvBuilder {
    TestEnv::new().bridge_config(|c| {
        c.broker.reconnect_min_ms = 50;
        c.broker.reconnect_max_ms = 300;
    })
}

/// Turns `device` on and returns the command's final status.
async fn switch_on(client: &mut WsClient, req: &str, device: &str) -> Result<Value, E2eError> {
    client.send(&set_on(req, device)).await?;
    let mut statuses = client.command_statuses(req, WAIT).await?;
    Ok(statuses.pop().unwrap_or_default())
}

fn set_on(req: &str, device: &str) -> Value {
    json!({"type": "command", "req": req, "device": device, "action": "set", "params": {"on": true}})
}

/// Reads until every device of the fleet has sent telemetry with a seq above `above` (for the
/// devices it names); returns the seq seen per device.
async fn latest_seq_of_every_device(
    env: &TestEnv,
    client: &mut WsClient,
    above: &HashMap<String, u64>,
) -> Result<HashMap<String, u64>, E2eError> {
    let ids = env.fleet().ids();
    let mut seen: HashMap<String, u64> = HashMap::new();
    while seen.len() < ids.len() {
        let msg = client
            .recv_until(|m| m["type"] == "telemetry", WAIT)
            .await?;
        let id = msg["device"].as_str().unwrap_or_default().to_owned();
        let seq = msg["seq"].as_u64().unwrap_or(0);
        if let Some(floor) = above.get(&id) {
            assert!(seq > *floor, "{id}: seq {seq} after {floor}");
        }
        seen.insert(id, seq);
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_gets_an_error_and_the_connection_keeps_working() -> Result<(), E2eError>
{
    let env = TestEnv::new().devices(2).start().await?;
    let mut client = env.connect("alice").await?;

    for garbage in ["{not json", "[1,2,3]", "\"just a string\""] {
        client.send_text(garbage).await?;
        let answer = client.recv(WAIT).await?;
        assert_eq!(answer["type"], "error", "{garbage}: {answer}");
        assert_eq!(answer["code"], "bad_frame", "{garbage}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A well-formed request of an unknown type still gets its req echoed.
    let unknown = client
        .request(&json!({"type": "dance", "req": "d1"}), WAIT)
        .await?;
    assert_eq!(
        (&unknown["type"], &unknown["code"]),
        (&json!("error"), &json!("unknown_type"))
    );

    // Same connection, still in business.
    let pong = client
        .request(&json!({"type": "ping", "req": "p1"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    let list = client
        .request(&json!({"type": "list", "req": "l1"}), WAIT)
        .await?;
    assert_eq!(list["type"], "list");
    let mut listed: Vec<&str> = list["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str())
        .collect();
    listed.sort_unstable();
    let mut ids = env.fleet().ids();
    ids.sort();
    assert_eq!(listed, ids);
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_is_reported_and_telemetry_resumes() -> Result<(), E2eError> {
    let mut env = quick_reconnects()
        .devices(3)
        .kinds(&[Kind::Plug, Kind::Sensor])
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let plug = env.ids_of(Kind::Plug)[0].clone();
    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;
    let before = latest_seq_of_every_device(&env, &mut client, &HashMap::new()).await?;
    assert_eq!(env.get("/readyz").await?.status, 200);

    env.mosquitto.stop().await?;
    client.recv_until(broker("down"), WAIT).await?;
    let down = env.get("/readyz").await?;
    assert_eq!(down.status, 503, "{down:?}");
    // While the link is down the bridge does not pretend to know presence, and commands fail fast.
    let list = client
        .request(&json!({"type": "list", "req": "l1"}), WAIT)
        .await?;
    assert!(
        list["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|d| d["presence"] == "stale"),
        "{list}"
    );
    let answer = client.request(&set_on("c1", &plug), WAIT).await?;
    assert_eq!(
        (&answer["type"], &answer["status"]),
        (&json!("command_status"), &json!("offline")),
        "{answer}"
    );
    // A client arriving now is told in its welcome.
    let cert = env.client_cert("bob")?;
    let mut late = WsClient::connect(
        env.bridge.addr(),
        &cert.cert_pem,
        &cert.key_pem,
        env.pki.ca_pem(),
    )
    .await?;
    let welcome = late.recv(WAIT).await?;
    assert_eq!(
        (&welcome["type"], &welcome["broker"]),
        (&json!("welcome"), &json!("down"))
    );

    env.mosquitto.restart().await?;
    client.recv_until(broker("up"), WAIT).await?;
    // Whatever was read before "up" predates the outage.
    client.take_backlog();
    late.recv_until(broker("up"), WAIT).await?;
    env.wait_readyz(200, WAIT).await?;

    // Devices reconnect on their own backoff; every device's telemetry reaches the same,
    // still-open connection and continues its sequence.
    latest_seq_of_every_device(&env, &mut client, &before).await?;
    let done = switch_on(&mut client, "c2", &plug).await?;
    assert_eq!(done["status"], "ok", "{done}");
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bridge_rebuilds_every_device_from_the_broker() -> Result<(), E2eError> {
    let mut env = TestEnv::new().devices(5).start().await?;
    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;

    env.bridge.stop().await?;
    // Shutdown says goodbye with a close frame instead of dropping the connection.
    let end = client.recv_until(|_| false, WAIT).await;
    assert!(matches!(end, Err(E2eError::Closed(_))), "{end:?}");

    env.bridge.restart().await?;
    env.wait_readyz(200, WAIT).await?;
    // Retained meta/status/state arrive right after the broker's SubAck; wait for all of them.
    env.wait_devices_online(WAIT).await?;
    let mut client = env.connect("alice").await?;
    let snapshot = client.subscribe(&["*"], "s2", WAIT).await?;
    let devices = snapshot["devices"].as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 5, "{snapshot}");
    for d in &devices {
        assert!(
            d["meta"]["kind"].is_string(),
            "meta from the retained message: {d}"
        );
        assert_eq!(d["presence"], "online", "{d}");
        if d["meta"]["controls"]
            .as_object()
            .is_some_and(|c| !c.is_empty())
        {
            assert!(
                d["state"].is_object(),
                "state from the retained message: {d}"
            );
        }
    }
    env.shutdown().await
}

/// After a broker restart the bridge must not keep vouching for presence it knew before the
/// outage: a device that never comes back is not `online`, and one that does is announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_confirmed_again_after_a_broker_restart() -> Result<(), E2eError> {
    let mut env = quick_reconnects()
        .devices(2)
        .kinds(&[Kind::Plug])
        .start()
        .await?;
    let (gone, back) = (
        env.ids_of(Kind::Plug)[0].clone(),
        env.ids_of(Kind::Plug)[1].clone(),
    );
    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;

    env.mosquitto.stop().await?;
    client.recv_until(broker("down"), WAIT).await?;
    // This one dies with the broker and stays away; the shipped config keeps no retained state.
    env.device(&gone).expect("part of the fleet").kill().await;
    env.mosquitto.restart().await?;
    client.recv_until(broker("up"), WAIT).await?;

    let announced = client
        .recv_until(
            |m| m["type"] == "presence" && m["device"] == back.as_str(),
            WAIT,
        )
        .await?;
    assert_eq!(announced["presence"], "online");
    let list = client
        .request(&json!({"type": "list", "req": "l1"}), WAIT)
        .await?;
    let presence = |id: &str| {
        list["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["id"] == id)
            .map(|d| d["presence"].clone())
    };
    assert_ne!(presence(&gone), Some(json!("online")), "{list}");
    env.shutdown().await
}

/// A broker that does not let the bridge subscribe to a topic refuses it in the SubAck. The
/// bridge does not call its link up with that blind spot: `/readyz` says which topics were
/// refused, clients hear the broker is down, and the bridge asks again (with backoff, on the
/// same connection) until the broker grants it; commands then get their acks again.
/// Mosquitto's ACL file never refuses a subscription (it delivers nothing instead), so the
/// broker runs its dynamic security plugin here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_keeps_the_link_down_until_the_broker_grants_it(
) -> Result<(), E2eError> {
    let mut env = quick_reconnects()
        .devices(1)
        .kinds(&[Kind::Plug])
        .start()
        .await?;
    let plug = env.ids_of(Kind::Plug)[0].clone();
    let mut client = env.connect("alice").await?;
    client.subscribe(&["*"], "s1", WAIT).await?;

    // Subscribing is denied unless a role allows it, and the bridge's role leaves out the acks.
    // The plugin only knows the clients it lists; `e2e-admin` may change its rules.
    let control = "$CONTROL/dynamic-security/#";
    let subscribe =
        |topic: &str| json!({"acltype": "subscribePattern", "topic": topic, "allow": true});
    let bridge_acls = ["meta", "status", "telemetry", "state"]
        .map(|channel| subscribe(&format!("iot/+/{channel}")));
    let rules = json!({
        "defaultACLAccess": {
            "publishClientSend": true, "publishClientReceive": true,
            "subscribe": false, "unsubscribe": true
        },
        "clients": [
            {"username": "iot-bridge", "roles": [{"rolename": "bridge"}]},
            {"username": plug, "roles": [{"rolename": "device"}]},
            {"username": "e2e-admin", "roles": [{"rolename": "admin"}]}
        ],
        "groups": [],
        "roles": [
            {"rolename": "bridge", "acls": bridge_acls},
            {"rolename": "device", "acls": [subscribe("iot/+/cmd")]},
            {"rolename": "admin", "acls": [
                {"acltype": "publishClientSend", "topic": control, "allow": true},
                {"acltype": "publishClientReceive", "topic": control, "allow": true},
                subscribe(control)
            ]}
        ]
    });
    env.mosquitto.use_dynamic_security(&rules.to_string())?;
    env.mosquitto.restart().await?;
    client.recv_until(broker("down"), WAIT).await?;
    // Connected again, but refused: still down, and the reason is where operators look.
    let started = std::time::Instant::now();
    loop {
        let scrape = env.metrics().await?;
        if scrape.get("iotbridge_broker_connects_total", &[]) == 2.0
            && scrape.get("iotbridge_broker_subscriptions_refused", &[]) == 1.0
        {
            break;
        }
        assert!(started.elapsed() < WAIT, "never refused: {scrape:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several retries later (at most 300 ms apart), the link is still down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = env.get("/readyz").await?;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("iot/+/ack"), "{refused:?}");
    assert!(refused.body.contains("ACL"), "{refused:?}");
    let scrape = env.metrics().await?;
    assert_eq!(scrape.get("iotbridge_broker_up", &[]), 0.0);
    assert_eq!(
        scrape.get("iotbridge_broker_subscriptions_refused", &[]),
        1.0
    );
    assert!(client.backlog().all(|m| m["type"] != "broker"), "never up");

    // Subscribing is allowed from now on. Unlike a change to its role (after which the plugin
    // disconnects the bridge), this leaves it connected: its next attempt is granted.
    let mut admin = MqttClient::connect(&env.pki, &env.mosquitto, "e2e-admin", None).await?;
    let change = json!({"commands": [{
        "command": "setDefaultACLAccess",
        "acls": [{"acltype": "subscribe", "allow": true}]
    }]});
    admin
        .publish("$CONTROL/dynamic-security/v1", change.to_string(), false)
        .await?;
    client.recv_until(broker("up"), WAIT).await?;
    env.wait_readyz(200, WAIT).await?;
    let scrape = env.metrics().await?;
    assert_eq!(
        scrape.get("iotbridge_broker_subscriptions_refused", &[]),
        0.0
    );
    assert_eq!(
        scrape.get("iotbridge_broker_connects_total", &[]),
        2.0,
        "granted on the same connection"
    );
    env.wait_online(&[plug.as_str()], WAIT).await?;
    let done = switch_on(&mut client, "c1", &plug).await?;
    assert_eq!(done["status"], "ok", "{done}");
    admin.disconnect().await;
    env.shutdown().await
}
