//! The benchmark's smoke version, as CI runs it: every scenario at small counts, for seconds.
//! It checks counts only (every message delivered to every client, every command answered,
//! every idle connection held, mutual TLS refused without a certificate), never timings.
//!
//! The bridge runs in this process; the broker is the WebSocket-capable Mosquitto built by
//! scripts/bench-peer-build when it is there (then the peer is checked too), else Debian's
//! `mosquitto` (bridge and plain MQTT paths only). Set IOT_BENCH_REQUIRE_PEER=1 to fail
//! instead of skipping the peer.

use std::path::{Path, PathBuf};

use iot_bench::clients::Side;
use iot_bench::measure::Search;
use iot_bench::report::{self, RunInfo};
use iot_bench::{BridgeMode, Plan, RigOptions};

fn peer_build() -> Option<PathBuf> {
    let path = std::env::var_os("IOT_BENCH_PEER_MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/bench-peer/bin/mosquitto")
        });
    path.exists().then_some(path)
}

fn debian_mosquitto() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.exists())
        .expect("mosquitto is installed (scripts/test installs it)")
}

fn assert_all_delivered(what: &str, s: &Search) {
    let t = s
        .best
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no trial"));
    assert!(t.expected > 0, "{what}: nothing was sent");
    assert_eq!(
        t.delivered, t.expected,
        "{what}: every client gets every message"
    );
    assert_eq!(
        t.fewest * t.clients as u64,
        t.expected,
        "{what}: no client is short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_and_every_command_answered() {
    let peer = peer_build();
    if peer.is_none() {
        assert!(
            std::env::var_os("IOT_BENCH_REQUIRE_PEER").is_none(),
            "IOT_BENCH_REQUIRE_PEER is set but there is no peer build: run scripts/bench-peer-build"
        );
        eprintln!("no WebSocket-capable Mosquitto (scripts/bench-peer-build): checking the bridge and plain MQTT paths only");
    }
    let opts = RigOptions {
        websockets: peer.is_some(),
        mosquitto: peer.unwrap_or_else(debian_mosquitto),
        bridge: BridgeMode::InProcess,
        max_connections: 1000,
        limits: Vec::new(),
    };
    let has_peer = opts.websockets;
    let plan = Plan {
        client_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_iot-bench"))),
        ..Plan::smoke()
    };
    let r = iot_bench::bench(&plan, opts, &mut |line| eprintln!("{line}"))
        .await
        .expect("the smoke run completes");

    let expected_sides = if has_peer { 3 } else { 2 };
    assert_eq!(r.mtls_refusals.len(), expected_sides);
    for (side, refused) in &r.mtls_refusals {
        assert!(
            refused,
            "{side:?} must refuse a client without a certificate"
        );
    }

    let a = r.a.as_ref().expect("(a) ran");
    let per_round = (plan.latency_rate * plan.latency_secs) as u64 * plan.latency_clients as u64;
    assert_eq!(a.bridge.expected, per_round * plan.rounds as u64);
    assert_eq!(
        a.bridge.delivered, a.bridge.expected,
        "(a) bridge delivers everything"
    );
    assert_eq!(a.peer.is_some(), has_peer);
    if let Some(p) = &a.peer {
        assert_eq!(p.delivered, p.expected, "(a) peer delivers everything");
        assert_eq!(p.expected, a.bridge.expected);
    }

    let e = r.e.as_ref().expect("(e) ran");
    for (side, c) in
        std::iter::once(("bridge", &e.bridge)).chain(e.peer.as_ref().map(|p| ("peer", p)))
    {
        let sent = (plan.command_rate * plan.latency_secs) as u64 * plan.rounds as u64;
        assert_eq!(c.commands.sent, sent, "(e) {side}");
        assert_eq!(c.commands.ok, sent, "(e) {side}: every command answered ok");
        assert_eq!(c.commands.failed, 0, "(e) {side}");
        let quiet = (plan.command_rate * plan.quiet_secs) as u64 * plan.rounds as u64;
        assert_eq!(
            (c.quiet.sent, c.quiet.ok, c.quiet.failed),
            (quiet, quiet, 0),
            "(e) {side}: every command with no telemetry answered ok"
        );
        let legs = &c.commands.legs;
        assert_eq!(
            (legs.to_device.len(), legs.from_device.len()),
            (sent, sent),
            "(e) {side}: every answer carried the device's stamp, so every round trip splits"
        );
        // Each leg crosses processes over TLS: a stamp taken anywhere but at the device would
        // leave one leg next to nothing.
        let p50 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.5);
        assert!(
            p50(&legs.to_device) >= 10_000 && p50(&legs.from_device) >= 10_000,
            "(e) {side}: legs p50 {} / {} ns",
            p50(&legs.to_device),
            p50(&legs.from_device)
        );
        assert_eq!(
            c.telemetry.delivered, c.telemetry.expected,
            "(e) {side}: telemetry meanwhile"
        );
    }

    for (name, pair) in [("b1", &r.b1), ("b2", &r.b2), ("b3", &r.b3)] {
        let pair = pair.as_ref().unwrap_or_else(|| panic!("({name}) ran"));
        assert_all_delivered(&format!("({name}) bridge"), &pair.bridge);
        // b1 compares with the plain MQTT subscriber, which needs no WebSocket listener.
        let other = pair.peer.as_ref();
        assert_eq!(
            other.is_some(),
            has_peer || name == "b1",
            "({name}) other side"
        );
        if let Some(p) = other {
            assert_all_delivered(&format!("({name}) other side"), p);
        }
    }

    let c = r.c.as_ref().expect("(c) ran");
    assert_eq!(c.bridge.side, Side::Bridge);
    assert_eq!(
        c.bridge.held, plan.idle_connections,
        "(c) every idle bridge connection held"
    );
    assert_eq!(
        c.bridge.instances,
        plan.idle_connections.div_ceil(plan.idle_per_process),
        "(c) more connections than one process holds are spread over bridge instances"
    );
    if let Some(p) = &c.peer {
        assert_eq!(
            p.held, plan.idle_peer_connections,
            "(c) every idle peer connection held"
        );
    }

    // The report renders every scenario that ran.
    let info = RunInfo {
        date: "today".into(),
        commit: "test".into(),
        command: "cargo test -p iot-bench".into(),
        machine: iot_bench::procstat::machine(),
        load_before: String::new(),
        load_after: String::new(),
        notes: Vec::new(),
    };
    let table = report::render(&info, &r);
    for id in ["| a |", "| b1 |", "| b2 |", "| b3 |", "| c |", "| e |"] {
        assert!(table.contains(id), "report has {id}:\n{table}");
    }
    // One trial per fan-out is not a max-rate search: the report must not claim a maximum or
    // judge a target by it, whether or not the trial was sustained.
    assert!(
        !table.contains("max sustained"),
        "smoke report claims a maximum:\n{table}"
    );
    assert_eq!(
        table.matches("(fixed rate, not a search)").count(),
        3,
        "b1, b2 and b3 each report their one trial:\n{table}"
    );
    for row in table
        .lines()
        .filter(|l| l.contains("(fixed rate, not a search)"))
    {
        assert!(
            row.ends_with("|  |"),
            "a one-trial row judges no target: {row}"
        );
    }
}
