//! Who gets in: TLS clients without a certificate or with one from another CA get no
//! WebSocket (and the bridge keeps serving everyone else); at the broker, a device certificate
//! reaches only that device's own topics.

use std::sync::Arc;
use std::time::Duration;

use device_sim::Kind;
use e2e::{https, tls, ClientCert, E2eError, TestEnv, WsClient};
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn telemetry(m: &Value) -> bool {
    m["type"] == "telemetry"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_trusted_certificate_get_no_websocket() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(3)
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let addr = env.bridge.addr();
    let ca = env.pki.ca_pem();
    let mut good = env.connect("alice").await?;
    good.subscribe(&["*"], "s1", WAIT).await?;
    good.recv_until(telemetry, WAIT).await?;

    let refused = WsClient::connect_without_cert(addr, ca).await;
    match refused {
        Ok(_) => panic!("a client without a certificate got a WebSocket"),
        Err(e) => assert!(!e.is_timeout(), "refused, not left hanging: {e}"),
    }

    // Same CN, same CA name, different key: it must not chain.
    let foreign = env.pki.foreign_client("alice")?;
    let refused = WsClient::connect(addr, &foreign.cert_pem, &foreign.key_pem, ca).await;
    match refused {
        Ok(_) => panic!("a client with a certificate from another CA got a WebSocket"),
        Err(e) => assert!(!e.is_timeout(), "refused, not left hanging: {e}"),
    }
    // Neither gets plain HTTPS either.
    let health = https::get(addr, "/healthz", &foreign, ca).await;
    assert!(health.is_err(), "{health:?}");

    // The connected client never noticed: telemetry still flows and requests are answered.
    good.take_backlog();
    let after = good.recv_until(telemetry, WAIT).await?;
    assert!(after["seq"].as_u64().is_some_and(|s| s > 0), "{after}");
    let pong = good
        .request(&json!({"type": "ping", "req": "p1"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    // And a trusted newcomer still gets in.
    let ok = env.get("/healthz").await?;
    assert_eq!(ok.status, 200);
    env.shutdown().await
}

/// An MQTT client at the test broker with this certificate; its event loop runs in a task.
async fn mqtt_client(
    env: &TestEnv,
    client_id: &str,
    cert: &ClientCert,
) -> Result<(AsyncClient, tokio::sync::mpsc::Receiver<u16>), E2eError> {
    let config = tls::client_config(env.pki.ca_pem(), Some(cert))?;
    let mut options = MqttOptions::new(client_id, "localhost", env.mosquitto.port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::clone(&config),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    // PubAcks, by packet id, so the test knows the broker has processed each publish.
    let (acks, acked) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let _ = acks.send(ack.pkid).await;
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "test MQTT client ended");
                    break;
                }
            }
        }
    });
    Ok((client, acked))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_reaches_only_its_own_topics() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Light, Kind::Plug])
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let plug = env.ids_of(Kind::Plug)[0].clone();
    let light_device = env.device(&light).expect("the light is part of the fleet");
    let light_state = light_device.state();
    let mut watcher = env.connect("alice").await?;
    watcher.subscribe(&["*"], "s1", WAIT).await?;

    // The plug's identity, on a second connection, tries to speak for the light and to command it.
    let (client, mut acked) = mqtt_client(&env, "impostor", &env.client_cert(&plug)?).await?;
    let flip = !light_state["on"].as_bool().unwrap_or(false);
    let spoofed = [
        (format!("iot/{light}/telemetry"), json!({"power": 999.5})),
        (format!("iot/{light}/state"), json!({"on": flip})),
        (
            format!("iot/{light}/cmd"),
            json!({"id": "spoof-1", "action": "set", "params": {"on": flip}}),
        ),
        // Its own topic is allowed: the marker that everything before it was processed.
        (format!("iot/{plug}/telemetry"), json!({"power": 4242.5})),
    ];
    for (topic, payload) in &spoofed {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.to_string())
            .await
            .map_err(|e| E2eError::Bridge(format!("queueing a publish: {e}")))?;
    }
    for _ in &spoofed {
        tokio::time::timeout(WAIT, acked.recv())
            .await
            .map_err(|_| E2eError::timeout("PubAck from the broker", WAIT))?;
    }

    // The broker delivers to the bridge in order, so once the marker is here, anything spoofed
    // before it would have been too.
    let marker = watcher
        .recv_until(
            |m| telemetry(m) && m["device"] == plug.as_str() && m["data"]["power"] == 4242.5,
            WAIT,
        )
        .await?;
    assert_eq!(marker["data"]["power"], 4242.5);
    for m in watcher.backlog() {
        assert!(
            m["data"]["power"] != 999.5,
            "spoofed telemetry got through: {m}"
        );
        assert!(
            !(m["type"] == "state" && m["device"] == light.as_str()),
            "spoofed state: {m}"
        );
    }
    // The light never saw the command (give it time it would have needed to act).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(light_device.commands_handled(), 0);
    assert_eq!(light_device.state(), light_state);
    let _ = client.disconnect().await;
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_read_another_devices_commands() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Light, Kind::Plug])
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let plug = env.ids_of(Kind::Plug)[0].clone();
    // The plug's identity listens on the light's command topic (and on every command topic).
    let mut spy = e2e::mqtt::MqttClient::connect(&env.pki, &env.mosquitto, &plug, None).await?;
    spy.subscribe(&format!("iot/{light}/cmd")).await?;
    spy.subscribe("iot/+/cmd").await?;
    let mut alice = env.connect("alice").await?;
    let cmd = json!({"type": "command", "req": "c1", "device": light, "action": "set",
                     "params": {"on": true}});
    alice.send(&cmd).await?;
    let done = alice
        .recv_until(
            |m| m["type"] == "command_status" && m["status"] == "ok",
            WAIT,
        )
        .await?;
    assert_eq!(done["req"], "c1");
    let light_device = env.device(&light).expect("the light is part of the fleet");
    assert_eq!(
        light_device.commands_handled(),
        1,
        "the light got its command"
    );
    let leaked = spy.recv(Duration::from_millis(1500)).await;
    assert!(
        leaked.is_err(),
        "the plug read the light's command: {leaked:?}"
    );
    spy.disconnect().await;
    env.shutdown().await
}
