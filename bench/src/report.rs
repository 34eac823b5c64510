//! The results table: for every scenario the bridge's figure, the peer's, their ratio, the
//! target and whether it is met, plus the machine and run it came from (Markdown).

use std::fmt::Write as _;
use std::time::Duration;

use crate::clients::Side;
use crate::commands::CommandReport;
use crate::fleet::FleetResult;
use crate::idle::Idle;
use crate::measure::{Search, Trial};
use crate::plan::{Commands, Pair, Results};
use crate::recorder::quantile as q;

/// Targets of scenarios (c) and (d), in bytes (KB = 1000 bytes: the stricter reading).
const IDLE_BYTES: f64 = 20_000.0;
const DEVICE_BYTES: f64 = 32_000.0;
/// "Near zero" idle CPU: at most this share of one core.
const IDLE_CPU: f64 = 0.01;

/// Where and when a run happened.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub date: String,
    pub commit: String,
    pub command: String,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    /// Where this run had to differ from the scenarios as written, and why.
    pub notes: Vec<String>,
}

struct Row {
    id: &'static str,
    measure: String,
    bridge: String,
    peer: String,
    ratio: String,
    target: &'static str,
    met: Option<bool>,
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn ratio(b: f64, p: f64) -> String {
    if p > 0.0 {
        format!("{:.2}x", b / p)
    } else {
        "-".into()
    }
}

fn count(v: f64) -> String {
    match v {
        v if v >= 10_000.0 => format!("{:.0}k", v / 1000.0),
        v if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        v => format!("{v:.0}"),
    }
}

/// Server CPU per delivered message: bridge + broker on the bridge side, broker on the peer's.
fn cpu(t: &Trial, side: Side) -> Option<f64> {
    match side {
        Side::Bridge => Some(t.us_per_delivery(t.bridge_cpu)? + t.us_per_delivery(t.broker_cpu)?),
        Side::Peer | Side::Direct => t.us_per_delivery(t.broker_cpu),
    }
}

fn cpu_text(t: &Trial, side: Side) -> String {
    match (cpu(t, side), side) {
        (Some(total), Side::Bridge) => format!(
            "{total:.2} us ({:.2} bridge + {:.2} broker)",
            t.us_per_delivery(t.bridge_cpu).unwrap_or(0.0),
            t.us_per_delivery(t.broker_cpu).unwrap_or(0.0)
        ),
        (Some(total), _) => format!("{total:.2} us"),
        (None, _) => "-".into(),
    }
}

fn cpu_row(id: &'static str, pair: &Pair<Trial>, peer_side: Side) -> Row {
    let b = &pair.bridge;
    let p = pair.peer.as_ref();
    Row {
        id,
        measure: "server CPU per delivered message".into(),
        bridge: cpu_text(b, Side::Bridge),
        peer: p.map_or("-".into(), |p| cpu_text(p, peer_side)),
        ratio: match (cpu(b, Side::Bridge), p.and_then(|p| cpu(p, peer_side))) {
            (Some(b), Some(p)) => ratio(b, p),
            _ => "-".into(),
        },
        target: "(reported)",
        met: None,
    }
}

/// Where the machine's time went: the load generator's CPU per delivery and how busy the
/// machine was (neighbours included), for reading a limit that is not the server's.
fn machine_row(id: &'static str, pair: &Pair<Trial>) -> Row {
    let text = |t: &Trial| {
        format!(
            "{} us, machine {} busy",
            t.us_per_delivery(t.bench_cpu)
                .map_or("-".into(), |v| format!("{v:.2}")),
            t.machine_busy
                .map_or("-".into(), |b| format!("{:.0}%", b * 100.0))
        )
    };
    Row {
        id,
        measure: "load generator CPU per delivery; machine busy".into(),
        bridge: text(&pair.bridge),
        peer: pair.peer.as_ref().map_or("-".into(), text),
        ratio: String::new(),
        target: "(reported)",
        met: None,
    }
}

fn latency_rows(rows: &mut Vec<Row>, a: &Pair<Trial>) {
    let (b, p) = (&a.bridge, a.peer.as_ref());
    let pick = |q: f64| (b.p(q), p.map(|p| p.p(q)));
    let (b50, p50) = pick(0.5);
    let (b99, p99) = pick(0.99);
    let r = |b: Duration, p: Option<Duration>| {
        p.map_or("-".into(), |p| ratio(b.as_secs_f64(), p.as_secs_f64()))
    };
    rows.push(Row {
        id: "a",
        measure: format!("p50 latency, {:.0} msg/s in, {} clients", b.rate, b.clients),
        bridge: ms(b50),
        peer: p50.map_or("-".into(), ms),
        ratio: r(b50, p50),
        target: "bridge <= peer + 0.3 ms",
        met: p50.map(|p| b50 <= p + Duration::from_micros(300)),
    });
    rows.push(Row {
        id: "a",
        measure: "p99 latency".into(),
        bridge: ms(b99),
        peer: p99.map_or("-".into(), ms),
        ratio: r(b99, p99),
        target: "bridge <= peer",
        met: p99.map(|p| b99 <= p),
    });
    let (b999, p999) = pick(0.999);
    rows.push(Row {
        id: "a",
        measure: "p99.9 / max latency".into(),
        bridge: format!(
            "{} / {}",
            ms(b999),
            ms(Duration::from_nanos(b.latency.max()))
        ),
        peer: p.map_or("-".into(), |p| {
            format!(
                "{} / {}",
                ms(p999.unwrap_or_default()),
                ms(Duration::from_nanos(p.latency.max()))
            )
        }),
        ratio: r(b999, p999),
        target: "(reported)",
        met: None,
    });
    rows.push(Row {
        id: "a",
        measure: "delivered".into(),
        bridge: format!("{}/{}", b.delivered, b.expected),
        peer: p.map_or("-".into(), |p| format!("{}/{}", p.delivered, p.expected)),
        ratio: String::new(),
        target: "all",
        met: Some(b.delivered == b.expected && p.is_none_or(|p| p.delivered == p.expected)),
    });
    rows.push(cpu_row("a", a, Side::Peer));
    rows.push(machine_row("a", a));
}

fn best_rate(s: &Search) -> f64 {
    s.best.as_ref().map_or(0.0, |t| t.rate)
}

fn best_deliveries(s: &Search) -> f64 {
    s.best.as_ref().map_or(0.0, Trial::deliveries_per_sec)
}

fn fan_out_rows(
    rows: &mut Vec<Row>,
    id: &'static str,
    pair: &Pair<Search>,
    peer_side: Side,
    b2_bridge: Option<f64>,
) {
    let (b, p) = (&pair.bridge, pair.peer.as_ref());
    let clients = b.best.as_ref().map_or(0, |t| t.clients);
    // One trial at a fixed rate is not a maximum: say what it did, and judge no target by it.
    let one_trial = b.one_trial || p.is_some_and(|p| p.one_trial);
    let (measure, bv, pv, target, met) = match (id, &b.best) {
        (_, Some(t)) if one_trial => (
            format!(
                "{} in one trial at {:.0} msg/s ({}), {clients} clients",
                if id == "b1" { "msg/s" } else { "deliveries/s" },
                t.rate,
                t.verdict()
            ),
            best_deliveries(b),
            p.map(best_deliveries),
            "(fixed rate, not a search)",
            None,
        ),
        ("b1", _) => (
            "max sustained msg/s to 1 client (peer: plain MQTT/TLS subscriber)".to_string(),
            best_rate(b),
            p.map(best_rate),
            ">= 0.9x plain subscriber",
            p.map(|p| best_rate(b) >= 0.9 * best_rate(p)),
        ),
        ("b2", _) => (
            format!("max sustained deliveries/s, {clients} clients"),
            best_deliveries(b),
            p.map(best_deliveries),
            ">= 3x peer",
            p.map(|p| best_deliveries(b) >= 3.0 * best_deliveries(p)),
        ),
        _ => (
            format!("max sustained deliveries/s, {clients} clients"),
            best_deliveries(b),
            p.map(best_deliveries),
            ">= 3x peer and >= 0.75x bridge's b2",
            p.map(|p| {
                best_deliveries(b) >= 3.0 * best_deliveries(p)
                    && b2_bridge.is_none_or(|b2| best_deliveries(b) >= 0.75 * b2)
            }),
        ),
    };
    rows.push(Row {
        id,
        measure,
        bridge: count(bv),
        peer: pv.map_or("-".into(), count),
        ratio: pv.map_or("-".into(), |p| ratio(bv, p)),
        target,
        met,
    });
    if let Some(bt) = &b.best {
        let pair = Pair {
            bridge: bt.clone(),
            peer: p.and_then(|p| p.best.clone()),
        };
        let mut row = cpu_row(id, &pair, peer_side);
        row.measure = "server CPU per delivery at that rate".into();
        rows.push(row);
        rows.push(machine_row(id, &pair));
    }
}

fn kb(bytes: Option<f64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1} KB", b / 1000.0))
}

fn idle_rows(rows: &mut Vec<Row>, c: &Pair<Idle>, devices: usize) {
    let (b, p) = (&c.bridge, c.peer.as_ref());
    rows.push(Row {
        id: "c",
        measure: "idle mTLS WebSocket connections held".into(),
        bridge: match b.instances {
            1 => format!("{}/{}", b.held, b.wanted),
            n => format!("{}/{} in {n} bridge instances", b.held, b.wanted),
        },
        peer: p.map_or("-".into(), |p| format!("{}/{}", p.held, p.wanted)),
        ratio: String::new(),
        target: "50,000",
        met: Some(b.held >= 50_000),
    });
    let (bb, pb) = (
        b.bytes_per_connection(),
        p.and_then(Idle::bytes_per_connection),
    );
    rows.push(Row {
        id: "c",
        measure: format!(
            "server memory per idle connection subscribed to all {} devices",
            devices
        ),
        bridge: kb(bb),
        peer: kb(pb),
        ratio: match (bb, pb) {
            (Some(b), Some(p)) => ratio(b, p),
            _ => "-".into(),
        },
        target: "<= 20 KB",
        met: bb.map(|b| b <= IDLE_BYTES),
    });
    if let Some(bare) = b.bare_bytes_per_connection() {
        rows.push(Row {
            id: "c",
            measure: "of which the bare session, before subscribing".into(),
            bridge: kb(Some(bare)),
            peer: "-".into(),
            ratio: String::new(),
            target: "(reported)",
            met: None,
        });
    }
    let share = |i: &Idle| {
        i.cpu_share()
            .map_or("-".into(), |s| format!("{:.2}% of a core", s * 100.0))
    };
    rows.push(Row {
        id: "c",
        measure: format!(
            "server CPU while idle ({:.0} s window, pings included)",
            b.window.as_secs_f64()
        ),
        bridge: share(b),
        peer: p.map_or("-".into(), share),
        ratio: String::new(),
        target: "near zero (<= 1%)",
        met: b.cpu_share().map(|s| s <= IDLE_CPU),
    });
    // The two sides hold different counts (the peer is one process), so compare per connection.
    let per_10k = |i: &Idle| Some(i.cpu_share()? * 1e4 / i.held.max(1) as f64);
    let (bc, pc) = (per_10k(b), p.and_then(per_10k));
    let text = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.2}% of a core", s * 100.0));
    rows.push(Row {
        id: "c",
        measure: "the same per 10,000 connections (the peer's MQTT clients send no keepalive)"
            .into(),
        bridge: text(bc),
        peer: text(pc),
        ratio: match (bc, pc) {
            (Some(b), Some(p)) => ratio(b, p),
            _ => "-".into(),
        },
        target: "(reported)",
        met: None,
    });
}

fn fleet_rows(rows: &mut Vec<Row>, d: &Result<FleetResult, String>) {
    match d {
        Ok(f) => {
            rows.push(Row {
                id: "d",
                measure: format!(
                    "devices online in one device-sim process ({:.0} telemetry msg/s seen)",
                    f.telemetry_rate
                ),
                bridge: format!("{}/{}", f.online, f.wanted),
                peer: "-".into(),
                ratio: String::new(),
                target: "50,000",
                met: Some(f.online >= 50_000),
            });
            rows.push(Row {
                id: "d",
                measure: format!(
                    "device-sim memory per device (CPU {:.1}% of a core)",
                    f.cpu_share * 100.0
                ),
                bridge: kb(Some(f.bytes_per_device())),
                peer: "-".into(),
                ratio: String::new(),
                target: "<= 32 KB",
                met: Some(f.bytes_per_device() <= DEVICE_BYTES),
            });
        }
        Err(e) => rows.push(Row {
            id: "d",
            measure: format!("not measured: {e}"),
            bridge: "-".into(),
            peer: "-".into(),
            ratio: String::new(),
            target: "50,000, <= 32 KB each",
            met: Some(false),
        }),
    }
}

fn command_rows(rows: &mut Vec<Row>, e: &Pair<Commands>) {
    let (b, p) = (&e.bridge.commands, e.peer.as_ref().map(|p| &p.commands));
    let (b50, b99) = (q(&b.latency, 0.5), q(&b.latency, 0.99));
    rows.push(Row {
        id: "e",
        measure: "command round trip p50, under (a)'s load".into(),
        bridge: ms(b50),
        peer: p.map_or("-".into(), |p| ms(q(&p.latency, 0.5))),
        ratio: p.map_or("-".into(), |p| {
            ratio(b50.as_secs_f64(), q(&p.latency, 0.5).as_secs_f64())
        }),
        target: "<= 1 ms",
        met: Some(b50 <= Duration::from_millis(1)),
    });
    rows.push(Row {
        id: "e",
        measure: "command round trip p99".into(),
        bridge: ms(b99),
        peer: p.map_or("-".into(), |p| ms(q(&p.latency, 0.99))),
        ratio: p.map_or("-".into(), |p| {
            ratio(b99.as_secs_f64(), q(&p.latency, 0.99).as_secs_f64())
        }),
        target: "<= 3 ms",
        met: Some(b99 <= Duration::from_millis(3)),
    });
    let legs = |c: &CommandReport| {
        let (to, back) = (&c.legs.to_device, &c.legs.from_device);
        format!(
            "{} / {} (p99 {} / {})",
            ms(q(to, 0.5)),
            ms(q(back, 0.5)),
            ms(q(to, 0.99)),
            ms(q(back, 0.99))
        )
    };
    rows.push(Row {
        id: "e",
        measure: "p50 to the device / back to the client".into(),
        bridge: legs(b),
        peer: p.map_or("-".into(), legs),
        ratio: String::new(),
        target: "(reported)",
        met: None,
    });
    let (bq, pq) = (&e.bridge.quiet, e.peer.as_ref().map(|p| &p.quiet));
    let floor = |c: &CommandReport| {
        format!(
            "{} / {} ({}/{} ok)",
            ms(q(&c.latency, 0.5)),
            ms(q(&c.latency, 0.99)),
            c.ok,
            c.sent
        )
    };
    rows.push(Row {
        id: "e",
        measure: "round trip p50 / p99 with no telemetry flowing (the host's floor)".into(),
        bridge: floor(bq),
        peer: pq.map_or("-".into(), floor),
        ratio: pq.map_or("-".into(), |p| {
            ratio(
                q(&bq.latency, 0.5).as_secs_f64(),
                q(&p.latency, 0.5).as_secs_f64(),
            )
        }),
        target: "(reported)",
        met: None,
    });
    let answered = |c: &CommandReport| format!("{}/{} ok", c.ok, c.sent);
    rows.push(Row {
        id: "e",
        measure: "commands answered ok".into(),
        bridge: answered(b),
        peer: p.map_or("-".into(), answered),
        ratio: String::new(),
        target: "nothing lost",
        met: Some(b.ok == b.sent && b.failed == 0),
    });
    let t = &e.bridge.telemetry;
    rows.push(Row {
        id: "e",
        measure: "telemetry meanwhile: p99 latency, delivered".into(),
        bridge: format!("{}, {}/{}", ms(t.p(0.99)), t.delivered, t.expected),
        peer: e.peer.as_ref().map_or("-".into(), |p| {
            format!(
                "{}, {}/{}",
                ms(p.telemetry.p(0.99)),
                p.telemetry.delivered,
                p.telemetry.expected
            )
        }),
        ratio: String::new(),
        target: "(reported)",
        met: None,
    });
}

/// The whole report: run description, table, and the log of what was measured.
pub fn render(info: &RunInfo, r: &Results) -> String {
    let mut rows = Vec::new();
    if let Some(a) = &r.a {
        latency_rows(&mut rows, a);
    }
    let b2_bridge = r.b2.as_ref().map(|p| best_deliveries(&p.bridge));
    for (id, pair, side) in [
        ("b1", &r.b1, Side::Direct),
        ("b2", &r.b2, Side::Peer),
        ("b3", &r.b3, Side::Peer),
    ] {
        if let Some(pair) = pair {
            fan_out_rows(&mut rows, id, pair, side, b2_bridge);
        }
    }
    if let Some(c) = &r.c {
        idle_rows(&mut rows, c, r.devices);
    }
    if let Some(d) = &r.d {
        fleet_rows(&mut rows, d);
    }
    if let Some(e) = &r.e {
        command_rows(&mut rows, e);
    }

    let mut out = String::new();
    let _ = writeln!(out, "- Date: {}; commit `{}`", info.date, info.commit);
    let _ = writeln!(out, "- Command: `{}`", info.command);
    let _ = writeln!(out, "- Machine: {}", info.machine);
    let _ = writeln!(
        out,
        "- Load average before / after: {} / {}; run time {:.0} s",
        info.load_before,
        info.load_after,
        r.elapsed.as_secs_f64()
    );
    let refusals: Vec<String> = r
        .mtls_refusals
        .iter()
        .map(|(side, ok)| {
            format!(
                "{} {}",
                side_name(*side),
                if *ok { "refuses" } else { "ACCEPTS" }
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "- Mutual TLS 1.3 everywhere, ECDSA P-256: a client without a certificate: {}",
        refusals.join(", ")
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| | measure | bridge | peer | bridge/peer | target | met |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for row in &rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.id, row.measure, row.bridge, row.peer, row.ratio, row.target, met
        );
    }
    out
}

pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Bridge => "bridge WSS",
        Side::Peer => "Mosquitto WSS",
        Side::Direct => "Mosquitto MQTT/TLS",
    }
}
