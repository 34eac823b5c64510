//! The embedded broker against a real MQTT client (rumqttc over rustls): mutual TLS
//! acceptance and refusal, retained messages, QoS 1, large payloads, last will.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iot_certs::{generate_dev_certs, DevCertOptions, DevCertPaths};
use iot_demo::broker::EmbeddedBroker;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

struct Env {
    _dir: tempfile::TempDir,
    paths: DevCertPaths,
    broker: EmbeddedBroker,
}

async fn start_env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_certs(&DevCertOptions {
        out_dir: dir.path().to_path_buf(),
        devices: vec!["dev-a".into(), "dev-b".into()],
        ..DevCertOptions::default()
    })
    .unwrap();
    let broker = EmbeddedBroker::start(
        "127.0.0.1:0".parse().unwrap(),
        &paths.ca_cert,
        &paths.broker_cert,
        &paths.broker_key,
    )
    .await
    .unwrap();
    assert_ne!(broker.local_addr().port(), 0);
    Env {
        _dir: dir,
        paths,
        broker,
    }
}

fn tls(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots);
    Arc::new(match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

fn options(client_id: &str, addr: SocketAddr, tls: Arc<ClientConfig>) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(512 * 1024, 512 * 1024);
    opts
}

/// A connected client whose event loop runs in its own task, forwarding every event.
struct Client {
    mqtt: AsyncClient,
    events: mpsc::UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

async fn connect(opts: MqttOptions) -> Result<Client, String> {
    let (mqtt, mut event_loop) = AsyncClient::new(opts, 64);
    timeout(WAIT, wait_for_connack(&mut event_loop))
        .await
        .map_err(|_| "no CONNACK in time".to_owned())??;
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(event) = event_loop.poll().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    Ok(Client { mqtt, events, task })
}

async fn wait_for_connack(event_loop: &mut EventLoop) -> Result<(), String> {
    loop {
        match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return match ack.code {
                    rumqttc::ConnectReturnCode::Success => Ok(()),
                    code => Err(format!("refused: {code:?}")),
                }
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl Client {
    async fn next_publish(&mut self, topic: &str) -> Publish {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Event::Incoming(Packet::Publish(p))) if p.topic == topic => return p,
                    Some(_) => {}
                    None => panic!("connection ended while waiting for {topic}"),
                }
            }
        };
        timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("nothing on {topic}"))
    }

    async fn next_incoming(&mut self, want: fn(&Packet) -> bool, what: &str) {
        let wait = async {
            loop {
                match self.events.recv().await {
                    Some(Event::Incoming(p)) if want(&p) => return,
                    Some(_) => {}
                    None => panic!("connection ended while waiting for {what}"),
                }
            }
        };
        timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what}"));
    }

    async fn subscribe(&mut self, filter: &str) {
        self.mqtt.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        self.next_incoming(|p| matches!(p, Packet::SubAck(_)), "SUBACK")
            .await;
    }

    async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
        self.next_incoming(|p| matches!(p, Packet::PubAck(_)), "PUBACK")
            .await;
    }
}

fn device(env: &Env, id: &str) -> Arc<ClientConfig> {
    tls(&env.paths.ca_cert, Some(env.paths.device(id)))
}

#[tokio::test]
async fn retained_qos1_and_large_messages_flow_between_certified_clients() {
    let env = start_env().await;
    let addr = env.broker.local_addr();

    let mut dev = connect(options("dev-a", addr, device(&env, "dev-a")))
        .await
        .unwrap();
    dev.publish("iot/dev-a/status", true, b"online".to_vec())
        .await;

    // A later subscriber gets the retained message, flagged as retained.
    let bridge_tls = tls(
        &env.paths.ca_cert,
        Some((
            env.paths.bridge_client_cert.clone(),
            env.paths.bridge_client_key.clone(),
        )),
    );
    let mut bridge = connect(options("bridge", addr, bridge_tls)).await.unwrap();
    bridge.subscribe("iot/+/status").await;
    let retained = bridge.next_publish("iot/dev-a/status").await;
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"online");

    // Live QoS 1 delivery in the other direction, and a 256 KiB payload intact.
    dev.subscribe("iot/dev-a/cmd").await;
    bridge
        .publish(
            "iot/dev-a/cmd",
            false,
            br#"{"id":"1","action":"set"}"#.to_vec(),
        )
        .await;
    let cmd = dev.next_publish("iot/dev-a/cmd").await;
    assert_eq!(cmd.qos, QoS::AtLeastOnce);
    assert!(!cmd.retain);

    bridge.subscribe("iot/+/telemetry").await;
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    dev.publish("iot/dev-a/telemetry", false, big.clone()).await;
    let got = bridge.next_publish("iot/dev-a/telemetry").await;
    assert_eq!(got.payload.len(), big.len());
    assert!(got.payload[..] == big[..], "payload corrupted");
}

#[tokio::test]
async fn clients_without_a_trusted_certificate_are_refused() {
    let env = start_env().await;
    let addr = env.broker.local_addr();

    let anonymous = tls(&env.paths.ca_cert, None);
    let err = connect(options("anon", addr, anonymous))
        .await
        .err()
        .expect("a client without a certificate must not connect");
    assert!(err.contains("CertificateRequired"), "{err}");

    let other_dir = tempfile::tempdir().unwrap();
    let other = generate_dev_certs(&DevCertOptions {
        out_dir: other_dir.path().to_path_buf(),
        devices: vec!["dev-a".into()],
        ..DevCertOptions::default()
    })
    .unwrap();
    // Trusts our broker, but its own certificate comes from a different CA.
    let stranger = tls(&env.paths.ca_cert, Some(other.device("dev-a")));
    let err = connect(options("dev-a", addr, stranger))
        .await
        .err()
        .expect("a certificate from another CA must be refused");
    assert!(err.contains("fatal alert"), "{err}");

    // The refusals did not hurt the broker.
    connect(options("dev-b", addr, device(&env, "dev-b")))
        .await
        .unwrap();
}

#[tokio::test]
async fn last_will_is_delivered_and_retained_when_a_client_drops() {
    let env = start_env().await;
    let addr = env.broker.local_addr();

    let mut observer = connect(options("observer", addr, device(&env, "dev-a")))
        .await
        .unwrap();
    observer.subscribe("iot/dev-b/status").await;

    let mut opts = options("dev-b", addr, device(&env, "dev-b"));
    opts.set_last_will(LastWill::new(
        "iot/dev-b/status",
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let mut dev = connect(opts).await.unwrap();
    dev.publish("iot/dev-b/status", true, b"online".to_vec())
        .await;
    assert_eq!(
        &observer.next_publish("iot/dev-b/status").await.payload[..],
        b"online"
    );

    // Abrupt drop: the event loop and its socket vanish without a DISCONNECT packet.
    dev.task.abort();
    drop(dev);
    let will = observer.next_publish("iot/dev-b/status").await;
    assert_eq!(&will.payload[..], b"offline");

    let mut late = connect(options("late", addr, device(&env, "dev-a")))
        .await
        .unwrap();
    late.subscribe("iot/dev-b/status").await;
    let retained = late.next_publish("iot/dev-b/status").await;
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"offline");
}

#[tokio::test]
async fn many_clients_connect_at_once() {
    let env = start_env().await;
    let addr = env.broker.local_addr();
    let tls = device(&env, "dev-a");
    let clients: Vec<_> = (0..200)
        .map(|i| tokio::spawn(connect(options(&format!("sim-{i}"), addr, tls.clone()))))
        .collect();
    let mut connected = Vec::new();
    for client in clients {
        connected.push(client.await.unwrap().unwrap());
    }
    assert_eq!(connected.len(), 200);
}
