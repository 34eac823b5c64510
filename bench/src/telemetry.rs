//! The benchmark's telemetry: a 200-byte JSON payload that carries its own send time, and the
//! parsers that read it back on every receiving path (bridge frames, raw MQTT payloads).
//!
//! Publishers and receivers share one process, so the send time is nanoseconds on a monotonic
//! clock started once per process: no wall-clock steps, no cross-process clock skew.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Size of every telemetry payload, as the benchmark's contract says.
pub const PAYLOAD_BYTES: usize = 200;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process first asked; monotonic.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The [`Instant`] that [`now_ns`] will report as `ns`.
pub fn instant_of(ns: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + std::time::Duration::from_nanos(ns)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the receivers read back from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Sample {
    /// Send time, [`now_ns`].
    pub t_ns: u64,
    /// Which measurement this message belongs to; stragglers of an earlier one are ignored.
    pub trial: u32,
    /// Per-trial message number, over all devices.
    pub seq: u64,
}

/// Writes a telemetry payload of exactly [`PAYLOAD_BYTES`] bytes into `out` (cleared first):
/// a plausible sensor reading, the sample's fields, and a `note` padding it to size.
pub fn encode(out: &mut String, sample: Sample) {
    out.clear();
    let s = sample.seq;
    // Values move with seq so that nothing downstream can cache a constant payload.
    let _ = write!(
        out,
        r#"{{"ts":{},"t_ns":{},"trial":{},"seq":{},"temperature":{}.{:02},"humidity":{}.{},"battery":{},"rssi":-{},"status":"ok","note":""#,
        wall_ms(),
        sample.t_ns,
        sample.trial,
        s,
        18 + s % 7,
        s % 100,
        40 + s % 20,
        s % 10,
        100 - s % 50,
        40 + s % 50,
    );
    let pad = PAYLOAD_BYTES.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
}

/// Reads the sample out of a raw device payload (what MQTT subscribers get).
pub fn parse_payload(payload: &[u8]) -> Option<Sample> {
    serde_json::from_slice(payload).ok()
}

/// A message from the bridge, reduced to what the benchmark looks at.
#[derive(Debug, Deserialize)]
pub struct BridgeMsg<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// `telemetry`: the device's payload, without the `ts` the bridge lifted out.
    #[serde(default)]
    pub data: Option<Sample>,
    /// `command_status`: the request id it answers and how far the command got.
    #[serde(default, borrow)]
    pub req: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub status: Option<Cow<'a, str>>,
    /// `command_status` `ok`: what the device answered.
    #[serde(default)]
    pub result: Option<AckResult>,
    /// `welcome`: whether the bridge's broker link is up.
    #[serde(default, borrow)]
    pub broker: Option<Cow<'a, str>>,
}

/// The benchmark devices' answer to a command: `t_ns` is when the command reached the device,
/// on the benchmark process's clock (see [`now_ns`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AckResult {
    #[serde(default)]
    pub t_ns: u64,
}

pub fn parse_bridge(text: &str) -> Option<BridgeMsg<'_>> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_200_bytes_of_json_and_reads_back() {
        let mut out = String::new();
        for (t_ns, seq) in [(0, 0), (u64::MAX / 2, 1), (123_456_789, 999_999_999)] {
            let sample = Sample {
                t_ns,
                trial: 3,
                seq,
            };
            encode(&mut out, sample);
            assert_eq!(out.len(), PAYLOAD_BYTES, "{out}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(v["ts"].as_u64().is_some() && v["temperature"].as_f64().is_some());
            assert_eq!(parse_payload(out.as_bytes()), Some(sample));
        }
    }

    #[test]
    fn bridge_frames_parse() {
        let t = r#"{"type":"telemetry","device":"d1","seq":4,"ts":1,"data":{"t_ns":5,"trial":2,"seq":9,"note":"x"}}"#;
        let m = parse_bridge(t).unwrap();
        assert_eq!(m.kind, "telemetry");
        assert_eq!(
            m.data,
            Some(Sample {
                t_ns: 5,
                trial: 2,
                seq: 9
            })
        );
        let c = r#"{"type":"command_status","req":"c7","id":"b-1","device":"d1","status":"ok","result":{}}"#;
        let m = parse_bridge(c).unwrap();
        assert_eq!(
            (m.req.as_deref(), m.status.as_deref()),
            (Some("c7"), Some("ok"))
        );
        assert_eq!(m.result, Some(AckResult { t_ns: 0 }));
        let c =
            r#"{"type":"command_status","req":"c8","status":"ok","result":{"on":true,"t_ns":42}}"#;
        assert_eq!(
            parse_bridge(c).unwrap().result,
            Some(AckResult { t_ns: 42 })
        );
        assert!(parse_bridge("not json").is_none());
    }

    #[test]
    fn clock_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
