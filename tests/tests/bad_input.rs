//! The bad-input matrix from the client side: every malformed request gets a clear error and the
//! connection stays (invalid UTF-8 and oversized messages close only that client), nobody else
//! notices, and no device id or pattern ever turns into an MQTT wildcard or a foreign topic.

use std::time::Duration;

use device_sim::Kind;
use e2e::mqtt::MqttClient;
use e2e::{E2eError, TestEnv, WsClient};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Bytes, Message};

const WAIT: Duration = Duration::from_secs(20);

/// A test-only broker identity that may read every topic, to see what the bridge publishes.
const OBSERVER_ACL: &str = "user e2e-observer\ntopic read #\n";

async fn still_up(client: &mut WsClient, req: &str) -> Result<(), E2eError> {
    let pong = client
        .request(&json!({"type": "ping", "req": req}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong", "{pong}");
    Ok(())
}

/// The other client's view while someone misbehaves: telemetry keeps coming, in order, and
/// nothing addressed to the misbehaving client leaks to it.
async fn unaffected(other: &mut WsClient) -> Result<(), E2eError> {
    for m in other.take_backlog() {
        assert!(m["type"] != "error", "another client's error leaked: {m}");
    }
    for _ in 0..3 {
        other.recv_until(|m| m["type"] == "telemetry", WAIT).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_clear_error_and_the_connection_stays() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let mut client = env.connect("mallory").await?;
    let mut other = env.connect("alice").await?;
    other.subscribe(&["*"], "s", WAIT).await?;
    let long_req = "r".repeat(65);
    // (frame, error code, req the error must echo)
    let cases: Vec<(String, &str, Value)> = vec![
        (r#"{"type":"dance","req":"t1"}"#.into(), "unknown_type", json!("t1")),
        (r#"{"req":"t2"}"#.into(), "bad_request", json!("t2")),
        (r#"{"type":5,"req":"t3"}"#.into(), "bad_request", json!("t3")),
        (r#"{"type":"subscribe","req":"t4"}"#.into(), "bad_request", json!("t4")),
        (r#"{"type":"subscribe","req":"t5","devices":"light-1"}"#.into(), "bad_request", json!("t5")),
        (r#"{"type":"subscribe","req":"t6","devices":[]}"#.into(), "bad_request", json!("t6")),
        (r#"{"type":"command","req":"t7","device":"x"}"#.into(), "bad_request", json!("t7")),
        (r#"{"type":"command","req":"t8","device":"x","action":"set","params":[1]}"#.into(), "bad_request", json!("t8")),
        (r#"{"type":"command","req":"t9","device":"x","action":"set","timeout_ms":"soon"}"#.into(), "bad_request", json!("t9")),
        (r#"{"type":"command","req":"t10","device":"x","action":"set","timeout_ms":-1}"#.into(), "bad_request", json!("t10")),
        (r#"{"type":"command","req":"t11","device":"x","action":"set","timeout_ms":1e300}"#.into(), "bad_request", json!("t11")),
        (r#"{"type":"command","req":"t12","device":"x","action":"set","timeout_ms":18446744073709551616}"#.into(), "bad_request", json!("t12")),
        (r#"{"type":"command","req":"t13","device":"x","action":"set","timeout_ms":0}"#.into(), "bad_request", json!("t13")),
        (r#"{"type":"history","req":"t14","device":"x","limit":1e23}"#.into(), "bad_request", json!("t14")),
        (r#"{"type":"history","req":"t15","device":"x","from":"yesterday"}"#.into(), "bad_request", json!("t15")),
        (r#"{"type":"subscribe","req":"t16","devices":["*"],"max_rate_hz":1e308}"#.into(), "bad_request", json!("t16")),
        (r#"{"type":"subscribe","req":"t17","devices":["*"],"max_rate_hz":0}"#.into(), "bad_request", json!("t17")),
        (r#"{"type":"subscribe","req":"t18","devices":["*"],"fields":[]}"#.into(), "bad_request", json!("t18")),
        // Rates so slow that the hold would overflow a clock, or its length a Duration.
        (r#"{"type":"subscribe","req":"t18a","devices":["*"],"max_rate_hz":1e-19}"#.into(), "bad_request", json!("t18a")),
        (r#"{"type":"subscribe","req":"t18b","devices":["*"],"max_rate_hz":1e-20}"#.into(), "bad_request", json!("t18b")),
        (r#"{"type":"ping","req":"t19","extra":1}"#.into(), "bad_request", json!("t19")),
        (r#"{"type":"ping","req":{"nested":1}}"#.into(), "bad_request", Value::Null),
        (format!(r#"{{"type":"ping","req":"{long_req}"}}"#), "bad_request", Value::Null),
        (r#"{"type":"ping","req":"t20","n":1e999}"#.into(), "bad_frame", Value::Null),
        (r#"{"type":"ping","req":"t21""#.into(), "bad_frame", Value::Null),
        ("[1,2]".into(), "bad_frame", Value::Null),
        ("null".into(), "bad_frame", Value::Null),
        (String::new(), "bad_frame", Value::Null),
        ("[".repeat(200) + &"]".repeat(200), "bad_frame", Value::Null),
    ];
    for (frame, code, req) in &cases {
        client.send_text(frame).await?;
        let answer = client.recv(WAIT).await?;
        assert_eq!(answer["type"], "error", "{frame}: {answer}");
        assert_eq!(answer["code"], *code, "{frame}: {answer}");
        assert_eq!(answer["req"], *req, "{frame}: {answer}");
        assert!(answer["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && m.len() < 1000));
    }
    // A binary frame on the JSON subprotocol.
    client
        .send_message(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await?;
    let answer = client.recv(WAIT).await?;
    assert_eq!(
        (&answer["type"], &answer["code"]),
        (&json!("error"), &json!("bad_frame"))
    );

    // Huge but well-formed values go through to whoever judges them: the device refuses.
    let light = env.ids_of(Kind::Light)[0].clone();
    let huge = json!({"type": "command", "req": "big", "device": light, "action": "set",
                      "params": {"brightness": 1e308}, "timeout_ms": u64::MAX});
    client.send(&huge).await?;
    let last = client
        .recv_until(
            |m| m["req"] == "big" && m["status"] != "accepted" && m["status"] != "sent",
            WAIT,
        )
        .await?;
    assert_eq!(last["status"], "rejected", "{last}");

    still_up(&mut client, "alive").await?;
    unaffected(&mut other).await?;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_only_that_client_with_1007() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let mut client = env.connect("mallory").await?;
    let mut other = env.connect("alice").await?;
    other.subscribe(&["*"], "s", WAIT).await?;
    // A text frame whose bytes are not UTF-8; the library would not build one as a Message.
    let bytes = Bytes::from_static(b"{\"type\":\"ping\",\"req\":\"\xff\xfe\"}");
    let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
    client.send_message(Message::Frame(frame)).await?;
    let close = client.recv_close(WAIT).await?;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1007));
    unaffected(&mut other).await?;
    still_up(&mut other, "p").await?;
    let metrics = env.metrics().await?;
    assert_eq!(
        metrics.get(
            "iotbridge_clients_closed_total",
            &[("reason", "invalid_utf8")]
        ),
        1.0
    );
    env.shutdown().await
}

/// A frame the WebSocket protocol forbids (here a reserved opcode) closes that client with
/// 1002, counted, and nobody else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_protocol_error_closes_only_that_client_with_1002() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let mut client = env.connect("mallory").await?;
    let mut other = env.connect("alice").await?;
    other.subscribe(&["*"], "s", WAIT).await?;
    let frame = Frame::message(
        Bytes::from_static(b"?"),
        OpCode::Data(Data::Reserved(3)),
        true,
    );
    client.send_message(Message::Frame(frame)).await?;
    let close = client.recv_close(WAIT).await?;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1002));
    unaffected(&mut other).await?;
    still_up(&mut other, "p").await?;
    let metrics = env.metrics().await?;
    assert_eq!(
        metrics.get(
            "iotbridge_clients_closed_total",
            &[("reason", "protocol_error")]
        ),
        1.0
    );
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_params_close_that_client_and_large_ones_are_refused_by_the_device(
) -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Light])
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(|c| c.limits.max_frame_bytes = 16 * 1024)
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let mut client = env.connect("mallory").await?;
    let mut other = env.connect("alice").await?;
    other.subscribe(&["*"], "s", WAIT).await?;

    let large = json!({"type": "command", "req": "large", "device": light, "action": "set",
                       "params": {"on": true, "note": "n".repeat(10_000)}});
    client.send(&large).await?;
    let last = client
        .recv_until(
            |m| m["req"] == "large" && m["status"] != "accepted" && m["status"] != "sent",
            WAIT,
        )
        .await?;
    assert_eq!(last["status"], "rejected", "{last}");
    assert!(
        last["error"].as_str().is_some_and(|e| e.contains("note")),
        "{last}"
    );
    let device = env.device(&light).expect("part of the fleet");
    assert_eq!(device.commands_handled(), 1);

    let oversized = json!({"type": "command", "req": "huge", "device": light, "action": "set",
                           "params": {"note": "n".repeat(20_000)}});
    client.send(&oversized).await?;
    let close = client.recv_close(WAIT).await?;
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1009));
    unaffected(&mut other).await?;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_patterns_with_mqtt_wildcards_never_reach_the_broker() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(1)
        .kinds(&[Kind::Light])
        .broker_acl(OBSERVER_ACL)
        .bridge_config(|c| c.limits.command_burst = 100)
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let mut observer = MqttClient::connect(&env.pki, &env.mosquitto, "e2e-observer", None).await?;
    observer.subscribe("#").await?;
    let mut client = env.connect("mallory").await?;

    let bad_ids = [
        "+".to_owned(),
        "#".to_owned(),
        format!("{light}/#"),
        format!("{light}/+"),
        "a/b".to_owned(),
        format!("{light}/cmd"),
        format!("../{light}"),
        String::new(),
        " ".to_owned(),
        format!("{light} "),
        "x".repeat(65),
        "ligh\u{0}t".to_owned(),
        "lámpara".to_owned(),
    ];
    for (n, id) in bad_ids.iter().enumerate() {
        let req = format!("c{n}");
        let msg = json!({"type": "command", "req": req, "device": id, "action": "set",
                         "params": {"on": true}});
        let answer = client.request(&msg, WAIT).await?;
        assert_eq!(answer["type"], "error", "{id:?}: {answer}");
        assert!(answer["code"] == "bad_request", "{id:?}: {answer}");
        let history = json!({"type": "history", "req": format!("h{n}"), "device": id});
        let answer = client.request(&history, WAIT).await?;
        assert_eq!(answer["code"], "unknown_device", "{id:?}: {answer}");
    }
    for action in ["set/#", "+", "set/../x", ""] {
        let msg = json!({"type": "command", "req": "a", "device": light, "action": action});
        let answer = client.request(&msg, WAIT).await?;
        assert_eq!(answer["code"], "bad_request", "action {action:?}: {answer}");
    }
    for pattern in ["iot/#", "#", "+", "a/b", "light-*/cmd", "*/+"] {
        let msg = json!({"type": "subscribe", "req": "p", "devices": [pattern]});
        let answer = client.request(&msg, WAIT).await?;
        assert_eq!(answer["code"], "invalid_pattern", "{pattern:?}: {answer}");
    }

    // The one good command is the marker: once the observer sees it, anything the bridge had
    // published before it would have arrived too.
    client
        .send(
            &json!({"type": "command", "req": "good", "device": light, "action": "set",
                      "params": {"on": true}}),
        )
        .await?;
    let own = format!("iot/{light}/cmd");
    loop {
        let p = observer.recv(WAIT).await?;
        if p.topic.ends_with("/cmd") {
            assert_eq!(p.topic, own, "a command went to a foreign topic");
            assert!(!p.retain, "commands are never retained");
            break;
        }
    }
    for p in observer.drain() {
        assert!(!p.topic.ends_with("/cmd"), "another command: {}", p.topic);
    }
    still_up(&mut client, "alive").await?;
    observer.disconnect().await;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_params_are_refused_before_reaching_a_device() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(1)
        .kinds(&[Kind::Light])
        .broker_acl(OBSERVER_ACL)
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let mut observer = MqttClient::connect(&env.pki, &env.mosquitto, "e2e-observer", None).await?;
    observer.subscribe(&format!("iot/{light}/cmd")).await?;
    let mut client = env.connect("mallory").await?;
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let msg = json!({"type": "command", "req": "deep", "device": light, "action": "set",
                     "params": {"on": deep}});
    let answer = client.request(&msg, WAIT).await?;
    assert_eq!(answer["type"], "error", "{answer}");
    let published = observer.recv(Duration::from_secs(1)).await;
    assert!(
        published.is_err(),
        "a 40-deep command was published: {published:?}"
    );
    still_up(&mut client, "alive").await?;
    observer.disconnect().await;
    env.shutdown().await
}
