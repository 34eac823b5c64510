//! What a run prints: the progress line (rewritten in place on a terminal, plain lines in CI),
//! the summary at the end, and the JSON report.

use std::time::Duration;

use crate::duration::format_duration;
use crate::run::{Progress, RunReport};

/// One progress line, without a line ending.
pub fn progress_line(p: &Progress) -> String {
    let elapsed = Duration::from_millis(p.elapsed_ms);
    let total = Duration::from_millis(p.duration_ms);
    let observer = match p.observer_connected {
        Some(false) => "  (observer not connected yet)",
        _ => "",
    };
    format!(
        "[{:>5} / {}] devices {}/{} online | {:.0} msg/s | commands {} answered{} | faults {} fired{observer}",
        format!("{}s", elapsed.as_secs()),
        format_duration(total),
        p.online,
        p.devices,
        p.messages_per_sec,
        p.commands_answered,
        if p.commands_sent > 0 { format!(" of {} sent", p.commands_sent) } else { String::new() },
        p.faults_fired,
    )
}

/// The summary printed at the end: totals, faults, then every expectation with its verdict.
pub fn summary(r: &RunReport) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "scenario '{}' (seed {}): {} devices for {}",
        r.scenario,
        r.seed,
        r.devices,
        format_duration(Duration::from_millis(r.duration_ms))
    ));
    let f = &r.fleet;
    let all_online = match f.all_online_ms {
        Some(ms) => format!(
            "all online after {}",
            format_duration(Duration::from_millis(ms))
        ),
        None => "never all online at once".to_string(),
    };
    line(format!(
        "  fleet: {all_online}, {} online at the end, {} messages published, {} commands answered, {} ignored",
        f.online_at_end, f.published, f.commands_answered, f.commands_ignored
    ));
    if let Some(o) = &r.observer {
        line(format!(
            "  observer: {}, {} telemetry messages, {} sequence gaps, {} commands sent, {} answered{}",
            if o.connected { "connected" } else { "NEVER CONNECTED" },
            o.telemetry,
            o.sequence_gaps,
            o.commands_sent,
            o.commands_answered,
            if o.lagging > 0 { format!(", lagging {} times", o.lagging) } else { String::new() }
        ));
    }
    if let Some(m) = &r.memory {
        line(format!(
            "  memory: {} MB resident ({} MB peak), about {} KB per device",
            m.rss_end_kb / 1024,
            m.peak_kb / 1024,
            m.per_device_bytes / 1024
        ));
    }
    for fault in &r.faults {
        line(format!(
            "  fault '{}' ({}) at {} hit {} devices",
            fault.name,
            fault.kind,
            format_duration(Duration::from_millis(fault.at_ms)),
            fault.devices.len()
        ));
    }
    for e in &r.expectations {
        line(format!(
            "  {} {}: {}",
            if e.passed { "PASS" } else { "FAIL" },
            e.name,
            e.detail
        ));
    }
    let verdict = if r.interrupted {
        "INTERRUPTED".to_string()
    } else if r.expectations.is_empty() {
        "DONE (no expectations)".to_string()
    } else {
        let failed = r.expectations.iter().filter(|e| !e.passed).count();
        if failed == 0 {
            format!(
                "PASSED: {} of {} expectations held",
                r.expectations.len(),
                r.expectations.len()
            )
        } else {
            format!(
                "FAILED: {failed} of {} expectations did not hold",
                r.expectations.len()
            )
        }
    };
    line(verdict);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::{FiredRecord, Outcome};
    use crate::run::{FleetTotals, ObserverTotals};

    fn report(passed: bool) -> RunReport {
        RunReport {
            scenario: "home".into(),
            seed: 3,
            devices: 25,
            duration_ms: 20_000,
            passed,
            interrupted: false,
            expectations: vec![
                Outcome {
                    name: "devices_visible".into(),
                    kind: "devices_visible".into(),
                    passed: true,
                    detail: "all 25 visible".into(),
                },
                Outcome {
                    name: "gaps".into(),
                    kind: "no_sequence_gaps".into(),
                    passed,
                    detail: "2 gaps".into(),
                },
            ],
            faults: vec![FiredRecord {
                name: "outage".into(),
                kind: "disconnect".into(),
                at_ms: 5000,
                ended_ms: Some(8000),
                devices: vec!["a".into(), "b".into()],
                takes_devices_offline: true,
            }],
            fleet: FleetTotals {
                online_at_end: 25,
                published: 1000,
                commands_answered: 9,
                commands_ignored: 1,
                dropped: 0,
                all_online_ms: Some(900),
            },
            observer: Some(ObserverTotals {
                connected: true,
                telemetry: 990,
                sequence_gaps: 0,
                lagging: 0,
                commands_sent: 10,
                commands_answered: 9,
                errors: vec![],
            }),
            memory: None,
        }
    }

    #[test]
    fn summary_names_every_verdict() {
        let ok = summary(&report(true));
        assert!(
            ok.contains("scenario 'home' (seed 3): 25 devices for 20s"),
            "{ok}"
        );
        assert!(ok.contains("all online after 900ms"), "{ok}");
        assert!(
            ok.contains("fault 'outage' (disconnect) at 5s hit 2 devices"),
            "{ok}"
        );
        assert!(ok.contains("PASS gaps: 2 gaps"), "{ok}");
        assert!(
            ok.trim_end().ends_with("PASSED: 2 of 2 expectations held"),
            "{ok}"
        );
        let failed = summary(&report(false));
        assert!(failed.contains("FAIL gaps"), "{failed}");
        assert!(
            failed
                .trim_end()
                .ends_with("FAILED: 1 of 2 expectations did not hold"),
            "{failed}"
        );
        let json: serde_json::Value = serde_json::to_value(report(false)).unwrap();
        assert_eq!(json["expectations"][1]["passed"], false);
        assert_eq!(json["faults"][0]["type"], "disconnect");
    }

    #[test]
    fn progress_line_reads_well() {
        let line = progress_line(&Progress {
            elapsed_ms: 12_400,
            duration_ms: 60_000,
            devices: 25,
            online: 24,
            published: 500,
            messages_per_sec: 31.2,
            commands_answered: 12,
            commands_sent: 13,
            faults_fired: 2,
            observer_connected: Some(true),
        });
        assert_eq!(line, "[  12s / 1m] devices 24/25 online | 31 msg/s | commands 12 answered of 13 sent | faults 2 fired");
    }
}
