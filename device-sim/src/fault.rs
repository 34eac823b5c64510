//! Faults a scenario injects into its fleet: what each one does, which devices it hits (chosen
//! deterministically from the seed), and the broken payloads it sends. No I/O here: the fleet
//! applies faults to running devices (see [`crate::Fleet::fire`]).

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use serde_json::{Map, Value};
use wildmatch::WildMatch;

use crate::behaviour::Latency;
use crate::rng::SplitMix64;

/// A broken payload a misbehaving device publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPayload {
    /// Random bytes that are neither JSON nor CBOR.
    Garbage,
    /// A real telemetry message cut short.
    Truncated,
    /// Valid JSON that is not a map (`[1,2,3]`).
    NotAMap,
    /// A map whose values have the wrong types (strings for numbers and so on).
    WrongTypes,
    /// Zero bytes. On a retained `meta` this removes the device, as the contract says.
    Empty,
}

impl BadPayload {
    pub const ALL: [BadPayload; 5] = [
        BadPayload::Garbage,
        BadPayload::Truncated,
        BadPayload::NotAMap,
        BadPayload::WrongTypes,
        BadPayload::Empty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadPayload::Garbage => "garbage",
            BadPayload::Truncated => "truncated",
            BadPayload::NotAMap => "not_a_map",
            BadPayload::WrongTypes => "wrong_types",
            BadPayload::Empty => "empty",
        }
    }

    pub fn parse(s: &str) -> Option<BadPayload> {
        BadPayload::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The bytes to publish; `good` is a real reading of the device, `encoded` its JSON form.
    pub fn bytes(self, rng: &mut SplitMix64, good: &Map<String, Value>, encoded: &[u8]) -> Vec<u8> {
        match self {
            BadPayload::Garbage => {
                // 0xff is CBOR's "break" code, which cannot start an item, and it is not `{`.
                let mut bytes = vec![0xff; rng.random_range(9..64)];
                rng.fill_bytes(&mut bytes[1..]);
                bytes
            }
            BadPayload::Truncated if encoded.len() > 2 => {
                encoded[..rng.random_range(1..encoded.len() - 1)].to_vec()
            }
            BadPayload::Truncated => b"{\"".to_vec(),
            BadPayload::NotAMap => b"[1,2,3]".to_vec(),
            BadPayload::WrongTypes => {
                let wrong: Map<String, Value> = good
                    .iter()
                    .map(|(k, v)| {
                        let w = match v {
                            Value::Number(_) => Value::from("not a number"),
                            Value::Bool(_) => Value::from(17),
                            Value::String(_) => Value::from(vec![1, 2]),
                            _ => Value::Bool(true),
                        };
                        (k.clone(), w)
                    })
                    .collect();
                serde_json::to_vec(&wrong).unwrap_or_default()
            }
            BadPayload::Empty => Vec::new(),
        }
    }
}

/// A device topic a fault can write to (devices may only write their own topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTopic {
    Meta,
    Status,
    Telemetry,
    State,
    Ack,
}

impl DeviceTopic {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceTopic::Meta => "meta",
            DeviceTopic::Status => "status",
            DeviceTopic::Telemetry => "telemetry",
            DeviceTopic::State => "state",
            DeviceTopic::Ack => "ack",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceTopic> {
        [
            DeviceTopic::Meta,
            DeviceTopic::Status,
            DeviceTopic::Telemetry,
            DeviceTopic::State,
            DeviceTopic::Ack,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// What a fault does to each device it hits.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Drop the connection (the broker fires the will, unless `graceful`); reconnect after `for`
    /// through the connection ramp.
    Disconnect { graceful: bool },
    /// Drop the connection; after `for`, every device reconnects at the same instant.
    ReconnectStorm,
    /// Down for `period`, up for `period`, over and over until `for` ends.
    Flap { period: Duration },
    /// Publish `messages` broken payloads on `telemetry`.
    Garbage { payload: BadPayload, messages: u32 },
    /// Send every telemetry message twice while active.
    Duplicate,
    /// Swap telemetry messages in pairs while active (their `ts` go backwards).
    Reorder,
    /// Stamp telemetry `ts` this many milliseconds off while active.
    ClockSkew { offset_ms: i64 },
    /// Read commands and never ack them while active.
    StopAcking,
    /// Ack commands late, with this delay, while active.
    SlowAck { latency: Latency },
    /// Publish a retained broken payload on one of the device's topics; after `for` (if given)
    /// the device publishes its real retained values again.
    RetainedJunk {
        topic: DeviceTopic,
        payload: BadPayload,
    },
}

impl FaultAction {
    /// The `type` of the fault in a scenario file.
    pub fn type_name(&self) -> &'static str {
        match self {
            FaultAction::Disconnect { .. } => "disconnect",
            FaultAction::ReconnectStorm => "reconnect_storm",
            FaultAction::Flap { .. } => "flap",
            FaultAction::Garbage { .. } => "garbage",
            FaultAction::Duplicate => "duplicate",
            FaultAction::Reorder => "reorder",
            FaultAction::ClockSkew { .. } => "clock_skew",
            FaultAction::StopAcking => "stop_acking",
            FaultAction::SlowAck { .. } => "slow_ack",
            FaultAction::RetainedJunk { .. } => "retained_junk",
        }
    }

    /// Whether devices go offline (an `offline_within` expectation can watch it).
    pub fn takes_devices_offline(&self) -> bool {
        matches!(
            self,
            FaultAction::Disconnect { .. } | FaultAction::ReconnectStorm | FaultAction::Flap { .. }
        )
    }

    /// Whether commands to the devices may go unanswered while it is active.
    pub fn disturbs_commands(&self) -> bool {
        self.takes_devices_offline()
            || matches!(self, FaultAction::StopAcking | FaultAction::SlowAck { .. })
    }
}

/// Which devices a fault hits: those matching `devices` (globs) and `kinds` (empty = all), then
/// `count` of them or a `share` (default: every match), chosen at random from the fault's seed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    pub devices: Vec<String>,
    pub kinds: Vec<String>,
    pub share: Option<f64>,
    pub count: Option<usize>,
}

/// One fault of a scenario's timeline (or fired by hand).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    /// When it fires, counted from the start of the run.
    pub at: Duration,
    /// How long it lasts (`for` in the file); `None` = until the end (or instantaneous).
    pub duration: Option<Duration>,
    pub select: Selector,
    pub action: FaultAction,
    /// The seed its choice of devices and payloads draws from.
    pub seed: u64,
}

impl Fault {
    /// A fault hitting every device, now, with no end.
    pub fn new(name: impl Into<String>, action: FaultAction) -> Fault {
        Fault {
            name: name.into(),
            at: Duration::ZERO,
            duration: None,
            select: Selector::default(),
            action,
            seed: 0,
        }
    }

    /// Indices into `devices` (`(id, kind)` in fleet order) this fault hits, in fleet order.
    /// The same fault (seed included) and the same fleet give the same choice.
    pub fn choose(&self, devices: &[(&str, &str)]) -> Vec<usize> {
        let patterns: Vec<WildMatch> = self
            .select
            .devices
            .iter()
            .map(|p| WildMatch::new(p))
            .collect();
        let mut matching: Vec<usize> = devices
            .iter()
            .enumerate()
            .filter(|(_, (id, kind))| {
                (patterns.is_empty() || patterns.iter().any(|p| p.matches(id)))
                    && (self.select.kinds.is_empty() || self.select.kinds.iter().any(|k| k == kind))
            })
            .map(|(i, _)| i)
            .collect();
        let wanted = match (self.select.count, self.select.share) {
            (Some(count), _) => count.min(matching.len()),
            (None, Some(share)) => {
                let n = (share.clamp(0.0, 1.0) * matching.len() as f64).round() as usize;
                // A positive share of a non-empty fleet hits at least one device.
                if share > 0.0 {
                    n.max(1).min(matching.len())
                } else {
                    0
                }
            }
            (None, None) => matching.len(),
        };
        let mut rng = SplitMix64::stream(self.seed, 0xc4_005e);
        matching.shuffle(&mut rng);
        matching.truncate(wanted);
        matching.sort_unstable();
        matching
    }
}

/// Fault modes a device is in right now; changed as faults start and end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Modes {
    pub duplicate: bool,
    pub reorder: bool,
    pub skew_ms: i64,
    pub acks: AckMode,
}

/// How a device treats acks under faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum AckMode {
    #[default]
    Normal,
    Stop,
    Slow(Latency),
}

/// A change of one mode, sent to a device when a fault starts or ends.
#[derive(Debug, Clone, PartialEq)]
pub enum ModeChange {
    Duplicate(bool),
    Reorder(bool),
    Skew(i64),
    Acks(AckMode),
}

impl Modes {
    pub fn apply(&mut self, change: ModeChange) {
        match change {
            ModeChange::Duplicate(on) => self.duplicate = on,
            ModeChange::Reorder(on) => self.reorder = on,
            ModeChange::Skew(ms) => self.skew_ms = ms,
            ModeChange::Acks(mode) => self.acks = mode,
        }
    }

    pub fn is_normal(&self) -> bool {
        *self == Modes::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet() -> Vec<(String, &'static str)> {
        (0..100)
            .map(|i| {
                (
                    format!("{}-{i:03}", if i % 2 == 0 { "light" } else { "plug" }),
                    if i % 2 == 0 { "light" } else { "plug" },
                )
            })
            .collect()
    }

    fn choose(fault: &Fault) -> Vec<usize> {
        let f = fleet();
        let refs: Vec<(&str, &str)> = f.iter().map(|(id, k)| (id.as_str(), *k)).collect();
        fault.choose(&refs)
    }

    #[test]
    fn choice_is_seeded_and_respects_filters() {
        let mut fault = Fault::new("f", FaultAction::Duplicate);
        assert_eq!(choose(&fault).len(), 100);
        fault.select.share = Some(0.2);
        fault.seed = 1;
        let a = choose(&fault);
        assert_eq!(a.len(), 20);
        assert_eq!(a, choose(&fault));
        fault.seed = 2;
        assert_ne!(a, choose(&fault));
        fault.select.kinds = vec!["plug".into()];
        assert!(choose(&fault).iter().all(|i| i % 2 == 1));
        assert_eq!(choose(&fault).len(), 10);
        fault.select = Selector {
            devices: vec!["light-00?".into()],
            count: Some(3),
            ..Selector::default()
        };
        let some = choose(&fault);
        assert_eq!(some.len(), 3);
        assert!(some.iter().all(|i| *i < 10 && i % 2 == 0), "{some:?}");
        fault.select = Selector {
            share: Some(0.001),
            ..Selector::default()
        };
        assert_eq!(
            choose(&fault).len(),
            1,
            "a positive share hits at least one device"
        );
        fault.select = Selector {
            share: Some(0.0),
            ..Selector::default()
        };
        assert!(choose(&fault).is_empty());
    }

    #[test]
    fn bad_payloads_are_bad() {
        let good = json!({"temperature": 21.5, "on": true, "mode": "heat"});
        let good = good.as_object().unwrap();
        let encoded = serde_json::to_vec(good).unwrap();
        let mut rng = SplitMix64::new(4);
        for kind in BadPayload::ALL {
            assert_eq!(BadPayload::parse(kind.as_str()), Some(kind));
            for _ in 0..50 {
                let bytes = kind.bytes(&mut rng, good, &encoded);
                let decoded = crate::codec::decode(&bytes);
                match kind {
                    BadPayload::WrongTypes => {
                        let map = decoded.unwrap();
                        assert_eq!(map["temperature"], "not a number");
                        assert_eq!(map["on"], 17);
                    }
                    _ => assert!(decoded.is_err(), "{kind:?} decoded: {bytes:?}"),
                }
            }
        }
        assert!(BadPayload::parse("nonsense").is_none());
    }

    #[test]
    fn modes_change_and_reset() {
        let mut modes = Modes::default();
        assert!(modes.is_normal());
        modes.apply(ModeChange::Skew(-5000));
        modes.apply(ModeChange::Acks(AckMode::Stop));
        assert_eq!((modes.skew_ms, modes.acks.clone()), (-5000, AckMode::Stop));
        modes.apply(ModeChange::Skew(0));
        modes.apply(ModeChange::Acks(AckMode::Normal));
        assert!(modes.is_normal());
        assert!(FaultAction::Flap {
            period: Duration::from_secs(1)
        }
        .takes_devices_offline());
        assert!(FaultAction::StopAcking.disturbs_commands());
        assert!(!FaultAction::Duplicate.disturbs_commands());
    }
}
