//! Expectations a scenario states about what a client of the bridge sees, and their results.
//! Evaluation is pure: it reads the observer's [`crate::observer::Journal`] and the faults that
//! fired, so every rule is unit-tested without sockets.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::duration::format_duration;
use crate::observer::Journal;

/// One checkable statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Every device of the fleet appears (with its meta) at the observer within `within` of the
    /// start of the run.
    DevicesVisible { within: Duration },
    /// The observer sends `set` commands at `rate` per second (from `after` on) to devices no
    /// fault is disturbing; at least `min_success` of them must be answered (`ok` or `rejected`)
    /// within `within`.
    CommandsAnswered {
        rate: f64,
        within: Duration,
        min_success: f64,
        after: Duration,
    },
    /// Every device a connection fault takes down shows `offline` within `within` of the fault
    /// firing, and (if given) `online` again within `online_again_within` of the fault ending.
    OfflineWithin {
        fault: Option<String>,
        within: Duration,
        online_again_within: Option<Duration>,
    },
    /// No telemetry sequence number is skipped or repeated at the observer.
    NoSequenceGaps,
}

impl Check {
    pub fn type_name(&self) -> &'static str {
        match self {
            Check::DevicesVisible { .. } => "devices_visible",
            Check::CommandsAnswered { .. } => "commands_answered",
            Check::OfflineWithin { .. } => "offline_within",
            Check::NoSequenceGaps => "no_sequence_gaps",
        }
    }

    /// Whether the check needs an observer connected to the bridge (all of them do today).
    pub fn needs_observer(&self) -> bool {
        true
    }
}

/// A named check from a scenario's `[[expect]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub name: String,
    pub check: Check,
}

/// A fault as it happened, for checks that watch faults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiredRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Since the start of the run.
    pub at_ms: u64,
    pub ended_ms: Option<u64>,
    pub devices: Vec<String>,
    #[serde(skip)]
    pub takes_devices_offline: bool,
}

/// The verdict on one expectation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub passed: bool,
    /// One line: what was measured, and on failure why it failed.
    pub detail: String,
}

/// What the checks read.
pub struct Evidence<'a> {
    pub journal: &'a Journal,
    /// Every device of the fleet, in fleet order.
    pub devices: &'a [String],
    pub fired: &'a [FiredRecord],
    /// Length of the run (observation window), from its start.
    pub run_ms: u64,
}

const EXAMPLES: usize = 5;

fn examples(ids: &[String]) -> String {
    let mut s = ids
        .iter()
        .take(EXAMPLES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > EXAMPLES {
        s.push_str(&format!(" and {} more", ids.len() - EXAMPLES));
    }
    s
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Expectation {
    pub fn evaluate(&self, ev: &Evidence<'_>) -> Outcome {
        let (passed, detail) = match &self.check {
            _ if !ev.journal.connected_ever => (
                false,
                format!(
                    "the observer never connected to the bridge: {}",
                    ev.journal
                        .last_error
                        .as_deref()
                        .unwrap_or("no reason recorded")
                ),
            ),
            Check::DevicesVisible { within } => devices_visible(ev, ms(*within)),
            Check::CommandsAnswered {
                within,
                min_success,
                ..
            } => commands_answered(ev, ms(*within), *min_success),
            Check::OfflineWithin {
                fault,
                within,
                online_again_within,
            } => offline_within(
                ev,
                fault.as_deref(),
                ms(*within),
                online_again_within.map(ms),
            ),
            Check::NoSequenceGaps => no_sequence_gaps(ev),
        };
        Outcome {
            name: self.name.clone(),
            kind: self.check.type_name().to_string(),
            passed,
            detail,
        }
    }
}

fn devices_visible(ev: &Evidence<'_>, within: u64) -> (bool, String) {
    let mut late = Vec::new();
    let mut slowest = 0;
    for id in ev.devices {
        match ev.journal.visible.get(id) {
            Some(at) if *at <= within => slowest = slowest.max(*at),
            _ => late.push(id.clone()),
        }
    }
    let limit = format_duration(Duration::from_millis(within));
    if late.is_empty() {
        (
            true,
            format!(
                "all {} devices visible, the last after {} (limit {limit})",
                ev.devices.len(),
                format_duration(Duration::from_millis(slowest))
            ),
        )
    } else {
        (
            false,
            format!(
                "{} of {} devices not visible within {limit}: {}",
                late.len(),
                ev.devices.len(),
                examples(&late)
            ),
        )
    }
}

fn commands_answered(ev: &Evidence<'_>, within: u64, min_success: f64) -> (bool, String) {
    let cmds = &ev.journal.commands;
    if cmds.is_empty() {
        return (
            false,
            "no command was sent (no device could take one)".to_string(),
        );
    }
    let mut answered = 0usize;
    let mut statuses: HashMap<&str, usize> = HashMap::new();
    let mut slowest = 0;
    let mut failed = Vec::new();
    for c in cmds {
        let status = c.status.as_deref().unwrap_or("no answer");
        *statuses.entry(status).or_default() += 1;
        let in_time = c.answered_ms.map(|t| t.saturating_sub(c.sent_ms));
        match (status, in_time) {
            ("ok" | "rejected", Some(t)) if t <= within => {
                answered += 1;
                slowest = slowest.max(t);
            }
            _ => failed.push(format!("{} ({status})", c.device)),
        }
    }
    let share = answered as f64 / cmds.len() as f64;
    let mut by_status: Vec<_> = statuses.into_iter().collect();
    by_status.sort();
    let counts = by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let limit = format_duration(Duration::from_millis(within));
    let summary = format!(
        "{answered} of {} commands answered within {limit} ({counts}; slowest {})",
        cmds.len(),
        format_duration(Duration::from_millis(slowest))
    );
    if share + 1e-9 >= min_success {
        (true, summary)
    } else {
        (
            false,
            format!(
                "{summary}; needed {:.0}%; unanswered: {}",
                min_success * 100.0,
                examples(&failed)
            ),
        )
    }
}

fn offline_within(
    ev: &Evidence<'_>,
    fault: Option<&str>,
    within: u64,
    again: Option<u64>,
) -> (bool, String) {
    let faults: Vec<&FiredRecord> = ev
        .fired
        .iter()
        .filter(|f| f.takes_devices_offline && fault.is_none_or(|name| f.name == name))
        .collect();
    if faults.is_empty() {
        return (
            false,
            format!(
                "no matching connection fault fired ({})",
                fault.unwrap_or("any")
            ),
        );
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in &faults {
        for id in &f.devices {
            checked += 1;
            let went_offline = ev.journal.presence_after(id, "offline", f.at_ms);
            match went_offline {
                Some(t) if t - f.at_ms <= within => {}
                Some(t) => problems.push(format!("{id} offline after {}ms", t - f.at_ms)),
                None => problems.push(format!("{id} never offline")),
            }
            if let (Some(limit), Some(end)) = (again, f.ended_ms) {
                match ev.journal.presence_after(id, "online", end) {
                    Some(t) if t - end <= limit => {}
                    Some(t) => problems.push(format!("{id} online again after {}ms", t - end)),
                    None if end + limit > ev.run_ms => {}
                    None => problems.push(format!("{id} never online again")),
                }
            }
        }
    }
    let names = faults
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if problems.is_empty() {
        (
            true,
            format!("{checked} device disconnects seen in time ({names})"),
        )
    } else {
        (
            false,
            format!(
                "{} of {checked} device disconnects not seen in time ({names}): {}",
                problems.len(),
                examples(&problems)
            ),
        )
    }
}

fn no_sequence_gaps(ev: &Evidence<'_>) -> (bool, String) {
    let j = ev.journal;
    let lagging = if j.lagging > 0 {
        format!(
            "; the bridge reported this client lagging {} times",
            j.lagging
        )
    } else {
        String::new()
    };
    if j.gaps.is_empty() {
        (
            true,
            format!("{} telemetry messages, no gaps{lagging}", j.telemetry),
        )
    } else {
        let shown: Vec<String> = j
            .gaps
            .iter()
            .map(|g| format!("{} expected seq {} got {}", g.device, g.expected, g.got))
            .collect();
        (
            false,
            format!(
                "{} sequence gaps in {} telemetry messages{lagging}: {}",
                j.gaps.len(),
                j.telemetry,
                examples(&shown)
            ),
        )
    }
}
