//! Human-readable output: one line per event (`12:00:01 thermostat-1 #57 temperature=21.4 °C`)
//! with units from each device's meta, tables for `list`, lines for `history` and command
//! statuses. Pure functions; the caller decides where the text goes.

use std::collections::HashMap;

use serde_json::{Map, Value};
use time::{OffsetDateTime, UtcOffset};

use crate::messages::{CommandStatus, DeviceSnapshot, ListEntry, Message, Sample, ServerMsg};

/// Turns millisecond timestamps into wall-clock text in one fixed UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    offset: UtcOffset,
}

impl Clock {
    /// The machine's local offset, or UTC when it cannot be known. Call it before starting any
    /// thread: reading the time zone is not thread-safe in the C library, so `time` refuses to
    /// in a multi-threaded process.
    pub fn local() -> Clock {
        Clock::with_offset(UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC))
    }

    pub fn utc() -> Clock {
        Clock::with_offset(UtcOffset::UTC)
    }

    pub fn with_offset(offset: UtcOffset) -> Clock {
        Clock { offset }
    }

    fn at(&self, ts_ms: i64) -> OffsetDateTime {
        let nanos = i128::from(ts_ms) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(self.offset)
    }

    /// `HH:MM:SS`.
    pub fn time_of_day(&self, ts_ms: i64) -> String {
        let t = self.at(ts_ms);
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
    }

    /// `YYYY-MM-DD HH:MM:SS.mmm`: history spans days, and samples come faster than seconds.
    pub fn date_time(&self, ts_ms: i64) -> String {
        let t = self.at(ts_ms);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// Formats stream messages, remembering each device's units from the metas it has seen.
#[derive(Debug, Clone)]
pub struct Formatter {
    clock: Clock,
    /// device -> field (telemetry or control) -> unit.
    units: HashMap<String, HashMap<String, String>>,
}

impl Formatter {
    pub fn new(clock: Clock) -> Formatter {
        Formatter {
            clock,
            units: HashMap::new(),
        }
    }

    /// Takes the units of a device's telemetry fields and controls from its meta.
    pub fn learn_meta(&mut self, device: &str, meta: Option<&Value>) {
        let mut units = HashMap::new();
        for section in ["controls", "telemetry"] {
            let Some(fields) = meta.and_then(|m| m[section].as_object()) else {
                continue;
            };
            for (field, spec) in fields {
                if let Some(unit) = spec["unit"].as_str().filter(|u| !u.is_empty()) {
                    units.insert(field.clone(), unit.to_owned());
                }
            }
        }
        self.units.insert(device.to_owned(), units);
    }

    /// `a=1 unit b=true ...` in key order, with units where the device's meta gives one.
    pub fn fields(&self, device: &str, data: &Map<String, Value>) -> String {
        let units = self.units.get(device);
        let parts: Vec<String> = data
            .iter()
            .map(|(key, value)| {
                let value = format_value(value);
                match units.and_then(|u| u.get(key)) {
                    Some(unit) => format!("{key}={value} {unit}"),
                    None => format!("{key}={value}"),
                }
            })
            .collect();
        parts.join(" ")
    }

    /// The lines for one message: one per event, one per device of a snapshot. `now_ms` is the
    /// time shown for events that carry none.
    pub fn lines(&mut self, message: &Message, now_ms: i64) -> Vec<String> {
        let now = self.clock.time_of_day(now_ms);
        let line = match &message.msg {
            ServerMsg::Snapshot { devices, .. } => {
                return devices
                    .iter()
                    .map(|d| self.snapshot_line(d, now_ms))
                    .collect();
            }
            ServerMsg::Telemetry {
                device,
                seq,
                ts,
                data,
            } => format!(
                "{} {device} #{seq} {}",
                self.clock.time_of_day(*ts),
                self.fields(device, data)
            ),
            ServerMsg::State { device, ts, state } => format!(
                "{} {device} state {}",
                self.clock.time_of_day(*ts),
                self.fields(device, state)
            ),
            ServerMsg::Presence { device, presence } => {
                format!("{now} {device} presence={presence}")
            }
            ServerMsg::Device {
                device,
                meta,
                removed,
            } => {
                self.learn_meta(device, meta.as_ref());
                if *removed {
                    format!("{now} {device} removed")
                } else {
                    format!("{now} {device} meta {}", describe(meta.as_ref()))
                }
            }
            ServerMsg::Broker { status } => format!("{now} broker link {status}"),
            ServerMsg::Lagging { conflated } => {
                format!("{now} lagging: {conflated} telemetry messages were replaced by newer ones")
            }
            ServerMsg::Permissions(p) => format!(
                "{now} permissions changed: read {:?} control {:?}",
                p.read, p.control
            ),
            ServerMsg::Error { code, message } => format!("{now} error {code}: {message}"),
            ServerMsg::CommandStatus { .. } => format!("{now} {}", status_line(message)),
            _ => format!("{now} {}", message.raw),
        };
        vec![line]
    }

    fn snapshot_line(&mut self, d: &DeviceSnapshot, now_ms: i64) -> String {
        self.learn_meta(&d.id, d.meta.as_ref());
        let mut line = format!(
            "{} {} presence={} #{}",
            self.clock.time_of_day(d.ts.unwrap_or(now_ms)),
            d.id,
            d.presence,
            d.seq
        );
        if let Some(telemetry) = d.telemetry.as_ref().filter(|t| !t.is_empty()) {
            line.push(' ');
            line.push_str(&self.fields(&d.id, telemetry));
        }
        if let Some(state) = d.state.as_ref().filter(|s| !s.is_empty()) {
            line.push_str(" | state ");
            line.push_str(&self.fields(&d.id, state));
        }
        line
    }

    /// One history sample: full date and time, sequence number, fields with units.
    pub fn sample_line(&self, device: &str, sample: &Sample) -> String {
        format!(
            "{} #{} {}",
            self.clock.date_time(sample.ts),
            sample.seq,
            self.fields(device, &sample.data)
        )
    }
}

/// `light "Kitchen light" in Kitchen` from a meta, as far as it says.
fn describe(meta: Option<&Value>) -> String {
    let Some(meta) = meta else {
        return "cleared".to_owned();
    };
    let mut parts = vec![meta["kind"].as_str().unwrap_or("device").to_owned()];
    if let Some(name) = meta["name"].as_str() {
        parts.push(format!("{name:?}"));
    }
    if let Some(room) = meta["room"].as_str() {
        parts.push(format!("in {room}"));
    }
    parts.join(" ")
}

/// A value as typed on a command line: bare strings unless they need quotes, JSON otherwise.
pub fn format_value(value: &Value) -> String {
    match value {
        Value::String(s)
            if !s.is_empty()
                && !s.chars().any(|c| c.is_whitespace() || c == '=' || c == '"')
                && serde_json::from_str::<Value>(s).is_err() =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// `light-1: ok {"on":true}`, `light-1: rejected: brightness must be at most 100`.
pub fn status_line(message: &Message) -> String {
    let ServerMsg::CommandStatus {
        device,
        status,
        result,
        error,
        ..
    } = &message.msg
    else {
        return message.raw.to_string();
    };
    let name = message.raw["status"].as_str().unwrap_or("?");
    let mut line = format!("{device}: {name}");
    if let Some(error) = error {
        line.push_str(": ");
        line.push_str(error);
    }
    if let Some(result) = result.as_ref().filter(|r| !r.is_null()) {
        if *status == CommandStatus::Ok {
            line.push(' ');
            line.push_str(&result.to_string());
        }
    }
    line
}

/// Rows of `list`: id, kind, name, room, presence.
pub fn list_table(devices: &[ListEntry]) -> String {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                dash(&d.kind),
                dash(&d.name),
                dash(&d.room),
                d.presence.clone(),
            ]
        })
        .collect();
    table(&["ID", "KIND", "NAME", "ROOM", "PRESENCE"], &rows)
}

/// Left-aligned columns two spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        line.trim_end().to_owned()
    };
    let mut out = render(&mut headers.iter().copied());
    for row in rows {
        out.push('\n');
        out.push_str(&render(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
