//! The `iotbridge.v1.cbor` subprotocol: the same messages as JSON in binary frames. A CBOR
//! client's snapshot, telemetry and command statuses match a JSON client's, and bad frames get
//! the same errors.

use std::collections::VecDeque;
use std::time::Duration;

use device_sim::Kind;
use e2e::ws::{self, RawWs, UpgradeOpts};
use e2e::{tls, E2eError, TestEnv};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);
const CBOR: &str = "iotbridge.v1.cbor";

fn encode(msg: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).expect("a JSON value always encodes as CBOR");
    out
}

/// A client speaking CBOR: binary frames out, binary frames in (decoded to JSON values so they
/// compare with a JSON client's).
struct CborClient {
    ws: RawWs,
    backlog: VecDeque<Value>,
}

impl CborClient {
    async fn connect(env: &TestEnv, name: &str) -> Result<CborClient, E2eError> {
        let cert = env.client_cert(name)?;
        let config = tls::client_config(env.pki.ca_pem(), Some(&cert))?;
        let opts = UpgradeOpts {
            subprotocol: Some(CBOR),
            ..UpgradeOpts::default()
        };
        let (ws, response) = ws::open(env.bridge.addr(), config, &opts).await?;
        let agreed = response.headers().get("Sec-WebSocket-Protocol");
        assert_eq!(agreed.and_then(|v| v.to_str().ok()), Some(CBOR));
        Ok(CborClient {
            ws,
            backlog: VecDeque::new(),
        })
    }

    async fn send(&mut self, msg: &Value) -> Result<(), E2eError> {
        self.ws.send(Message::binary(encode(msg))).await?;
        Ok(())
    }

    async fn send_raw(&mut self, msg: Message) -> Result<(), E2eError> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// The first message for which `pred` holds; the others stay in the backlog.
    async fn recv_until(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, E2eError> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Ok(self.backlog.remove(i).unwrap_or_default());
        }
        let read = async {
            loop {
                let frame = match self.ws.next().await {
                    None => return Err(E2eError::Closed("a CBOR message".into())),
                    Some(frame) => frame?,
                };
                let msg: Value = match frame {
                    Message::Binary(bytes) => ciborium::from_reader(&bytes[..])
                        .map_err(|e| E2eError::Bridge(format!("undecodable CBOR: {e}")))?,
                    Message::Text(t) => panic!("text frame on the CBOR subprotocol: {t}"),
                    _ => continue,
                };
                if pred(&msg) {
                    return Ok(msg);
                }
                self.backlog.push_back(msg);
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| E2eError::timeout("a CBOR message", timeout))?
    }

    async fn request(&mut self, msg: &Value) -> Result<Value, E2eError> {
        self.send(msg).await?;
        let req = msg["req"].clone();
        self.recv_until(|m| m["req"] == req, WAIT).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cbor_client_sees_what_a_json_client_sees_and_can_command() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Light, Kind::Thermostat])
        .cbor_share(0.5)
        .telemetry_interval(Duration::from_millis(100))
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let mut cbor = CborClient::connect(&env, "carol").await?;
    let welcome = cbor.recv_until(|m| m["type"] == "welcome", WAIT).await?;
    assert_eq!(welcome["identity"], "carol");
    assert!(welcome["features"]
        .as_array()
        .is_some_and(|f| f.contains(&json!("cbor"))));
    let mut json_client = env.connect("jason").await?;

    let from_cbor = cbor
        .request(&json!({"type": "subscribe", "req": "s1", "devices": ["*"]}))
        .await?;
    let from_json = json_client.subscribe(&["*"], "s1", WAIT).await?;
    assert_eq!(from_cbor["type"], "snapshot");
    assert_eq!(from_cbor["epoch"], from_json["epoch"]);
    let entries = |s: &Value| -> Vec<Value> {
        let mut all = s["devices"].as_array().cloned().unwrap_or_default();
        all.sort_by_key(|d| d["id"].as_str().unwrap_or_default().to_owned());
        all
    };
    for (c, j) in entries(&from_cbor).iter().zip(entries(&from_json).iter()) {
        for key in ["id", "meta", "presence", "state"] {
            assert_eq!(c[key], j[key], "{key} of {}", c["id"]);
        }
    }
    assert_eq!(entries(&from_cbor).len(), 2);

    // The same telemetry message, field for field, whichever format the device used.
    for id in env.fleet().ids() {
        let is_next = |m: &Value| m["type"] == "telemetry" && m["device"] == id.as_str();
        let c = cbor.recv_until(is_next, WAIT).await?;
        let seq = c["seq"].clone();
        let j = json_client
            .recv_until(|m| is_next(m) && m["seq"] == seq, WAIT)
            .await?;
        assert_eq!(c, j, "telemetry of {id}");
    }

    // A command in CBOR, answered in CBOR; the JSON client sees the new state.
    let command = json!({"type": "command", "req": 7, "device": light, "action": "set",
                         "params": {"on": true, "brightness": 40}});
    cbor.send(&command).await?;
    let mut statuses = Vec::new();
    while statuses
        .last()
        .is_none_or(|s| s == "accepted" || s == "sent")
    {
        let m = cbor
            .recv_until(|m| m["type"] == "command_status" && m["req"] == 7, WAIT)
            .await?;
        statuses.push(m["status"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(statuses, ["accepted", "sent", "ok"]);
    json_client
        .recv_until(
            |m| {
                m["type"] == "state"
                    && m["device"] == light.as_str()
                    && m["state"]["brightness"] == 40
            },
            WAIT,
        )
        .await?;

    // Bad frames on CBOR get the same errors as on JSON, and the connection stays.
    let mut trailing = encode(&json!({"type": "ping", "req": "t"}));
    trailing.push(0x00);
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    // Too deep is the protocol's rule, not the parser's: the same answer as on JSON.
    let bad = [
        (Message::text(r#"{"type":"ping","req":"x"}"#), "bad_frame"),
        (Message::binary(vec![0xa2, 0x61, 0x61]), "bad_frame"),
        (Message::binary(trailing), "bad_frame"),
        (Message::binary(encode(&json!([1, 2]))), "bad_frame"),
        (
            Message::binary(encode(&json!({"type": "ping", "deep": deep}))),
            "bad_request",
        ),
    ];
    for (frame, code) in bad {
        let shown = format!("{frame:?}");
        cbor.send_raw(frame).await?;
        let answer = cbor.recv_until(|m| m["type"] == "error", WAIT).await?;
        assert_eq!(answer["code"], code, "{shown}: {answer}");
    }
    let unknown = cbor.request(&json!({"type": "dance", "req": "u"})).await?;
    assert_eq!(unknown["code"], "unknown_type");
    let pong = cbor.request(&json!({"type": "ping", "req": "p"})).await?;
    assert_eq!(pong["type"], "pong");
    env.shutdown().await
}
