//! What the observer saw, in a form the expectations read: when each device became visible,
//! presence changes, telemetry sequence gaps and the fate of every command it sent.
//!
//! Pure: [`Journal::record`] takes one bridge message and the time it arrived.

use std::collections::HashMap;

use serde_json::Value;

/// A telemetry message whose `seq` was not the one after the previous.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub device: String,
    pub expected: u64,
    pub got: u64,
    pub at_ms: u64,
}

/// A command the observer sent, and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    pub req: String,
    pub device: String,
    pub sent_ms: u64,
    /// The final `command_status` (`ok`, `rejected`, `timeout`, `offline`, ...).
    pub status: Option<String>,
    pub answered_ms: Option<u64>,
}

/// Everything the observer recorded; times are milliseconds since the start of the run.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// A `welcome` arrived at least once.
    pub connected_ever: bool,
    pub last_error: Option<String>,
    /// When each device was first seen with its meta (snapshot or `device` message).
    pub visible: HashMap<String, u64>,
    /// Presence changes per device, in arrival order.
    pub presence: HashMap<String, Vec<(u64, String)>>,
    /// Telemetry messages received.
    pub telemetry: u64,
    pub gaps: Vec<Gap>,
    /// `lagging` messages (the bridge conflated telemetry for this client).
    pub lagging: u64,
    /// `error` messages from the bridge.
    pub errors: Vec<String>,
    pub commands: Vec<CommandRecord>,
    last_seq: HashMap<String, u64>,
    pending: HashMap<String, usize>,
}

const FINAL_STATUSES: &[&str] = &[
    "ok",
    "rejected",
    "timeout",
    "offline",
    "forbidden",
    "rate_limited",
];

impl Journal {
    /// Records a command about to be sent.
    pub fn command_sent(&mut self, req: &str, device: &str, at_ms: u64) {
        self.pending.insert(req.to_string(), self.commands.len());
        self.commands.push(CommandRecord {
            req: req.to_string(),
            device: device.to_string(),
            sent_ms: at_ms,
            status: None,
            answered_ms: None,
        });
    }

    /// Commands sent that have no final status yet.
    pub fn commands_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Commands that ended `ok` or `rejected` (the device answered).
    pub fn commands_answered(&self) -> usize {
        self.commands
            .iter()
            .filter(|c| matches!(c.status.as_deref(), Some("ok" | "rejected")))
            .count()
    }

    /// The first time at or after `since_ms` the device's presence became `presence`.
    pub fn presence_after(&self, device: &str, presence: &str, since_ms: u64) -> Option<u64> {
        self.presence
            .get(device)?
            .iter()
            .find(|(t, p)| *t >= since_ms && p == presence)
            .map(|(t, _)| *t)
    }

    fn seen(&mut self, device: &str, at_ms: u64) {
        self.visible.entry(device.to_string()).or_insert(at_ms);
    }

    fn presence_change(&mut self, device: &str, presence: &str, at_ms: u64) {
        let list = self.presence.entry(device.to_string()).or_default();
        if list.last().map(|(_, p)| p.as_str()) != Some(presence) {
            list.push((at_ms, presence.to_string()));
        }
    }

    /// Applies one message from the bridge.
    pub fn record(&mut self, msg: &Value, at_ms: u64) {
        let device = msg["device"].as_str().unwrap_or_default();
        match msg["type"].as_str().unwrap_or_default() {
            "welcome" => self.connected_ever = true,
            "snapshot" => {
                for d in msg["devices"].as_array().into_iter().flatten() {
                    let Some(id) = d["id"].as_str() else { continue };
                    if !d["meta"].is_null() {
                        self.seen(id, at_ms);
                    }
                    if let Some(p) = d["presence"].as_str() {
                        self.presence_change(id, p, at_ms);
                    }
                    if let Some(seq) = d["seq"].as_u64() {
                        self.last_seq.insert(id.to_string(), seq);
                    }
                }
            }
            "device" if msg["removed"] == true => {
                // The bridge forgets a removed device; if it comes back, it counts from 1 again.
                self.last_seq.remove(device);
            }
            "device" => self.seen(device, at_ms),
            "presence" => {
                if let Some(p) = msg["presence"].as_str() {
                    self.presence_change(device, p, at_ms);
                }
            }
            "telemetry" => {
                self.telemetry += 1;
                let Some(seq) = msg["seq"].as_u64() else {
                    return;
                };
                // A device not in the snapshot appeared after it, so its first seq is 1.
                let expected = self.last_seq.get(device).map_or(1, |last| last + 1);
                if seq != expected {
                    self.gaps.push(Gap {
                        device: device.to_string(),
                        expected,
                        got: seq,
                        at_ms,
                    });
                }
                let last = self.last_seq.entry(device.to_string()).or_insert(0);
                *last = (*last).max(seq);
            }
            "command_status" => {
                let req = match &msg["req"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let status = msg["status"].as_str().unwrap_or_default();
                if !FINAL_STATUSES.contains(&status) {
                    return;
                }
                if let Some(i) = self.pending.remove(&req) {
                    let record = &mut self.commands[i];
                    record.status = Some(status.to_string());
                    record.answered_ms = Some(at_ms);
                }
            }
            "lagging" => self.lagging += 1,
            "error" => self.errors.push(format!(
                "{}: {}",
                msg["code"].as_str().unwrap_or("?"),
                msg["message"].as_str().unwrap_or("")
            )),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn visibility_presence_and_gaps() {
        let mut j = Journal::default();
        j.record(&json!({"type": "welcome"}), 5);
        j.record(
            &json!({"type": "snapshot", "devices": [
                {"id": "a", "meta": {"kind": "light"}, "presence": "online", "seq": 7},
                {"id": "b", "meta": null, "presence": "unknown", "seq": 0}
            ]}),
            10,
        );
        assert!(j.connected_ever);
        assert_eq!(j.visible.get("a"), Some(&10));
        assert!(!j.visible.contains_key("b"));
        j.record(&json!({"type": "device", "device": "b", "meta": {}}), 20);
        j.record(&json!({"type": "device", "device": "c", "meta": {}}), 25);
        assert_eq!(j.visible.get("b"), Some(&20));
        for (seq, at) in [(8, 30), (9, 31), (11, 32)] {
            j.record(&json!({"type": "telemetry", "device": "a", "seq": seq}), at);
        }
        j.record(&json!({"type": "telemetry", "device": "c", "seq": 1}), 33);
        j.record(&json!({"type": "telemetry", "device": "c", "seq": 2}), 34);
        assert_eq!(j.telemetry, 5);
        assert_eq!(
            j.gaps,
            vec![Gap {
                device: "a".into(),
                expected: 10,
                got: 11,
                at_ms: 32
            }]
        );
        j.record(
            &json!({"type": "presence", "device": "a", "presence": "offline"}),
            40,
        );
        j.record(
            &json!({"type": "presence", "device": "a", "presence": "offline"}),
            41,
        );
        j.record(
            &json!({"type": "presence", "device": "a", "presence": "online"}),
            50,
        );
        assert_eq!(j.presence["a"].len(), 3, "repeats are not changes");
        assert_eq!(j.presence_after("a", "offline", 35), Some(40));
        assert_eq!(j.presence_after("a", "online", 45), Some(50));
        assert_eq!(j.presence_after("a", "offline", 45), None);
        // Removal resets the count.
        j.record(
            &json!({"type": "device", "device": "c", "meta": null, "removed": true}),
            60,
        );
        j.record(&json!({"type": "telemetry", "device": "c", "seq": 1}), 61);
        assert_eq!(j.gaps.len(), 1);
    }

    #[test]
    fn commands_end_with_their_final_status() {
        let mut j = Journal::default();
        j.command_sent("c1", "light-1", 100);
        j.command_sent("c2", "plug-1", 110);
        assert_eq!(j.commands_in_flight(), 2);
        for status in ["accepted", "sent"] {
            j.record(
                &json!({"type": "command_status", "req": "c1", "status": status}),
                120,
            );
        }
        assert_eq!(j.commands[0].status, None);
        j.record(
            &json!({"type": "command_status", "req": "c1", "status": "ok"}),
            150,
        );
        j.record(
            &json!({"type": "command_status", "req": "c2", "status": "timeout"}),
            900,
        );
        j.record(
            &json!({"type": "command_status", "req": "zz", "status": "ok"}),
            901,
        );
        assert_eq!(j.commands_in_flight(), 0);
        assert_eq!(j.commands[0].answered_ms, Some(150));
        assert_eq!(j.commands[1].status.as_deref(), Some("timeout"));
        assert_eq!(j.commands_answered(), 1);
        j.record(&json!({"type": "lagging", "conflated": 3}), 1000);
        j.record(
            &json!({"type": "error", "code": "bad_request", "message": "x"}),
            1001,
        );
        assert_eq!((j.lagging, j.errors.len()), (1, 1));
    }
}
