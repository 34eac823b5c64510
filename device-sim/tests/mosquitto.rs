//! Runs three simulated devices against a real Mosquitto with mutual TLS and checks the device side
//! of the MQTT contract: retained meta/status/state, telemetry, a command round trip, the will on kill.
//!
//! Needs the `mosquitto` binary on PATH; without it this test fails on purpose, because skipping
//! would let the contract go unchecked silently.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use device_sim::codec::decode;
use device_sim::{BrokerOpts, DeviceIdentity, DeviceSpec, Fleet, Kind, PayloadFormat, Profile};
use iot_certs::Ca;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A Mosquitto process on a free port; killed on drop, its log printed if the test failed.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- mosquitto log ---\n{}", self.log());
        }
    }
}

fn write_readable(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap();
    // Mosquitto started as root drops to user `mosquitto`, which must still read its files.
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

fn start_mosquitto(ca: &Ca) -> Mosquitto {
    if Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        panic!(
            "the `mosquitto` binary is not on PATH; install it (e.g. `apt-get install mosquitto` or \
             `brew install mosquitto`) to run the device-sim broker test"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let broker = ca
        .issue_server("broker", &["localhost".into(), "127.0.0.1".into()])
        .unwrap();
    let p = |name: &str| dir.path().join(name);
    write_readable(&p("ca.pem"), ca.cert_pem());
    write_readable(&p("broker.pem"), &broker.cert_pem);
    write_readable(&p("broker.key"), &broker.key_pem);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "listener {port} 127.0.0.1\n\
         cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
         persistence false\nlog_dest stderr\nlog_type all\n",
        ca = p("ca.pem").display(),
        cert = p("broker.pem").display(),
        key = p("broker.key").display(),
    );
    write_readable(&p("mosquitto.conf"), &conf);
    let log = p("mosquitto.log");
    let child = spawn_mosquitto(dir.path(), &log, port);
    Mosquitto {
        child,
        port,
        log,
        dir,
    }
}

/// Starts Mosquitto on the config in `dir` and waits until it accepts connections.
fn spawn_mosquitto(dir: &Path, log: &Path, port: u16) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mosquitto exited at start with {status}");
        }
        assert!(
            started.elapsed() < WAIT,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Mosquitto {
    /// Kills the broker (no persistence: retained messages are gone) and starts it again.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_mosquitto(self.dir.path(), &self.log, self.port);
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[derive(Debug)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A plain MQTT client (like the bridge) that records everything under `iot/#`.
struct Observer {
    client: AsyncClient,
    rx: mpsc::Receiver<Msg>,
    /// Messages received but not yet asked for, oldest first (retained ones arrive in any order).
    unclaimed: Vec<Msg>,
}

impl Observer {
    async fn connect(ca: &Ca, port: u16, name: &str, filter: &str) -> Observer {
        let issued = ca.issue_client(name).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut opts = MqttOptions::new(name, "127.0.0.1", port);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
        opts.set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::channel(1024);
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let msg = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // The test notices through `expect` ("observer stopped").
                    Err(err) => {
                        eprintln!("observer connection ended: {err}");
                        return;
                    }
                }
            }
        });
        timeout(WAIT, subscribed_rx)
            .await
            .expect("observer SubAck")
            .unwrap();
        Observer {
            client,
            rx,
            unclaimed: Vec::new(),
        }
    }

    /// Oldest message on `topic` that satisfies `pred`; others stay for later calls.
    async fn expect(&mut self, topic: &str, mut pred: impl FnMut(&Msg) -> bool) -> Msg {
        let mut wanted = |m: &Msg| m.topic == topic && pred(m);
        if let Some(i) = self.unclaimed.iter().position(&mut wanted) {
            return self.unclaimed.remove(i);
        }
        let wait = async {
            loop {
                let msg = self.rx.recv().await.expect("observer stopped");
                if wanted(&msg) {
                    return msg;
                }
                self.unclaimed.push(msg);
            }
        };
        timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no matching message on {topic}"))
    }

    async fn command(&self, device: &str, payload: Value) {
        let topic = format!("iot/{device}/cmd");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
    }
}

fn json_of(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload).unwrap()
}

fn spec(id: &str, kind: Kind, format: PayloadFormat) -> DeviceSpec {
    DeviceSpec {
        id: id.into(),
        profile: Profile::builtin(kind),
        name: format!("Test {kind}"),
        room: "Lab".into(),
        telemetry_interval: Duration::from_millis(200),
        format,
        telemetry_qos: 0,
        seed: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_speak_the_contract_over_mutual_tls() {
    let ca = Ca::generate("device-sim test CA").unwrap();
    let mut broker = start_mosquitto(&ca);
    let identity = DeviceIdentity::MintFromCa {
        ca_cert_pem: ca.cert_pem().into(),
        ca_key_pem: ca.key_pem().into(),
    };
    let opts = BrokerOpts::new("127.0.0.1", broker.port, ca.cert_pem(), identity);
    let specs = vec![
        spec("thermo-1", Kind::Thermostat, PayloadFormat::Json),
        spec("light-1", Kind::Light, PayloadFormat::Cbor),
        spec("sensor-1", Kind::Sensor, PayloadFormat::Json),
    ];
    let fleet = Fleet::start_devices(opts, specs).await.unwrap();
    fleet.wait_connected(WAIT).await.unwrap();

    // A client that arrives later sees each device's retained description, presence and state.
    let mut obs = Observer::connect(&ca, broker.port, "observer", "iot/#").await;
    for id in ["thermo-1", "light-1", "sensor-1"] {
        let kind = fleet.device(id).unwrap().kind().builtin().unwrap();
        let meta = obs.expect(&format!("iot/{id}/meta"), |m| m.retain).await;
        let meta = json_of(&meta);
        assert_eq!(meta["kind"], kind.as_str());
        assert_eq!(meta["room"], "Lab");
        assert_eq!(
            meta["controls"].as_object().unwrap().len(),
            kind.controls().len()
        );
        let status = obs.expect(&format!("iot/{id}/status"), |m| m.retain).await;
        assert_eq!(status.payload, b"online");
        let state = obs.expect(&format!("iot/{id}/state"), |m| m.retain).await;
        let state = decode(&state.payload).unwrap();
        assert_eq!(state, fleet.device(id).unwrap().state());
    }

    // Telemetry flows in each device's format, with a timestamp.
    let light_t = obs.expect("iot/light-1/telemetry", |_| true).await;
    assert_eq!(PayloadFormat::detect(&light_t.payload), PayloadFormat::Cbor);
    let light_t = decode(&light_t.payload).unwrap();
    assert!(light_t["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(light_t.contains_key("power"));
    let thermo_t = obs.expect("iot/thermo-1/telemetry", |_| true).await;
    assert_eq!(thermo_t.payload[0], b'{');
    assert!(decode(&thermo_t.payload).unwrap()["temperature"].is_f64());

    // Command round trip: garbage is ignored, a bad value is refused, a good one applied.
    let light = fleet.device("light-1").unwrap();
    obs.command("light-1", json!("not a command")).await;
    obs.command(
        "light-1",
        json!({"id": "c1", "action": "set", "params": {"brightness": 500}}),
    )
    .await;
    let ack = json_of(&obs.expect("iot/light-1/ack", |_| true).await);
    assert_eq!(
        ack,
        json!({"id": "c1", "ok": false, "error": "brightness must be between 0 and 100"})
    );
    obs.command(
        "light-1",
        json!({"id": "c2", "action": "set", "params": {"on": true, "brightness": 33}}),
    )
    .await;
    let state = decode(&obs.expect("iot/light-1/state", |_| true).await.payload).unwrap();
    assert_eq!(
        (state["on"].clone(), state["brightness"].clone()),
        (json!(true), json!(33))
    );
    let ack = json_of(&obs.expect("iot/light-1/ack", |_| true).await);
    assert_eq!(ack["id"], "c2");
    assert_eq!(ack["ok"], true);
    assert_eq!(ack["result"]["brightness"], 33);
    obs.command("light-1", json!({"id": "c3", "action": "reboot"}))
        .await;
    let ack = json_of(&obs.expect("iot/light-1/ack", |_| true).await);
    assert_eq!(
        ack,
        json!({"id": "c3", "ok": false, "error": "unsupported action 'reboot'"})
    );
    assert_eq!(light.commands_handled(), 3);
    assert_eq!(light.state()["brightness"], 33);
    // The new state is retained for clients that come later.
    let mut late = Observer::connect(&ca, broker.port, "late", "iot/light-1/state").await;
    let retained = late.expect("iot/light-1/state", |m| m.retain).await;
    assert_eq!(decode(&retained.payload).unwrap()["brightness"], 33);

    // Kill: the broker publishes the will; revive brings the device back online.
    let thermo = fleet.device("thermo-1").unwrap();
    thermo.kill().await;
    assert!(!thermo.is_connected());
    let will = obs.expect("iot/thermo-1/status", |_| true).await;
    assert_eq!(will.payload, b"offline");
    thermo.revive().await;
    let back = obs.expect("iot/thermo-1/status", |_| true).await;
    assert_eq!(back.payload, b"online");
    fleet.wait_connected(WAIT).await.unwrap();

    // Broker restart: devices notice, back off, reconnect and republish what the broker forgot.
    broker.restart();
    let lost = Instant::now();
    while fleet.devices().iter().any(|d| d.is_online()) {
        assert!(
            lost.elapsed() < WAIT,
            "devices did not notice the broker restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.wait_connected(WAIT).await.unwrap();
    let mut fresh = Observer::connect(&ca, broker.port, "fresh", "iot/+/meta").await;
    for id in ["thermo-1", "light-1", "sensor-1"] {
        let meta = json_of(&fresh.expect(&format!("iot/{id}/meta"), |m| m.retain).await);
        assert_eq!(
            meta["name"],
            format!("Test {}", fleet.device(id).unwrap().kind())
        );
    }

    // Graceful stop leaves every device retained as offline.
    fleet.stop().await;
    let mut after = Observer::connect(&ca, broker.port, "after", "iot/+/status").await;
    for id in ["thermo-1", "light-1", "sensor-1"] {
        let status = after
            .expect(&format!("iot/{id}/status"), |m| m.retain)
            .await;
        assert_eq!(status.payload, b"offline", "{id}");
        // "disconnected" is Mosquitto's word for a clean DISCONNECT; a dropped socket (and the
        // will standing in for the device) is logged as "closed its connection" instead.
        let clean = format!("Client {id} disconnected.");
        assert!(
            broker.log().contains(&clean),
            "{id} did not disconnect cleanly"
        );
    }
}
