//! Who may see and do what: the ACL file (what each identity reads and controls, told in
//! `welcome`, changed without a restart), revoked certificates, the Origin check, the command
//! rate limit and the audit log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use device_sim::Kind;
use e2e::{audit, E2eError, TestEnv, WsClient};
use serde_json::{json, Value};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(20);

/// The harness's readiness checks (`e2e-*`) read everything; the rest is per test.
const HARNESS_RULE: &str = "[[rule]]\nidentity = \"e2e-*\"\nread = [\"*\"]\n";

fn acl_file(rules: &str) -> Result<(TempDir, PathBuf), E2eError> {
    let dir = tempfile::tempdir().map_err(|e| E2eError::Bridge(format!("temp dir: {e}")))?;
    let path = dir.path().join("acl.toml");
    write_acl(&path, rules)?;
    Ok((dir, path))
}

fn write_acl(path: &PathBuf, rules: &str) -> Result<(), E2eError> {
    std::fs::write(path, format!("{HARNESS_RULE}\n{rules}"))
        .map_err(|e| E2eError::Bridge(format!("writing the ACL: {e}")))
}

fn set(req: &str, device: &str, params: Value) -> Value {
    json!({"type": "command", "req": req, "device": device, "action": "set", "params": params})
}

/// The statuses of one command until its final one.
async fn statuses(client: &mut WsClient, req: &str) -> Result<Vec<String>, E2eError> {
    let mut all = Vec::new();
    loop {
        let m = client.recv_until(|m| m["req"] == req, WAIT).await?;
        if m["type"] == "error" {
            all.push(format!("error:{}", m["code"].as_str().unwrap_or_default()));
            return Ok(all);
        }
        let status = m["status"].as_str().unwrap_or_default().to_owned();
        let last = !matches!(status.as_str(), "accepted" | "sent");
        all.push(status);
        if last {
            return Ok(all);
        }
    }
}

/// Connects as `name` and returns the client with its `welcome`.
async fn connect(env: &TestEnv, name: &str) -> Result<(WsClient, Value), E2eError> {
    let cert = env.client_cert(name)?;
    let mut client = WsClient::connect(
        env.bridge.addr(),
        &cert.cert_pem,
        &cert.key_pem,
        env.pki.ca_pem(),
    )
    .await?;
    let welcome = client.recv(WAIT).await?;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    Ok((client, welcome))
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = list[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_sees_and_does_only_what_the_acl_grants() -> Result<(), E2eError> {
    let (_dir, acl) = acl_file(
        r#"
        [[rule]]
        identity = "reader"
        read = ["*"]
        [[rule]]
        identity = "owner"
        read = ["light-*"]
        control = ["light-*"]
        [[rule]]
        identity = "admin"
        read = ["*"]
        control = ["*"]
        "#,
    )?;
    let env = TestEnv::new()
        .devices(4)
        .kinds(&[Kind::Light, Kind::Plug])
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(move |c| c.security.acl = Some(acl))
        .start()
        .await?;
    let (lights, plugs) = (env.ids_of(Kind::Light), env.ids_of(Kind::Plug));
    let (mut reader, welcome) = connect(&env, "reader").await?;
    assert_eq!(
        welcome["permissions"],
        json!({"read": ["*"], "control": []})
    );
    let (mut owner, welcome) = connect(&env, "owner").await?;
    assert_eq!(
        welcome["permissions"],
        json!({"read": ["light-*"], "control": ["light-*"]})
    );
    let (mut admin, _) = connect(&env, "admin").await?;

    // A reader may see the light but not switch it: forbidden at once, nothing reaches it.
    reader
        .send(&set("r1", &lights[0], json!({"on": true})))
        .await?;
    assert_eq!(statuses(&mut reader, "r1").await?, ["forbidden"]);
    admin
        .send(&set("a1", &lights[0], json!({"on": true})))
        .await?;
    assert_eq!(
        statuses(&mut admin, "a1").await?,
        ["accepted", "sent", "ok"]
    );
    let light = env.device(&lights[0]).expect("part of the fleet");
    assert_eq!(
        light.commands_handled(),
        1,
        "only the admin's command arrived"
    );

    // To the owner, plugs do not exist: not in the snapshot, the stream, the list or history.
    let snapshot = owner.subscribe(&["*"], "s1", WAIT).await?;
    assert_eq!(ids(&snapshot, "devices"), lights);
    for _ in 0..10 {
        let m = owner.recv_until(|m| m["type"] == "telemetry", WAIT).await?;
        assert!(lights.iter().any(|l| m["device"] == l.as_str()), "{m}");
    }
    let list = owner
        .request(&json!({"type": "list", "req": "l1"}), WAIT)
        .await?;
    assert_eq!(ids(&list, "devices"), lights);
    let plug = &plugs[0];
    let history = owner
        .request(
            &json!({"type": "history", "req": "h1", "device": plug}),
            WAIT,
        )
        .await?;
    assert_eq!(history["code"], "unknown_device", "{history}");
    owner.send(&set("o1", plug, json!({"on": true}))).await?;
    assert_eq!(statuses(&mut owner, "o1").await?, ["error:unknown_device"]);
    let exact = owner.subscribe(&[plug.as_str()], "s2", WAIT).await?;
    assert_eq!(exact["devices"], json!([]), "{exact}");
    // What it owns works.
    owner
        .send(&set("o2", &lights[1], json!({"on": true})))
        .await?;
    assert_eq!(
        statuses(&mut owner, "o2").await?,
        ["accepted", "sent", "ok"]
    );
    let history = owner
        .request(
            &json!({"type": "history", "req": "h2", "device": lights[1]}),
            WAIT,
        )
        .await?;
    assert_eq!(history["type"], "history", "{history}");
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowed_rights_apply_at_once_to_a_connected_session() -> Result<(), E2eError> {
    let both =
        "[[rule]]\nidentity = \"owner\"\nread = [\"light-*\", \"plug-*\"]\ncontrol = [\"*\"]\n";
    let (_dir, acl) = acl_file(both)?;
    let path = acl.clone();
    let env = TestEnv::new()
        .devices(4)
        .kinds(&[Kind::Light, Kind::Plug])
        .telemetry_interval(Duration::from_millis(100))
        .bridge_config(move |c| c.security.acl = Some(acl))
        .start()
        .await?;
    let (lights, plugs) = (env.ids_of(Kind::Light), env.ids_of(Kind::Plug));
    let (mut owner, _) = connect(&env, "owner").await?;
    owner.subscribe(&["*"], "s1", WAIT).await?;
    owner
        .recv_until(
            |m| m["type"] == "telemetry" && m["device"] == plugs[0].as_str(),
            WAIT,
        )
        .await?;

    write_acl(
        &path,
        "[[rule]]\nidentity = \"owner\"\nread = [\"light-*\"]\n",
    )?;
    env.bridge.reload();
    let permissions = owner
        .recv_until(|m| m["type"] == "permissions", WAIT)
        .await?;
    assert_eq!(permissions["read"], json!(["light-*"]), "{permissions}");
    assert_eq!(permissions["control"], json!([]), "{permissions}");

    // Everything after the permissions message is within the new rights.
    owner.take_backlog();
    for _ in 0..15 {
        let m = owner.recv_until(|m| m["type"] == "telemetry", WAIT).await?;
        assert!(lights.iter().any(|l| m["device"] == l.as_str()), "{m}");
    }
    let list = owner
        .request(&json!({"type": "list", "req": "l1"}), WAIT)
        .await?;
    assert_eq!(ids(&list, "devices"), lights);
    owner
        .send(&set("c1", &lights[0], json!({"on": true})))
        .await?;
    assert_eq!(statuses(&mut owner, "c1").await?, ["forbidden"]);
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_acl_file_is_picked_up_and_a_broken_one_ignored() -> Result<(), E2eError> {
    let (_dir, acl) = acl_file("[[rule]]\nidentity = \"reader\"\nread = [\"*\"]\n")?;
    let path = acl.clone();
    let env = TestEnv::new()
        .devices(1)
        .kinds(&[Kind::Light])
        .bridge_config(move |c| {
            c.security.acl = Some(acl);
            c.security.reload_poll_secs = 1;
        })
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let (mut reader, _) = connect(&env, "reader").await?;
    reader.send(&set("c1", &light, json!({"on": true}))).await?;
    assert_eq!(statuses(&mut reader, "c1").await?, ["forbidden"]);

    let granted = "[[rule]]\nidentity = \"reader\"\nread = [\"*\"]\ncontrol = [\"light-*\"]\n";
    write_acl(&path, granted)?;
    let permissions = reader
        .recv_until(|m| m["type"] == "permissions", WAIT)
        .await?;
    assert_eq!(permissions["control"], json!(["light-*"]), "{permissions}");
    reader.send(&set("c2", &light, json!({"on": true}))).await?;
    assert_eq!(
        statuses(&mut reader, "c2").await?,
        ["accepted", "sent", "ok"]
    );

    // A file that does not parse leaves the rights as they were.
    std::fs::write(&path, "[[rule]\nidentity = ")
        .map_err(|e| E2eError::Bridge(format!("writing the ACL: {e}")))?;
    let none = reader
        .recv_until(|m| m["type"] == "permissions", Duration::from_secs(3))
        .await;
    assert!(none.as_ref().is_err_and(E2eError::is_timeout), "{none:?}");
    reader
        .send(&set("c3", &light, json!({"on": false})))
        .await?;
    assert_eq!(
        statuses(&mut reader, "c3").await?,
        ["accepted", "sent", "ok"]
    );
    env.shutdown().await
}

/// Lower-case hex of a PEM certificate's serial number.
fn serial_hex(cert_pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .expect("the harness issues valid PEM");
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("a valid certificate");
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_cannot_connect_and_others_still_can() -> Result<(), E2eError> {
    let env = TestEnv::new().devices(1).start().await?;
    assert!(
        env.bridge.config().tls.crl.is_some(),
        "the harness's bridge uses the set's CRL"
    );
    let stolen = env.client_cert("mallory")?;
    let (addr, ca) = (env.bridge.addr(), env.pki.ca_pem().to_owned());
    let before = WsClient::connect(addr, &stolen.cert_pem, &stolen.key_pem, &ca).await?;
    before.close().await?;

    let target = iot_certs::RevokeTarget::Serial(serial_hex(&stolen.cert_pem));
    iot_certs::revoke(env.pki.paths(), target)?;
    env.bridge.reload();
    let started = Instant::now();
    loop {
        match WsClient::connect(addr, &stolen.cert_pem, &stolen.key_pem, &ca).await {
            Err(e) => {
                assert!(!e.is_timeout(), "refused, not left hanging: {e}");
                break;
            }
            Ok(c) => {
                c.close().await?;
                assert!(
                    started.elapsed() < WAIT,
                    "the revoked certificate still gets in"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut alice = env.connect("alice").await?;
    let pong = alice
        .request(&json!({"type": "ping", "req": "p"}), WAIT)
        .await?;
    assert_eq!(pong["type"], "pong");
    let metrics = env.metrics().await?;
    assert!(
        metrics.get(
            "iotbridge_tls_handshake_failures_total",
            &[("reason", "revoked")]
        ) >= 1.0
    );
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_gets_403_and_own_or_no_origin_get_in() -> Result<(), E2eError> {
    use e2e::ws::{self, UpgradeOpts};
    use tokio_tungstenite::tungstenite::Error as WsError;
    let env = TestEnv::new()
        .bridge_config(|c| c.security.allowed_origins = vec!["https://dash.example.com".into()])
        .start()
        .await?;
    let addr = env.bridge.addr();
    let own = format!("https://localhost:{}", addr.port());
    let cert = env.client_cert("alice")?;
    let config = e2e::tls::client_config(env.pki.ca_pem(), Some(&cert))?;
    let cases: [(Option<&str>, u16); 5] = [
        (Some("https://evil.example"), 403),
        (Some("null"), 403),
        (Some(own.as_str()), 101),
        (Some("https://dash.example.com"), 101),
        (None, 101),
    ];
    for (origin, want) in cases {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let opts = UpgradeOpts {
            subprotocol: Some(ws::SUBPROTOCOL),
            headers: &headers,
            ..UpgradeOpts::default()
        };
        let status = match ws::open(addr, config.clone(), &opts).await {
            Ok((socket, response)) => {
                WsClient::from_raw(socket).close().await?;
                response.status().as_u16()
            }
            Err(E2eError::WebSocket(WsError::Http(response))) => response.status().as_u16(),
            Err(e) => return Err(e),
        };
        assert_eq!(status, want, "Origin {origin:?}");
    }
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_rate_limit_are_refused_per_identity() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(1)
        .kinds(&[Kind::Plug])
        .bridge_config(|c| {
            c.limits.command_rate = 0.1;
            c.limits.command_burst = 2;
        })
        .start()
        .await?;
    let plug = env.ids_of(Kind::Plug)[0].clone();
    let mut alice = env.connect("alice").await?;
    let mut alice_again = env.connect("alice").await?;
    let mut bob = env.connect("bob").await?;
    for req in ["a1", "a2"] {
        alice.send(&set(req, &plug, json!({"on": true}))).await?;
        assert_eq!(statuses(&mut alice, req).await?, ["accepted", "sent", "ok"]);
    }
    let refused = alice
        .request(&set("a3", &plug, json!({"on": true})), WAIT)
        .await?;
    assert_eq!(
        (&refused["type"], &refused["code"]),
        (&json!("error"), &json!("rate_limited"))
    );
    // The bucket is the identity's, not the connection's; other identities have their own.
    let refused = alice_again
        .request(&set("a4", &plug, json!({"on": true})), WAIT)
        .await?;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    bob.send(&set("b1", &plug, json!({"on": false}))).await?;
    assert_eq!(statuses(&mut bob, "b1").await?, ["accepted", "sent", "ok"]);
    let metrics = env.metrics().await?;
    assert_eq!(
        metrics.get("iotbridge_commands_rate_limited_total", &[]),
        2.0
    );
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_is_in_the_audit_log_with_who_what_and_outcome() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(1)
        .kinds(&[Kind::Light])
        .start()
        .await?;
    let light = env.ids_of(Kind::Light)[0].clone();
    let mut auditor = env.connect("auditor").await?;
    auditor
        .send(&set("c1", &light, json!({"on": true})))
        .await?;
    let ok = auditor
        .recv_until(|m| m["req"] == "c1" && m["status"] == "ok", WAIT)
        .await?;
    auditor
        .send(&set("c2", &light, json!({"brightness": 500})))
        .await?;
    let rejected = auditor
        .recv_until(|m| m["req"] == "c2" && m["status"] == "rejected", WAIT)
        .await?;

    // The record is written right after the status is queued for the client: allow a moment.
    let started = Instant::now();
    let records = loop {
        let records = audit::records_of("auditor");
        if records.len() >= 2 || started.elapsed() > WAIT {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(records.len(), 2, "{records:?}");
    let by_command = |id: &Value| {
        records
            .iter()
            .find(|r| r.get("command") == id.as_str())
            .unwrap_or_else(|| panic!("no audit record for command {id} in {records:?}"))
    };
    let first = by_command(&ok["id"]);
    assert_eq!(first.get("device"), Some(light.as_str()));
    assert_eq!(first.get("action"), Some("set"));
    assert_eq!(first.get("outcome"), Some("ok"));
    assert_eq!(first.get("params"), Some(r#"{"on":true}"#));
    assert!(
        first
            .get("latency_ms")
            .is_some_and(|l| l.parse::<u64>().is_ok()),
        "{first:?}"
    );
    let second = by_command(&rejected["id"]);
    assert_eq!(second.get("outcome"), Some("rejected"));
    assert!(
        second
            .get("error")
            .is_some_and(|e| e.contains("brightness")),
        "{second:?}"
    );
    env.shutdown().await
}
