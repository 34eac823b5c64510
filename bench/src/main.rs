//! The `iot-bench` binary: runs the benchmark (or its smoke version) and prints the table that
//! BENCHMARKS.md holds.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Parser;
use iot_bench::report::{self, RunInfo};
use iot_bench::{procstat, BridgeMode, Plan, RigOptions, Scenario};

/// Where scripts/bench-peer-build puts the WebSocket-capable Mosquitto.
const PEER_BUILD: &str = ".cache/bench-peer/bin/mosquitto";

/// The bridge against browsers speaking MQTT over WebSockets straight to Mosquitto, side by side.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Seconds-long version with small counts (what CI runs); its timings mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// The WebSocket-capable Mosquitto (default: the one scripts/bench-peer-build made).
    #[arg(long, env = "IOT_BENCH_PEER_MOSQUITTO")]
    peer_mosquitto: Option<PathBuf>,
    /// The bridge binary (default: iot-bridge next to this program).
    #[arg(long)]
    bridge: Option<PathBuf>,
    /// Idle connections in scenario (c), for the bridge and for the peer.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Idle connections for the peer in scenario (c), if not the same (0 skips the peer there).
    #[arg(long)]
    idle_peer_connections: Option<usize>,
    /// Devices in scenario (d).
    #[arg(long)]
    fleet_devices: Option<usize>,
    /// Extra bridge setting under [limits], e.g. `ping_interval_secs = 60` (repeatable), to try
    /// a setting without rebuilding.
    #[arg(long = "bridge-limit", value_name = "KEY = VALUE")]
    bridge_limits: Vec<String>,
    /// One trial at this rate (messages per second in) for (b1), (b2) and (b3) instead of the
    /// max-rate search: to profile the bridge at a known load.
    #[arg(long, value_name = "MSG_PER_SEC")]
    fixed_rate: Option<f64>,
    /// Seconds each fan-out trial publishes for (default 2).
    #[arg(long)]
    trial_secs: Option<f64>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: be one of scenario (c)'s client processes (JSON: what to connect).
    #[arg(long, hide = true, value_name = "JSON")]
    idle_child: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating iot-bench")?;
    let path = me
        .parent()
        .map(|d| d.join(name))
        .context("locating iot-bench's folder")?;
    anyhow::ensure!(
        path.exists(),
        "{} not found: cargo build --release -p {name}",
        path.display()
    );
    Ok(path)
}

fn shell(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(spec) = &cli.idle_child {
        let spec: iot_bench::idle::ChildSpec =
            serde_json::from_str(spec).context("--idle-child")?;
        let me = format!("idle client process for the bridge at {}", spec.bridge);
        iot_bench::raise_open_files();
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        return runtime.block_on(iot_bench::idle::child(spec)).context(me);
    }
    let mut plan = if cli.smoke {
        Plan::smoke()
    } else {
        Plan::full()
    };
    if !cli.only.is_empty() {
        plan.scenarios = cli.only.clone();
    }
    if let Some(n) = cli.idle_connections {
        (plan.idle_connections, plan.idle_peer_connections) = (n, n);
    }
    if let Some(n) = cli.idle_peer_connections {
        plan.idle_peer_connections = n;
    }
    if let Some(rate) = cli.fixed_rate {
        plan.search = false;
        for fan in [&mut plan.b1, &mut plan.b2, &mut plan.b3] {
            fan.rate = rate;
        }
    }
    if let Some(secs) = cli.trial_secs {
        plan.trial_secs = secs;
    }
    if let (Some(n), Some(f)) = (cli.fleet_devices, plan.fleet.as_mut()) {
        f.devices = n;
    }
    let peer = cli
        .peer_mosquitto
        .clone()
        .unwrap_or_else(|| PathBuf::from(PEER_BUILD));
    anyhow::ensure!(
        peer.exists(),
        "no WebSocket-capable Mosquitto at {}: run scripts/bench-peer-build first",
        peer.display()
    );
    let bridge = match cli.bridge.clone() {
        Some(b) => b,
        None => sibling("iot-bridge")?,
    };
    let open_files = iot_bench::raise_open_files();
    let mut notes = Vec::new();
    // Every connection is a descriptor in the server and one in the client process: a machine
    // that allows fewer cannot hold the scenario's count, so measure what it can hold.
    let room = (open_files as usize).saturating_sub(2000);
    plan.idle_per_process = plan.idle_per_process.min(room);
    plan.client_exe = Some(std::env::current_exe().context("finding this program")?);
    if plan.idle_connections > room {
        notes.push(format!(
            "(c) wants {} idle connections, but this machine allows {open_files} open files per process (hard limit, not raisable here): the bridge's are held by {} instances on the one broker (the scale-out model), the peer's limited to {}",
            plan.idle_connections,
            iot_bench::idle::instances(plan.idle_connections, room)?,
            room.min(plan.idle_peer_connections),
        ));
        plan.idle_peer_connections = room.min(plan.idle_peer_connections);
    }
    if let Some(f) = plan.fleet.as_mut().filter(|f| f.devices > room) {
        notes.push(format!(
            "(d) wants {} devices in one process, but this machine allows {open_files} open files per process: measured with {room}",
            f.devices
        ));
        f.devices = room;
    }
    for limit in &cli.bridge_limits {
        notes.push(format!(
            "bridge setting changed for this run: limits.{limit}"
        ));
    }
    for n in &notes {
        eprintln!("iot-bench: {n}");
    }
    let opts = RigOptions {
        mosquitto: peer,
        websockets: true,
        bridge: BridgeMode::Process(bridge),
        max_connections: plan
            .idle_connections
            .min(plan.idle_per_process)
            .max(plan.b3.clients)
            + 1000,
        limits: cli.bridge_limits.clone(),
    };
    let info = RunInfo {
        date: shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: shell("git", &["rev-parse", "--short=10", "HEAD"]),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: procstat::machine(),
        load_before: procstat::load_average(),
        load_after: String::new(),
        notes,
    };
    eprintln!("iot-bench: {} (open files: {open_files})", info.machine);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let results = runtime.block_on(iot_bench::bench(&plan, opts, &mut |line| {
        eprintln!("  {line}")
    }))?;
    let info = RunInfo {
        load_after: procstat::load_average(),
        ..info
    };
    let table = report::render(&info, &results);
    println!("{table}");
    if let Some(out) = &cli.out {
        std::fs::write(out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
