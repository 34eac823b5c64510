//! One measured trial (devices publish at a fixed rate for a fixed time while connected clients
//! count and time what they get) and the search for the highest rate a path sustains.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::clients::ClientSet;
use crate::devices::{Devices, PaceReport};
use crate::procstat::{self, Usage};
use crate::rig::Rig;
use crate::BenchError;

/// After the last publish, how long deliveries may keep trickling in.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Deliveries that stop growing for this long are done.
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// A path sustains a rate when (nearly) everything arrives, queues do not grow and the
/// publishers kept their schedule.
pub const SUSTAINED_DELIVERED: f64 = 0.999;
pub const SUSTAINED_P99: Duration = Duration::from_millis(100);
pub const SUSTAINED_PACER_LAG: Duration = Duration::from_millis(50);
/// Search steps: grow by this factor until a rate fails, then bisect.
const GROWTH: f64 = 1.6;
const BISECTIONS: usize = 3;

#[derive(Debug, Clone)]
pub struct Trial {
    /// Offered messages per second, over all devices.
    pub rate: f64,
    pub clients: usize,
    pub pace: PaceReport,
    /// `sent × clients`: what full delivery is.
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries of the client that got the fewest.
    pub fewest: u64,
    pub lagging: u64,
    pub latency: Histogram<u64>,
    /// From the first publish to the last delivery (or the drain limit).
    pub wall: Duration,
    /// CPU time of the bridge process and of Mosquitto during the trial, when known.
    pub bridge_cpu: Option<Duration>,
    pub broker_cpu: Option<Duration>,
    /// CPU time of the load generator (this process: devices and receivers).
    pub bench_cpu: Option<Duration>,
    /// Share of all the machine's cores that was busy (everything, neighbours included).
    pub machine_busy: Option<f64>,
}

impl Trial {
    pub fn delivered_fraction(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.delivered as f64 / self.expected as f64
        }
    }

    pub fn p(&self, quantile: f64) -> Duration {
        crate::recorder::quantile(&self.latency, quantile)
    }

    /// Whether this trial counts as sustained at its rate (see the constants above).
    pub fn sustained(&self) -> bool {
        self.delivered_fraction() >= SUSTAINED_DELIVERED
            && self.lagging == 0
            && self.p(0.99) <= SUSTAINED_P99
            && self.pace.max_lag <= SUSTAINED_PACER_LAG
    }

    /// Offered rate times clients: deliveries per second when everything arrived.
    pub fn deliveries_per_sec(&self) -> f64 {
        self.rate * self.clients as f64 * self.delivered_fraction()
    }

    /// CPU time per delivered message of `cpu`, in microseconds.
    pub fn us_per_delivery(&self, cpu: Option<Duration>) -> Option<f64> {
        let cpu = cpu?;
        (self.delivered > 0).then(|| cpu.as_secs_f64() * 1e6 / self.delivered as f64)
    }

    /// Why a trial was not sustained, for the log.
    pub fn verdict(&self) -> String {
        let mut why = Vec::new();
        if self.delivered_fraction() < SUSTAINED_DELIVERED {
            why.push(format!(
                "delivered {:.2}%",
                100.0 * self.delivered_fraction()
            ));
        }
        if self.lagging > 0 {
            why.push(format!("{} lagging notices", self.lagging));
        }
        if self.p(0.99) > SUSTAINED_P99 {
            why.push(format!("p99 {:.1} ms", self.p(0.99).as_secs_f64() * 1e3));
        }
        if self.pace.max_lag > SUSTAINED_PACER_LAG {
            why.push(format!(
                "publishers {:.0} ms behind",
                self.pace.max_lag.as_secs_f64() * 1e3
            ));
        }
        if why.is_empty() {
            "sustained".into()
        } else {
            why.join(", ")
        }
    }

    /// Adds another trial at the same rate (rounds of one measurement).
    pub fn merge(&mut self, other: &Trial) {
        self.pace.sent += other.pace.sent;
        self.pace.max_lag = self.pace.max_lag.max(other.pace.max_lag);
        self.pace.elapsed += other.pace.elapsed;
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.fewest += other.fewest;
        self.lagging += other.lagging;
        let _ = self.latency.add(&other.latency);
        self.wall += other.wall;
        let add = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        self.bridge_cpu = add(self.bridge_cpu, other.bridge_cpu);
        self.broker_cpu = add(self.broker_cpu, other.broker_cpu);
        self.bench_cpu = add(self.bench_cpu, other.bench_cpu);
        self.machine_busy = match (self.machine_busy, other.machine_busy) {
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            _ => None,
        };
    }
}

fn cpu_between(before: Option<Usage>, after: Option<Usage>) -> Option<Duration> {
    Some(after?.cpu_since(&before?))
}

/// Numbers trials so that each message says which one it belongs to.
#[derive(Debug, Default)]
pub struct TrialIds(u32);

impl TrialIds {
    pub fn fresh(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

/// Publishes at `rate` for `duration` and waits for the deliveries to drain.
pub async fn trial(
    rig: &Rig,
    devices: &Devices,
    clients: &ClientSet,
    ids: &mut TrialIds,
    rate: f64,
    duration: Duration,
) -> Result<Trial, BenchError> {
    let id = ids.fresh();
    let rec = &clients.recorder;
    rec.begin(id);
    let (bridge0, broker0) = (rig.bridge.usage(), rig.broker.usage());
    let (bench0, machine0) = (
        procstat::usage(std::process::id()),
        procstat::machine_ticks(),
    );
    let started = Instant::now();
    let pace = devices.pace(id, rate, duration).await?;
    let expected = pace.sent * clients.len() as u64;
    let drain_until = Instant::now() + DRAIN_MAX;
    let (mut last, mut last_change) = (rec.delivered(), Instant::now());
    while last < expected && Instant::now() < drain_until && last_change.elapsed() < DRAIN_IDLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = rec.delivered();
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    let wall = started.elapsed();
    let (bridge1, broker1) = (rig.bridge.usage(), rig.broker.usage());
    let (bench1, machine1) = (
        procstat::usage(std::process::id()),
        procstat::machine_ticks(),
    );
    let got = rec.collect();
    Ok(Trial {
        rate,
        clients: clients.len(),
        pace,
        expected,
        delivered: got.delivered(),
        fewest: got.fewest(),
        lagging: got.lagging,
        latency: got.latency,
        wall,
        bridge_cpu: cpu_between(bridge0, bridge1),
        broker_cpu: cpu_between(broker0, broker1),
        bench_cpu: cpu_between(bench0, bench1),
        machine_busy: procstat::busy_between(machine0, machine1),
    })
}

/// The highest sustained rate found, and every rate tried on the way.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub best: Option<Trial>,
    pub tried: Vec<(f64, bool)>,
    /// Not a search: one trial at a fixed rate (`--fixed-rate`, the smoke run), kept in `best`
    /// whether or not it was sustained. The report then shows what that trial did, not a maximum.
    pub one_trial: bool,
}

/// One rate, decided: a trial that is not sustained is run once more, and the rate fails only if
/// both fail. A host that stalls the benchmark for some tens of milliseconds (this kind of
/// machine shares its cores with other tenants) fails a 2 s trial at any load; a rate the system
/// cannot sustain fails twice. Both sides of every comparison are searched the same way.
async fn decide(
    rig: &Rig,
    devices: &Devices,
    clients: &ClientSet,
    ids: &mut TrialIds,
    rate: f64,
    duration: Duration,
    log: &mut dyn FnMut(&Trial),
) -> Result<Trial, BenchError> {
    let t = trial(rig, devices, clients, ids, rate, duration).await?;
    log(&t);
    if t.sustained() {
        return Ok(t);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = trial(rig, devices, clients, ids, rate, duration).await?;
    log(&again);
    Ok(again)
}

/// Grows the rate from `start` until a rate is not sustained (see [`decide`]), then bisects
/// between the best sustained rate and the first failing one. `log` hears about every trial.
pub async fn search(
    rig: &Rig,
    devices: &Devices,
    clients: &ClientSet,
    ids: &mut TrialIds,
    start: f64,
    duration: Duration,
    log: &mut dyn FnMut(&Trial),
) -> Result<Search, BenchError> {
    let mut result = Search::default();
    let mut failed_at: Option<f64> = None;
    let mut rate = start;
    // Grow (or, if even the start fails, shrink) until there is a bracket.
    for _ in 0..12 {
        let t = decide(rig, devices, clients, ids, rate, duration, log).await?;
        let ok = t.sustained();
        result.tried.push((rate, ok));
        if ok {
            result.best = Some(t);
            if failed_at.is_some() {
                break;
            }
            rate *= GROWTH;
        } else {
            failed_at = Some(rate);
            if result.best.is_some() {
                break;
            }
            rate /= GROWTH;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..BISECTIONS {
        let (Some(lo), Some(hi)) = (result.best.as_ref().map(|t| t.rate), failed_at) else {
            break;
        };
        let mid = (lo * hi).sqrt();
        let t = decide(rig, devices, clients, ids, mid, duration, log).await?;
        let ok = t.sustained();
        result.tried.push((mid, ok));
        if ok {
            result.best = Some(t);
        } else {
            failed_at = Some(mid);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(result)
}
