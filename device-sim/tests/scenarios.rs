//! The shipped CI scenarios, end to end: a real Mosquitto running the shipped config and ACL, the
//! real bridge, the simulated fleet and the observer connected to the bridge over mutual TLS.
//! Each must pass; a scenario with a deliberately broken expectation must make the `device-sim`
//! binary exit non-zero and say which expectation failed in its JSON report.
//!
//! Needs the `mosquitto` binary on PATH (the harness refuses to skip silently).

use std::path::{Path, PathBuf};
use std::time::Duration;

use device_sim::fault::{BadPayload, Selector};
use device_sim::observer::ObserverOpts;
use device_sim::run::{self, RunOptions, RunReport};
use device_sim::{report, BrokerOpts, DeviceIdentity, Fault, FaultAction, Fleet, Kind, Scenario};
use e2e::{Bridge, Mosquitto, Pki};

/// CI keeps each run short; the shipped files say 20 s for people running them by hand.
const CI_DURATION: Duration = Duration::from_secs(15);

fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scenarios")
        .join(format!("{name}.toml"))
}

/// Broker, bridge and certificates for one test.
struct Stack {
    pki: Pki,
    mosquitto: Mosquitto,
    bridge: Bridge,
}

impl Stack {
    async fn start() -> Stack {
        e2e::init_tracing();
        let pki = Pki::new().expect("certificates");
        let mosquitto = Mosquitto::start(&pki).await.expect("mosquitto");
        let bridge = Bridge::start(&pki, mosquitto.port(), |_| {})
            .await
            .expect("bridge");
        Stack {
            pki,
            mosquitto,
            bridge,
        }
    }

    fn broker(&self) -> BrokerOpts {
        let identity = DeviceIdentity::MintFromCa {
            ca_cert_pem: self.pki.ca_pem().to_owned(),
            ca_key_pem: self.pki.ca_key_pem().to_owned(),
        };
        BrokerOpts::new(
            "localhost",
            self.mosquitto.port(),
            self.pki.ca_pem(),
            identity,
        )
    }

    fn observer(&self) -> ObserverOpts {
        let cert = self
            .pki
            .client("scenario-observer")
            .expect("observer certificate");
        ObserverOpts {
            host: "localhost".into(),
            port: self.bridge.addr().port(),
            server_name: "localhost".into(),
            ca_pem: self.pki.ca_pem().to_owned(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        }
    }

    async fn run(&self, scenario: &Scenario) -> RunReport {
        let opts = RunOptions::new(self.broker(), Some(self.observer()), CI_DURATION);
        run::run(scenario, opts, &mut |_| {})
            .await
            .expect("the run starts")
    }

    async fn shutdown(mut self) {
        let _ = self.bridge.stop().await;
        let _ = self.mosquitto.stop().await;
    }
}

fn assert_passed(report: &RunReport) {
    let summary = report::summary(report);
    println!("{summary}");
    assert!(report.passed, "scenario failed:\n{summary}");
    assert!(!report.expectations.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_home_passes_against_mosquitto_and_the_bridge() {
    let stack = Stack::start().await;
    let scenario = Scenario::from_file(&scenario_path("smart-home")).expect("scenario");
    let report = stack.run(&scenario).await;
    assert_passed(&report);
    assert_eq!(report.devices, 25);
    let observer = report.observer.as_ref().expect("observer totals");
    assert!(observer.commands_sent >= 15, "{observer:?}");
    assert!(observer.telemetry > 200, "{observer:?}");
    assert_eq!(report.faults.len(), 3);
    assert_eq!(
        report
            .faults
            .iter()
            .find(|f| f.name == "wifi dropout")
            .map(|f| f.devices.len()),
        Some(2)
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_network_passes_against_mosquitto_and_the_bridge() {
    let stack = Stack::start().await;
    let scenario = Scenario::from_file(&scenario_path("flaky-network")).expect("scenario");
    let report = stack.run(&scenario).await;
    assert_passed(&report);
    assert_eq!(
        report.faults.len(),
        scenario.faults().len(),
        "every fault fired"
    );
    // Devices that stopped acking or were slow were left out of the command expectation, but
    // the fleet still reads every command it gets.
    assert!(report.fleet.commands_answered > 0);
    stack.shutdown().await;
}

/// The binary, as someone's CI runs it: flags for the broker and the observer, a JSON report,
/// and an expectation no fleet can meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_expectation_fails_the_run() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let shipped = std::fs::read_to_string(scenario_path("smart-home")).expect("smart-home");
    let broken = format!(
        "{shipped}\n[[expect]]\nname = \"answers faster than light\"\ntype = \"devices_visible\"\nwithin = \"1ms\"\n"
    );
    let scenario = dir.path().join("broken.toml");
    std::fs::write(&scenario, broken).expect("write scenario");
    let observer = stack
        .pki
        .client("ci-observer")
        .expect("observer certificate");
    let (cert, key) = (
        dir.path().join("observer.pem"),
        dir.path().join("observer.key"),
    );
    std::fs::write(&cert, &observer.cert_pem).expect("write cert");
    std::fs::write(&key, &observer.key_pem).expect("write key");
    let report_path = dir.path().join("report.json");
    let paths = stack.pki.paths();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
        .arg("run")
        .arg(&scenario)
        .args(["--duration", "8s", "--progress", "lines"])
        .args(["--broker", &format!("localhost:{}", stack.mosquitto.port())])
        .arg("--ca")
        .arg(&paths.ca_cert)
        .arg("--ca-key")
        .arg(&paths.ca_key)
        .args([
            "--bridge",
            &format!("localhost:{}", stack.bridge.addr().port()),
        ])
        .arg("--observer-cert")
        .arg(&cert)
        .arg("--observer-key")
        .arg(&key)
        .arg("--report")
        .arg(&report_path)
        .output()
        .await
        .expect("device-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("FAIL answers faster than light"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAILED: 1 of 5 expectations did not hold"),
        "{stdout}"
    );
    assert!(
        stderr.contains("devices") && stderr.contains("msg/s"),
        "no progress lines: {stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report written"))
            .expect("report is JSON");
    assert_eq!(json["passed"], false);
    let verdicts: Vec<(String, bool)> = json["expectations"]
        .as_array()
        .expect("expectations")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["passed"] == true,
            )
        })
        .collect();
    assert_eq!(verdicts.len(), 5);
    for (name, passed) in &verdicts {
        assert_eq!(
            *passed,
            name != "answers faster than light",
            "{name}: {json}"
        );
    }
    stack.shutdown().await;
}

/// The library route a Rust test takes: load a scenario, start its fleet, fire faults by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fired_by_hand_take_devices_down_and_bring_them_back() {
    let stack = Stack::start().await;
    let scenario = Scenario::from_file(&scenario_path("smart-home")).expect("scenario");
    let fleet = Fleet::start_scenario(stack.broker(), &scenario)
        .await
        .expect("fleet");
    fleet
        .wait_connected(Duration::from_secs(20))
        .await
        .expect("all online");
    assert_eq!(fleet.devices().len(), 25);
    assert_eq!(
        fleet.device("fan-01").map(|d| d.kind().to_string()),
        Some("fan".into())
    );

    let mut outage = Fault::new("plugs down", FaultAction::Disconnect { graceful: false });
    outage.select = Selector {
        kinds: vec!["plug".into()],
        ..Selector::default()
    };
    outage.duration = Some(Duration::from_secs(2));
    let fired = fleet.fire(&outage).await;
    assert_eq!(fired.devices.len(), 5);
    let plugs: Vec<_> = fleet
        .devices()
        .iter()
        .filter(|d| d.kind() == Kind::Plug)
        .collect();
    let waited = tokio::time::Instant::now();
    while plugs.iter().any(|d| d.is_online()) {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "plugs still online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(plugs.iter().all(|d| d.is_disturbed()));
    assert!(fleet
        .devices()
        .iter()
        .filter(|d| d.kind() != Kind::Plug)
        .all(|d| d.is_online()));
    // After `for`, they reconnect by themselves.
    fleet
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("plugs back");
    assert!(plugs.iter().all(|d| !d.is_disturbed()));

    let junk = Fault::new(
        "junk",
        FaultAction::Garbage {
            payload: BadPayload::Garbage,
            messages: 2,
        },
    );
    let before = fleet.stats().published;
    assert_eq!(fleet.fire(&junk).await.devices.len(), 25);
    let waited = tokio::time::Instant::now();
    while fleet.stats().published < before + 50 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "garbage not published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.stop().await;
    stack.shutdown().await;
}

/// A flag it cannot read is a usage mistake like a bad scenario: exit 64, with clap's message;
/// `--help` is no mistake.
#[test]
fn unreadable_flags_exit_64_and_help_exits_0() {
    let sim = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_device-sim"))
            .args(args)
            .output()
            .expect("device-sim runs")
    };
    for args in [
        &["run", "scenario.toml", "--duration", "fast"][..],
        &["fleet", "--no-such-flag"],
        &["launch"],
    ] {
        let out = sim(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
    let help = sim(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
}
