//! The real `iotctl` binary against a real bridge, Mosquitto and simulated devices: list, watch,
//! commands with every exit code a script relies on, history, and certificate mistakes.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use device_sim::Kind;
use e2e::{E2eError, TestEnv};
use iot_certs::DevCertOptions;
use serde_json::{json, Value};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);

/// How to reach one environment's bridge as one user.
struct Ctl {
    url: String,
    certs_dir: PathBuf,
    user: String,
}

impl Ctl {
    /// Issues `user` a certificate into the environment's certificate folder (the layout
    /// `iot-certs` makes), as a person would before pointing `--certs-dir` at it.
    fn new(env: &TestEnv, user: &str) -> Result<Ctl, E2eError> {
        iot_certs::add_clients(&DevCertOptions {
            out_dir: env.pki.dir().to_owned(),
            users: vec![user.to_owned()],
            ..DevCertOptions::default()
        })?;
        Ok(Ctl {
            url: format!("wss://localhost:{}/ws", env.bridge.addr().port()),
            certs_dir: env.pki.dir().to_owned(),
            user: user.to_owned(),
        })
    }

    async fn run(&self, args: &[&str]) -> Run {
        let dir = self.certs_dir.to_string_lossy().into_owned();
        let mut all = vec![
            "--url",
            &self.url,
            "--certs-dir",
            &dir,
            "--user",
            &self.user,
        ];
        all.extend_from_slice(args);
        iotctl(&all, &[]).await
    }
}

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `iotctl` without blocking the test's runtime, which also runs the bridge.
async fn iotctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_iotctl"));
    for var in [
        "IOTCTL_URL",
        "IOTCTL_CERT",
        "IOTCTL_KEY",
        "IOTCTL_CA",
        "IOTCTL_CERTS_DIR",
        "IOTCTL_USER",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied()).kill_on_drop(true);
    let output: Output = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .expect("iotctl finished in time")
        .expect("iotctl started");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `HH:MM:SS ` at the start of a human line.
fn starts_with_clock(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 9
        && b[..8].iter().enumerate().all(|(i, c)| {
            if i == 2 || i == 5 {
                *c == b':'
            } else {
                c.is_ascii_digit()
            }
        })
        && b[8] == b' '
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_and_history() -> Result<(), E2eError> {
    let env = TestEnv::new()
        .devices(4)
        .kinds(&[Kind::Light, Kind::Thermostat])
        .cbor_share(0.5)
        .start()
        .await?;
    let ctl = Ctl::new(&env, "alice")?;
    let ids = env.fleet().ids();
    let light = env.ids_of(Kind::Light)[0].clone();

    // list: a table with a header and every device online; --json for scripts.
    let run = ctl.run(&["list"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut lines = run.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "KIND", "NAME", "ROOM", "PRESENCE"],
        "{run:?}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), ids.len(), "{run:?}");
    for id in &ids {
        let row = rows.iter().find(|r| r.starts_with(id.as_str()));
        let row = row.unwrap_or_else(|| panic!("{id} missing: {run:?}"));
        assert!(row.ends_with("online"), "{row}");
    }
    let run = ctl.run(&["list", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let listed: Value = serde_json::from_str(run.stdout.trim()).expect("list --json is JSON");
    let mut listed_ids: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str())
        .collect();
    listed_ids.sort_unstable();
    let mut want = ids.clone();
    want.sort_unstable();
    assert_eq!(listed_ids, want);

    // watch --json --count: the welcome, the snapshot, then exactly N messages, only the
    // asked fields.
    let run = ctl
        .run(&[
            "watch", &light, "--json", "--count", "3", "--fields", "power",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let msgs = json_lines(&run.stdout);
    assert_eq!(msgs.len(), 5, "{run:?}");
    assert_eq!(msgs[0]["type"], "welcome");
    assert_eq!(msgs[0]["identity"], "alice");
    assert_eq!(msgs[1]["type"], "snapshot");
    assert_eq!(msgs[1]["devices"][0]["id"], light.as_str());
    let mut last_seq = msgs[1]["devices"][0]["seq"].as_u64().unwrap_or_default();
    for m in &msgs[2..] {
        assert_eq!(m["type"], "telemetry", "{m}");
        assert_eq!(m["device"], light.as_str());
        let keys: Vec<&String> = m["data"]
            .as_object()
            .map(|d| d.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["power"], "{m}");
        let seq = m["seq"].as_u64().unwrap_or_default();
        assert_eq!(seq, last_seq + 1, "gap-free: {run:?}");
        last_seq = seq;
    }

    // Human lines: clock, device, sequence number, value with the unit from the meta.
    let run = ctl.run(&["watch", &light, "--count", "2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{run:?}");
    assert!(
        lines[0].contains(&format!("{light} presence=online #")),
        "{run:?}"
    );
    for line in &lines[1..] {
        assert!(starts_with_clock(line), "{line}");
        assert!(line.contains(&format!(" {light} #")), "{line}");
        assert!(line.contains(" W"), "power carries its unit: {line}");
    }

    // --duration ends a quiet watch too.
    let started = Instant::now();
    let run = ctl
        .run(&["watch", "no-such-*", "--duration", "500ms"])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // history: the newest samples, oldest first, reduced to one field.
    let run = ctl
        .run(&[
            "history", &light, "--field", "power", "--limit", "3", "--json",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let samples: Value = serde_json::from_str(run.stdout.trim()).expect("history --json");
    let samples = samples.as_array().cloned().unwrap_or_default();
    assert_eq!(samples.len(), 3, "{run:?}");
    assert!(samples
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(samples
        .iter()
        .all(|s| s["data"].as_object().is_some_and(|d| d.len() == 1)));
    let run = ctl.run(&["history", &light, "--limit", "2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" #") && l.contains("power=")),
        "{run:?}"
    );

    let run = ctl.run(&["history", "nope-1"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("unknown_device"), "{run:?}");
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_exit_with_their_outcome() -> Result<(), E2eError> {
    // alice may do everything, viewer only look; the harness's own identities need to read.
    let acl_dir = tempfile::tempdir().map_err(|e| E2eError::Bridge(e.to_string()))?;
    let acl = acl_dir.path().join("acl.toml");
    write(
        &acl,
        r#"
[[rule]]
identity = "alice"
read = ["*"]
control = ["*"]

[[rule]]
identity = "viewer"
read = ["*"]

[[rule]]
identity = "e2e-*"
read = ["*"]
"#,
    );
    let env = TestEnv::new()
        .devices(2)
        .kinds(&[Kind::Light])
        .bridge_config(move |c| c.security.acl = Some(acl))
        .start()
        .await?;
    let ctl = Ctl::new(&env, "alice")?;
    let lights = env.ids_of(Kind::Light);
    let (light, other) = (&lights[0], &lights[1]);
    let device = env.device(light).expect("the light is part of the fleet");

    // ok: exit 0, every status printed, and the device really changed.
    let run = ctl.run(&["cmd", light, "on=false"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = ctl.run(&["cmd", light, "on=true", "brightness=40"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let statuses: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(statuses.len(), 3, "{run:?}");
    assert_eq!(statuses[0], format!("{light}: accepted"));
    assert_eq!(statuses[1], format!("{light}: sent"));
    assert!(statuses[2].starts_with(&format!("{light}: ok")), "{run:?}");
    assert_eq!(device.state()["on"], true);
    assert_eq!(device.state()["brightness"], 40);

    // rejected: exit 2 and the device's own reason.
    let run = ctl.run(&["cmd", light, "brightness=500"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "{light}: rejected: brightness must be between 0 and 100"
        )),
        "{run:?}"
    );
    assert_eq!(device.state()["brightness"], 40, "nothing changed");

    // --json: one status object per line.
    let run = ctl.run(&["cmd", light, "on=false", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let statuses = json_lines(&run.stdout);
    let names: Vec<&str> = statuses
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(names, ["accepted", "sent", "ok"]);
    assert!(statuses.iter().all(|s| s["device"] == light.as_str()));

    // unknown device: exit 1 with a message naming it, nothing on stdout.
    let run = ctl.run(&["cmd", "nope-1", "on=true"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.contains("unknown_device") && run.stderr.contains("nope-1"),
        "{run:?}"
    );

    // forbidden: exit 5, and the device never hears of it.
    let viewer = Ctl::new(&env, "viewer")?;
    let handled = device.commands_handled();
    let run = viewer.run(&["cmd", light, "on=true"]).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stdout.contains(&format!("{light}: forbidden")),
        "{run:?}"
    );
    assert_eq!(device.commands_handled(), handled);
    assert_eq!(viewer.run(&["list"]).await.code, 0, "viewer may still look");

    // A malformed parameter is refused before connecting.
    let run = ctl.run(&["cmd", light, "brightness"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("key=value"), "{run:?}");

    // offline: exit 3 once the bridge knows the device is gone.
    let gone = env
        .device(other)
        .expect("the other light is part of the fleet");
    gone.stop().await;
    // The bridge learns of it through the broker a moment later; until then the command
    // may still be sent and time out.
    let started = Instant::now();
    let run = loop {
        let run = ctl.run(&["cmd", other, "on=true", "--timeout", "1s"]).await;
        if run.code == 3 || started.elapsed() > WAIT {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains(&format!("{other}: offline")), "{run:?}");
    env.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_mistakes_get_one_clear_line() -> Result<(), E2eError> {
    let dir = tempfile::tempdir().map_err(|e| E2eError::Bridge(e.to_string()))?;
    let missing = dir.path().join("nobody.pem");
    let shown = missing.display().to_string();
    let ca = dir.path().join("ca.pem");
    let args = [
        "--url",
        "wss://localhost:1/ws",
        "--cert",
        &shown,
        "--key",
        &shown,
        "--ca",
        &ca.display().to_string(),
        "list",
    ];
    let run = iotctl(&args, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("cannot read"), "{run:?}");
    assert!(run.stdout.is_empty());

    // Nothing named at all.
    let run = iotctl(&["list"], &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--certs-dir"), "{run:?}");

    // A well-formed certificate from a CA the bridge does not trust, given through the
    // environment variables scripts use.
    let env = TestEnv::new().start().await?;
    let stranger = env.pki.foreign_client("mallory")?;
    let (cert, key) = (dir.path().join("m.pem"), dir.path().join("m.key"));
    write(&cert, &stranger.cert_pem);
    write(&key, &stranger.key_pem);
    write(&ca, env.pki.ca_pem());
    let url = format!("wss://localhost:{}/ws", env.bridge.addr().port());
    let vars = [
        ("IOTCTL_URL", url.as_str()),
        ("IOTCTL_CERT", path_str(&cert)),
        ("IOTCTL_KEY", path_str(&key)),
        ("IOTCTL_CA", path_str(&ca)),
    ];
    let run = iotctl(&["list"], &vars).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("TLS"), "{run:?}");

    // The same variables with a trusted certificate work.
    let alice = env.client_cert("alice")?;
    write(&cert, &alice.cert_pem);
    write(&key, &alice.key_pem);
    let run = iotctl(&["list", "--json"], &vars).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), json!([]).to_string());
    env.shutdown().await
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}
