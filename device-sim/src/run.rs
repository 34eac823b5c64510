//! Running a scenario end to end: start the observer and the fleet, fire the fault timeline,
//! drive commands for the expectations, then judge what the observer saw and report.
//!
//! ```no_run
//! # async fn demo(broker: device_sim::BrokerOpts, observer: device_sim::observer::ObserverOpts)
//! # -> Result<(), device_sim::SimError> {
//! use std::time::Duration;
//! let scenario = device_sim::Scenario::from_file("scenarios/smart-home.toml".as_ref())?;
//! let opts = device_sim::run::RunOptions::new(broker, Some(observer), Duration::from_secs(20));
//! let report = device_sim::run::run(&scenario, opts, &mut |_| {}).await?;
//! assert!(report.passed, "{report:?}");
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::BrokerOpts;
use crate::command;
use crate::expect::{Check, Evidence, FiredRecord, Outcome};
use crate::fleet::Fleet;
use crate::observer::{Observer, ObserverOpts};
use crate::rng::SplitMix64;
use crate::scenario::Scenario;
use crate::SimError;

use rand::Rng;

/// How often the timeline is looked at: the resolution of fault times and command pacing.
const STEP: Duration = Duration::from_millis(50);

/// How to run a scenario.
pub struct RunOptions {
    pub broker: BrokerOpts,
    /// Where the observer connects; `None` runs the fleet and its faults without judging.
    pub observer: Option<ObserverOpts>,
    pub duration: Duration,
    /// How often the progress callback is called.
    pub progress_every: Duration,
    /// Cancel to end the run early (Ctrl-C); the report then says it was interrupted.
    pub stop: CancellationToken,
}

impl RunOptions {
    pub fn new(
        broker: BrokerOpts,
        observer: Option<ObserverOpts>,
        duration: Duration,
    ) -> RunOptions {
        RunOptions {
            broker,
            observer,
            duration,
            progress_every: Duration::from_secs(1),
            stop: CancellationToken::new(),
        }
    }
}

/// A moment of the run, for the progress line.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub elapsed_ms: u64,
    pub duration_ms: u64,
    pub devices: usize,
    pub online: usize,
    pub published: u64,
    /// Messages per second published by the fleet since the previous progress call.
    pub messages_per_sec: f64,
    /// Commands the devices answered.
    pub commands_answered: u64,
    /// Commands the observer sent (0 without an observer).
    pub commands_sent: usize,
    pub faults_fired: usize,
    /// `None` when the run has no observer.
    pub observer_connected: Option<bool>,
}

/// Totals of the fleet at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetTotals {
    pub online_at_end: usize,
    pub published: u64,
    pub commands_answered: u64,
    pub commands_ignored: u64,
    pub dropped: u64,
    /// When every device was online at once for the first time, since the start.
    pub all_online_ms: Option<u64>,
}

/// What the observer saw, in numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ObserverTotals {
    pub connected: bool,
    pub telemetry: u64,
    pub sequence_gaps: usize,
    pub lagging: u64,
    pub commands_sent: usize,
    pub commands_answered: usize,
    pub errors: Vec<String>,
}

/// Resident memory of this process (Linux; `None` elsewhere).
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub rss_before_kb: u64,
    pub rss_end_kb: u64,
    pub peak_kb: u64,
    /// (RSS at the end - RSS before the fleet started) / devices.
    pub per_device_bytes: u64,
}

/// Everything a run produced; serialised as the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub devices: usize,
    pub duration_ms: u64,
    /// Every expectation held (and the run was not interrupted).
    pub passed: bool,
    pub interrupted: bool,
    pub expectations: Vec<Outcome>,
    pub faults: Vec<FiredRecord>,
    pub fleet: FleetTotals,
    pub observer: Option<ObserverTotals>,
    pub memory: Option<Memory>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `(VmRSS, VmHWM)` in kB from `/proc/self/status`.
pub fn rss_kb() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Runs `scenario` for `opts.duration` and judges it. Errors are for runs that could not start
/// (bad certificates, an invalid fleet); a failed expectation is a report with `passed: false`.
pub async fn run(
    scenario: &Scenario,
    opts: RunOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RunReport, SimError> {
    let needs_observer = scenario
        .expectations
        .iter()
        .any(|e| e.check.needs_observer());
    if needs_observer && opts.observer.is_none() {
        return Err(SimError::InvalidSpec(
            "the scenario has expectations, which need an observer connected to the bridge".into(),
        ));
    }
    let origin = Instant::now();
    let observer = opts
        .observer
        .map(|o| Observer::start(o, origin))
        .transpose()?;
    let rss_before = rss_kb();
    let fleet = Fleet::start_scenario(opts.broker, scenario).await?;
    info!(scenario = %scenario.name, devices = fleet.devices().len(), "fleet started");

    let mut timeline: Vec<_> = scenario.faults().iter().collect();
    timeline.sort_by_key(|f| f.at);
    let mut timeline = timeline.into_iter().peekable();
    let mut fired: Vec<FiredRecord> = Vec::new();
    let commanding = scenario.expectations.iter().find_map(|e| match e.check {
        Check::CommandsAnswered {
            rate,
            within,
            after,
            ..
        } => Some((rate, within, after)),
        _ => None,
    });
    let mut cmd_rng = SplitMix64::stream(scenario.seed(), 0xc0_44a4d);
    let mut next_cmd = commanding.map(|(_, _, after)| origin + after);
    let end = origin + opts.duration;
    let mut step = tokio::time::interval(STEP);
    step.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut next_progress = origin + opts.progress_every;
    let mut last_published = (origin, 0u64);
    let mut all_online_ms = None;
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = step.tick() => {}
            _ = opts.stop.cancelled() => {
                interrupted = true;
                break;
            }
        }
        let now = Instant::now();
        while let Some(fault) = timeline.next_if(|f| origin + f.at <= now && now < end) {
            let f = fleet.fire(fault).await;
            fired.push(FiredRecord {
                name: f.name,
                kind: f.kind.to_string(),
                at_ms: ms(f.started - origin),
                ended_ms: f.ends.map(|e| ms(e - origin)),
                devices: f.devices,
                takes_devices_offline: fault.action.takes_devices_offline(),
            });
        }
        if let (Some((rate, within, _)), Some(obs), Some(at)) =
            (commanding, &observer, next_cmd.as_mut())
        {
            let gap = Duration::from_secs_f64(1.0 / rate);
            while *at <= now && now < end {
                send_command(&fleet, obs, &mut cmd_rng, within);
                *at += gap;
            }
        }
        let stats = fleet.stats();
        if all_online_ms.is_none() && stats.online == stats.devices {
            all_online_ms = Some(ms(now - origin));
        }
        if now >= next_progress || now >= end {
            let (then, published_then) = last_published;
            let secs = (now - then).as_secs_f64().max(1e-3);
            progress(&Progress {
                elapsed_ms: ms(now - origin),
                duration_ms: ms(opts.duration),
                devices: stats.devices,
                online: stats.online,
                published: stats.published,
                messages_per_sec: (stats.published - published_then) as f64 / secs,
                commands_answered: stats.commands_handled,
                commands_sent: observer.as_ref().map_or(0, |o| o.journal().commands.len()),
                faults_fired: fired.len(),
                observer_connected: observer.as_ref().map(|o| o.journal().connected_ever),
            });
            last_published = (now, stats.published);
            next_progress = now + opts.progress_every;
        }
        if now >= end {
            break;
        }
    }

    // Commands still in flight get the time their expectation allows to come back.
    if let (Some((_, within, _)), Some(obs)) = (commanding, &observer) {
        let deadline = Instant::now() + within + Duration::from_millis(500);
        while obs.journal().commands_in_flight() > 0 && Instant::now() < deadline && !interrupted {
            tokio::time::sleep(STEP).await;
        }
    }
    let run_ms = ms(Instant::now() - origin);
    let stats = fleet.stats();
    let rss_end = rss_kb();
    let journal = match observer {
        Some(o) => Some(o.stop().await),
        None => None,
    };
    let ids = fleet.ids();
    let expectations: Vec<Outcome> = match &journal {
        Some(journal) => {
            let evidence = Evidence {
                journal,
                devices: &ids,
                fired: &fired,
                run_ms,
            };
            scenario
                .expectations
                .iter()
                .map(|e| e.evaluate(&evidence))
                .collect()
        }
        None => Vec::new(),
    };
    fleet.stop().await;
    let memory = match (rss_before, rss_end) {
        (Some((before, _)), Some((end_rss, peak))) => Some(Memory {
            rss_before_kb: before,
            rss_end_kb: end_rss,
            peak_kb: peak,
            per_device_bytes: end_rss.saturating_sub(before) * 1024 / (ids.len().max(1) as u64),
        }),
        _ => None,
    };
    Ok(RunReport {
        scenario: scenario.name.clone(),
        seed: scenario.seed(),
        devices: ids.len(),
        duration_ms: run_ms,
        passed: !interrupted && expectations.iter().all(|e| e.passed),
        interrupted,
        expectations,
        faults: fired,
        fleet: FleetTotals {
            online_at_end: stats.online,
            published: stats.published,
            commands_answered: stats.commands_handled,
            commands_ignored: stats.commands_ignored,
            dropped: stats.dropped,
            all_online_ms,
        },
        observer: journal.map(|j| ObserverTotals {
            connected: j.connected_ever,
            telemetry: j.telemetry,
            sequence_gaps: j.gaps.len(),
            lagging: j.lagging,
            commands_sent: j.commands.len(),
            commands_answered: j.commands_answered(),
            errors: j.errors.clone(),
        }),
        memory,
    })
}

/// Sends one valid `set` to a device that takes commands, is online and is not under a fault
/// that disturbs commands (those are not the device's fault).
fn send_command(fleet: &Fleet, observer: &Observer, rng: &mut SplitMix64, within: Duration) {
    let candidates: Vec<_> = fleet
        .devices()
        .iter()
        .filter(|d| d.accepts_set() && d.is_online() && !d.is_disturbed())
        .collect();
    if candidates.is_empty() {
        return;
    }
    let device = candidates[rng.random_range(0..candidates.len())];
    if let Some(params) = command::random_set_params(&device.profile().controls, rng) {
        observer.command(device.id(), params, within);
    }
}
