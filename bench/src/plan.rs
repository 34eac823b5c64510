//! What a run measures ([`Plan`]: the full benchmark or the seconds-long smoke version) and the
//! order it measures in ([`run`]), collecting everything into [`Results`].
//!
//! The bridge and the peer are measured in turns in one run, against the same broker and the
//! same simulated devices. While the peer is measured the bridge is stopped, so that its own
//! subscription costs the peer nothing; latency scenarios alternate in rounds so that a noisy
//! neighbour on the machine hits both sides alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clients::{refuses_anonymous, ClientSet, Side};
use crate::commands::{self, CommandReport};
use crate::devices::Devices;
use crate::fleet::{self, FleetOptions, FleetResult};
use crate::idle::{self, Idle};
use crate::measure::{search, trial, Search, Trial, TrialIds};
use crate::rig::Rig;
use crate::BenchError;

/// The scenarios of the benchmark, by the names the issue gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    A,
    B1,
    B2,
    B3,
    C,
    D,
    E,
}

/// A fan-out measurement: a max-rate search, or (smoke) one trial at a fixed rate.
#[derive(Debug, Clone, Copy)]
pub struct FanOut {
    pub clients: usize,
    /// Where the search starts, or the one rate of a fixed trial (messages per second in).
    pub rate: f64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub scenarios: Vec<Scenario>,
    pub devices: usize,
    /// Scenarios (a) and (e): telemetry rate in, clients, seconds per round, rounds.
    pub latency_rate: f64,
    pub latency_clients: usize,
    pub latency_secs: f64,
    pub rounds: usize,
    pub command_rate: f64,
    /// Scenario (e): seconds per round of commands with no telemetry flowing, before the
    /// loaded ones: the round trip's floor on this host.
    pub quiet_secs: f64,
    pub b1: FanOut,
    pub b2: FanOut,
    pub b3: FanOut,
    /// Search for the highest sustained rate (full run) or run one trial at `rate` (smoke).
    pub search: bool,
    pub trial_secs: f64,
    pub idle_connections: usize,
    pub idle_peer_connections: usize,
    /// Idle connections one process may hold (its open files allow it); more bridge
    /// connections than this run on several bridge instances (see [`idle`]).
    pub idle_per_process: usize,
    /// This program, for the client processes that hold more connections than it may.
    pub client_exe: Option<PathBuf>,
    pub idle_window_secs: f64,
    pub fleet: Option<FleetOptions>,
}

impl Plan {
    /// The benchmark as BENCHMARKS.md reports it (about eight minutes on two cores).
    pub fn full() -> Plan {
        Plan {
            scenarios: vec![
                Scenario::A,
                Scenario::E,
                Scenario::B1,
                Scenario::B2,
                Scenario::B3,
                Scenario::C,
                Scenario::D,
            ],
            devices: 50,
            latency_rate: 200.0,
            latency_clients: 100,
            latency_secs: 6.0,
            rounds: 2,
            command_rate: 100.0,
            quiet_secs: 3.0,
            b1: FanOut {
                clients: 1,
                rate: 2000.0,
            },
            b2: FanOut {
                clients: 100,
                rate: 200.0,
            },
            b3: FanOut {
                clients: 1000,
                rate: 30.0,
            },
            search: true,
            trial_secs: 2.0,
            idle_connections: 50_000,
            // Mosquitto takes about 130 TLS+WebSocket handshakes per second next to the load
            // generator here: 10,000 give its per-connection cost within the time budget.
            idle_peer_connections: 10_000,
            idle_per_process: usize::MAX,
            client_exe: None,
            // Longer than the bridge's ping interval, so the window holds a round of pings.
            idle_window_secs: iot_bridge::config::Limits::default().ping_interval_secs as f64 + 2.0,
            fleet: Some(FleetOptions::full()),
        }
    }

    /// Seconds long, small counts: proves every path delivers everything and answers every
    /// command. Timings are printed but mean nothing at this size.
    pub fn smoke() -> Plan {
        Plan {
            scenarios: vec![
                Scenario::A,
                Scenario::E,
                Scenario::B1,
                Scenario::B2,
                Scenario::B3,
                Scenario::C,
            ],
            devices: 4,
            latency_rate: 50.0,
            latency_clients: 10,
            latency_secs: 1.0,
            rounds: 1,
            command_rate: 20.0,
            quiet_secs: 1.0,
            b1: FanOut {
                clients: 1,
                rate: 200.0,
            },
            b2: FanOut {
                clients: 10,
                rate: 50.0,
            },
            b3: FanOut {
                clients: 30,
                rate: 20.0,
            },
            search: false,
            trial_secs: 1.0,
            idle_connections: 20,
            idle_peer_connections: 20,
            // Two bridge instances and two client processes, so that path is checked too.
            idle_per_process: 10,
            client_exe: None,
            idle_window_secs: 0.5,
            fleet: None,
        }
    }

    pub fn has(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}

/// A figure for the bridge and the same figure for what it is compared with.
#[derive(Debug, Clone)]
pub struct Pair<T> {
    pub bridge: T,
    pub peer: Option<T>,
}

/// Scenario (e) on one side: the command round trips and the telemetry running meanwhile, and
/// the round trips with no telemetry at all.
#[derive(Debug, Clone)]
pub struct Commands {
    pub commands: CommandReport,
    pub telemetry: Trial,
    pub quiet: CommandReport,
}

#[derive(Debug, Default)]
pub struct Results {
    /// Each server refused a client without a certificate (bridge, peer WSS, MQTT listener).
    pub mtls_refusals: Vec<(Side, bool)>,
    pub a: Option<Pair<Trial>>,
    pub e: Option<Pair<Commands>>,
    pub b1: Option<Pair<Search>>,
    pub b2: Option<Pair<Search>>,
    pub b3: Option<Pair<Search>>,
    pub c: Option<Pair<Idle>>,
    pub d: Option<Result<FleetResult, String>>,
    pub elapsed: Duration,
    /// Simulated devices of scenarios a, b, c and e.
    pub devices: usize,
}

fn merge(into: &mut Option<Trial>, t: Trial) {
    match into {
        Some(m) => m.merge(&t),
        None => *into = Some(t),
    }
}

fn merge_commands(into: &mut Option<Commands>, c: Commands) {
    match into {
        Some(m) => {
            m.commands.merge(&c.commands);
            m.quiet.merge(&c.quiet);
            m.telemetry.merge(&c.telemetry);
        }
        None => *into = Some(c),
    }
}

/// Runs `plan` on a started rig; `log` gets a line per step.
pub async fn run(
    plan: &Plan,
    rig: &mut Rig,
    log: &mut dyn FnMut(String),
) -> Result<Results, BenchError> {
    let started = Instant::now();
    let mut results = Results::default();
    let has_peer = rig.broker.wss.is_some();
    let sides: Vec<Side> = if has_peer {
        vec![Side::Bridge, Side::Peer]
    } else {
        vec![Side::Bridge]
    };
    for side in [Side::Bridge, Side::Peer, Side::Direct] {
        if side != Side::Peer || has_peer {
            let refused = refuses_anonymous(rig, side).await?;
            log(format!(
                "mutual TLS: {side:?} refuses a client without a certificate: {refused}"
            ));
            results.mtls_refusals.push((side, refused));
        }
    }
    let devices = Devices::start(rig, plan.devices).await?;
    results.devices = plan.devices;
    log(format!("{} devices connected", devices.ids.len()));
    let mut ids = TrialIds::default();
    let secs = Duration::from_secs_f64;

    // (a) and (e): rounds, alternating sides.
    if plan.has(Scenario::A) || plan.has(Scenario::E) {
        let (mut a, mut e) = ([None, None], [None, None]);
        for round in 0..plan.rounds {
            for (k, &side) in sides.iter().enumerate() {
                side_up(rig, side).await?;
                let clients = ClientSet::connect(rig, side, plan.latency_clients).await?;
                if plan.has(Scenario::A) {
                    let t = trial(
                        rig,
                        &devices,
                        &clients,
                        &mut ids,
                        plan.latency_rate,
                        secs(plan.latency_secs),
                    )
                    .await?;
                    log(format!("(a) round {round} {side:?}: {}", describe(&t)));
                    merge(&mut a[k], t);
                }
                if plan.has(Scenario::E) {
                    let spread = Duration::from_secs_f64(1.0 / plan.latency_rate);
                    let quiet = commands::run(
                        rig,
                        side,
                        &devices.ids,
                        plan.command_rate,
                        spread,
                        secs(plan.quiet_secs),
                    )
                    .await?;
                    log(format!(
                        "(e) round {round} {side:?}, no telemetry: {}",
                        quiet.describe()
                    ));
                    let (t, c) = tokio::join!(
                        trial(
                            rig,
                            &devices,
                            &clients,
                            &mut ids,
                            plan.latency_rate,
                            secs(plan.latency_secs)
                        ),
                        commands::run(
                            rig,
                            side,
                            &devices.ids,
                            plan.command_rate,
                            spread,
                            secs(plan.latency_secs)
                        ),
                    );
                    let (t, c) = (t?, c?);
                    log(format!(
                        "(e) round {round} {side:?}: {}; telemetry {}",
                        c.describe(),
                        describe(&t)
                    ));
                    merge_commands(
                        &mut e[k],
                        Commands {
                            commands: c,
                            telemetry: t,
                            quiet,
                        },
                    );
                }
                clients.close().await;
            }
        }
        let [a0, a1] = a;
        results.a = a0.map(|bridge| Pair { bridge, peer: a1 });
        let [e0, e1] = e;
        results.e = e0.map(|bridge| Pair { bridge, peer: e1 });
    }

    // (b1), (b2), (b3): the bridge's searches, then the other side's.
    let fan_outs = [
        (Scenario::B1, plan.b1, Side::Direct),
        (Scenario::B2, plan.b2, Side::Peer),
        (Scenario::B3, plan.b3, Side::Peer),
    ];
    let mut found: [Vec<Search>; 3] = Default::default();
    for (round_side, bridge_side) in [(Side::Bridge, true), (Side::Peer, false)] {
        for (i, (scenario, fan, other)) in fan_outs.iter().enumerate() {
            let side = if bridge_side { Side::Bridge } else { *other };
            if !plan.has(*scenario) || (side == Side::Peer && !has_peer) {
                continue;
            }
            side_up(rig, round_side).await?;
            let clients = ClientSet::connect(rig, side, fan.clients).await?;
            log(format!(
                "({scenario:?}) {side:?}: {} clients connected",
                fan.clients
            ));
            let mut say = |t: &Trial| log(format!("({scenario:?}) {side:?}: {}", describe(t)));
            let s = if plan.search {
                search(
                    rig,
                    &devices,
                    &clients,
                    &mut ids,
                    fan.rate,
                    secs(plan.trial_secs),
                    &mut say,
                )
                .await?
            } else {
                let t = trial(
                    rig,
                    &devices,
                    &clients,
                    &mut ids,
                    fan.rate,
                    secs(plan.trial_secs),
                )
                .await?;
                say(&t);
                let ok = t.sustained();
                Search {
                    tried: vec![(fan.rate, ok)],
                    best: Some(t),
                    one_trial: true,
                }
            };
            found[i].push(s);
            clients.close().await;
        }
    }
    let [f1, f2, f3] = found;
    let pair = |mut v: Vec<Search>| {
        (!v.is_empty()).then(|| {
            let bridge = v.remove(0);
            Pair {
                bridge,
                peer: v.pop(),
            }
        })
    };
    (results.b1, results.b2, results.b3) = (pair(f1), pair(f2), pair(f3));

    // (c): a fresh bridge for a clean memory baseline, then the peer.
    if plan.has(Scenario::C) {
        rig.restart_bridge().await?;
        let window = secs(plan.idle_window_secs);
        let bridge = idle::run(
            rig,
            Side::Bridge,
            plan.idle_connections,
            plan.idle_per_process,
            plan.client_exe.as_deref(),
            window,
        )
        .await?;
        log(format!("(c) Bridge: {}", describe_idle(&bridge)));
        let peer = if has_peer && plan.idle_peer_connections > 0 {
            rig.bridge_down().await;
            let p = idle::run(
                rig,
                Side::Peer,
                plan.idle_peer_connections,
                plan.idle_per_process,
                None,
                window,
            )
            .await?;
            log(format!("(c) Peer: {}", describe_idle(&p)));
            Some(p)
        } else {
            None
        };
        results.c = Some(Pair { bridge, peer });
    }
    devices.stop();

    // (d): the device simulator, against the same broker.
    if let (true, Some(opts)) = (plan.has(Scenario::D), &plan.fleet) {
        let r = fleet::run(rig, opts, &mut *log).await;
        if let Err(e) = &r {
            log(format!("(d) not measured: {e}"));
        }
        results.d = Some(r.map_err(|e| e.to_string()));
    }
    rig.bridge_up().await?;
    results.elapsed = started.elapsed();
    Ok(results)
}

async fn side_up(rig: &mut Rig, side: Side) -> Result<(), BenchError> {
    match side {
        Side::Bridge => rig.bridge_up().await,
        Side::Peer | Side::Direct => {
            rig.bridge_down().await;
            Ok(())
        }
    }
}

/// One log line for a trial.
pub fn describe(t: &Trial) -> String {
    let ms = |q: f64| t.p(q).as_secs_f64() * 1e3;
    format!(
        "{:.0} msg/s x {} clients: delivered {}/{} (fewest {}), p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, bridge {} / broker {} / load generator {} us per delivery, machine {} busy; {}",
        t.rate,
        t.clients,
        t.delivered,
        t.expected,
        t.fewest,
        ms(0.5),
        ms(0.99),
        t.latency.max() as f64 / 1e6,
        t.us_per_delivery(t.bridge_cpu).map_or("-".into(), |v| format!("{v:.2}")),
        t.us_per_delivery(t.broker_cpu).map_or("-".into(), |v| format!("{v:.2}")),
        t.us_per_delivery(t.bench_cpu).map_or("-".into(), |v| format!("{v:.2}")),
        t.machine_busy.map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
        t.verdict()
    )
}

fn describe_idle(i: &Idle) -> String {
    format!(
        "{}/{} held by {} process(es), connected in {:.1} s, {} per bare connection, {} per subscribed connection, idle CPU {}",
        i.held,
        i.wanted,
        i.instances,
        i.connect_time.as_secs_f64(),
        i.bare_bytes_per_connection().map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0)),
        i.bytes_per_connection()
            .map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0)),
        i.cpu_share()
            .map_or("-".into(), |c| format!("{:.2}% of a core", c * 100.0)),
    )
}
