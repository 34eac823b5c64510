//! Checks a parsed scenario file and builds the ready-to-run [`Scenario`]: fleet groups, faults
//! and expectations (kind profiles are built in `kinds`). Every error names where it is.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use super::expand::{self, expand_pattern, IdVars};
use super::file::{self, ScenarioFile};
use super::kinds::{self, behaviour, latency};
use super::{BrokerSettings, Group, ObserverSettings, Scenario, ScenarioError};
use crate::expect::{Check, Expectation};
use crate::fault::{BadPayload, DeviceTopic, Fault, FaultAction, Selector};
use crate::generator::SimClock;
use crate::kind::Kind;
use crate::profile::Profile;
use crate::rng::SplitMix64;
use crate::spec::{is_valid_device_id, MAX_DEVICES, ROOMS};

/// Shortest telemetry interval a scenario may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const DEFAULT_SEED: u64 = 1;

pub(super) type Res<T> = Result<T, (String, String)>;

pub(super) fn bad<T>(at: impl Into<String>, message: impl Into<String>) -> Res<T> {
    Err((at.into(), message.into()))
}

/// The seed of the `index`th fault of a scenario seeded with `seed`.
pub(super) fn fault_seed(seed: u64, index: usize) -> u64 {
    SplitMix64::stream(seed, 0xfa_0000 + index as u64).next_u64()
}

pub(super) fn build(text: &str, path: &str, base: &Path) -> Result<Scenario, ScenarioError> {
    let parsed: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    from_file(parsed, base).map_err(|(at, message)| ScenarioError::Invalid {
        path: path.to_string(),
        at,
        message,
    })
}

fn share(at: &str, v: Option<f64>, default: f64) -> Res<f64> {
    let v = v.unwrap_or(default);
    if !(0.0..=1.0).contains(&v) {
        return bad(at, format!("must be between 0 and 1, got {v}"));
    }
    Ok(v)
}

fn from_file(f: ScenarioFile, base: &Path) -> Res<Scenario> {
    let seed = f.seed.unwrap_or(DEFAULT_SEED);
    let clock = SimClock {
        start_secs: match &f.start_time {
            Some(t) => parse_time_of_day(t).ok_or_else(|| {
                (
                    "start_time".to_string(),
                    format!("'{t}' is not a time like 07:30"),
                )
            })?,
            None => SimClock::default().start_secs,
        },
        time_scale: match f.time_scale {
            Some(s) if !(s.is_finite() && s > 0.0) => {
                return bad("time_scale", format!("must be > 0, got {s}"))
            }
            Some(s) => s,
            None => 1.0,
        },
    };
    if f.duration.is_some_and(|d| d.is_zero()) {
        return bad("duration", "must be > 0");
    }
    let custom = kinds::profiles(&f.kinds, clock)?;
    let default_rooms: Vec<String> = match &f.rooms {
        None => ROOMS.iter().map(|r| r.to_string()).collect(),
        Some(rooms) if rooms.is_empty() => {
            return bad(
                "rooms",
                "must name at least one room (leave it out for the default ones)",
            )
        }
        Some(rooms) => rooms.clone(),
    };
    let groups = groups(&f.fleet, &custom, &default_rooms)?;
    check_ids(&groups, seed)?;
    let faults = faults(&f.faults, &groups, seed)?;
    let expectations = expectations(&f.expect, &faults)?;
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| base.join(p));
    let broker = BrokerSettings {
        address: f.broker.address.clone(),
        ca: path(&f.broker.ca),
        ca_key: path(&f.broker.ca_key),
        cert: path(&f.broker.cert),
        key: path(&f.broker.key),
        prefix: f.broker.prefix.clone(),
        keep_alive: f.broker.keep_alive,
        connect_rate: match f.broker.connect_rate {
            Some(r) if !(r.is_finite() && r > 0.0) => {
                return bad("broker.connect_rate", format!("must be > 0, got {r}"))
            }
            r => r,
        },
    };
    if broker.ca_key.is_some() && (broker.cert.is_some() || broker.key.is_some()) {
        return bad(
            "broker",
            "give either ca_key (a certificate per device) or cert and key (one for all), not both",
        );
    }
    if broker.cert.is_some() != broker.key.is_some() {
        return bad("broker", "cert and key go together");
    }
    let observer = ObserverSettings {
        bridge: f.observer.bridge.clone(),
        ca: path(&f.observer.ca),
        cert: path(&f.observer.cert),
        key: path(&f.observer.key),
        server_name: f.observer.server_name.clone(),
    };
    if observer.cert.is_some() != observer.key.is_some() {
        return bad("observer", "cert and key go together");
    }
    Ok(Scenario {
        name: f.name.unwrap_or_else(|| "scenario".to_string()),
        description: f.description.unwrap_or_default(),
        seed,
        duration: f.duration,
        broker,
        observer,
        groups,
        faults,
        expectations,
    })
}

/// `HH:MM` or `HH:MM:SS` to seconds after midnight.
fn parse_time_of_day(s: &str) -> Option<f64> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let nums: Vec<u32> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (h, m, sec) = (nums[0], nums[1], nums.get(2).copied().unwrap_or(0));
    (h < 24 && m < 60 && sec < 60).then(|| f64::from(h * 3600 + m * 60 + sec))
}

fn groups(
    sections: &[file::GroupSection],
    custom: &BTreeMap<String, Arc<Profile>>,
    default_rooms: &[String],
) -> Res<Vec<Group>> {
    if sections.is_empty() {
        return bad("fleet", "a scenario needs at least one [[fleet]] group");
    }
    let total = sections
        .iter()
        .map(|g| g.count)
        .fold(0, usize::saturating_add);
    if total > MAX_DEVICES {
        return bad(
            "fleet",
            format!("{total} devices; a scenario has at most {MAX_DEVICES}"),
        );
    }
    let mut kind_totals: BTreeMap<&str, usize> = BTreeMap::new();
    for g in sections {
        *kind_totals.entry(g.kind.as_str()).or_default() += g.count;
    }
    let mut out = Vec::new();
    for (i, g) in sections.iter().enumerate() {
        let at = |field: &str| format!("fleet[{i}].{field}");
        let base = match custom.get(&g.kind) {
            Some(p) => p.clone(),
            None => match g.kind.parse::<Kind>() {
                Ok(kind) => Profile::builtin(kind),
                Err(_) => {
                    let mut known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                    known.extend(custom.keys().map(String::as_str));
                    return bad(
                        at("kind"),
                        format!("unknown kind '{}' (known: {})", g.kind, known.join(", ")),
                    );
                }
            },
        };
        let profile = match &g.behaviour {
            Some(b) => Arc::new(base.with_behaviour(behaviour(&at("behaviour"), b, &base)?)),
            None => base,
        };
        if g.count == 0 {
            return bad(at("count"), "must be at least 1");
        }
        let interval = g.interval.unwrap_or(Duration::from_secs(1));
        if interval < MIN_INTERVAL {
            return bad(at("interval"), "must be at least 10ms");
        }
        let qos = g.qos.unwrap_or(0);
        if qos > 1 {
            return bad(at("qos"), "telemetry QoS must be 0 or 1");
        }
        let rooms = g.rooms.clone().unwrap_or_else(|| default_rooms.to_vec());
        if rooms.is_empty() {
            return bad(at("rooms"), "must name at least one room");
        }
        let total = kind_totals.get(g.kind.as_str()).copied().unwrap_or(g.count);
        let id =
            g.id.clone()
                .unwrap_or_else(|| expand::default_id(total.to_string().len().max(3)));
        let probe = IdVars {
            kind: &g.kind,
            n: 1,
            k: 1,
            i: 1,
            group: i + 1,
        };
        expand_pattern(&id, &|v| probe.get(v)).map_err(|e| (at("id"), e))?;
        if let Some(name) = &g.name {
            let lookup = |v: &str| match v {
                "room" | "label" | "id" => Some(String::new()),
                other => probe.get(other),
            };
            expand_pattern(name, &lookup).map_err(|e| (at("name"), e))?;
        }
        out.push(Group {
            profile,
            count: g.count,
            id,
            name: g.name.clone(),
            rooms,
            interval,
            cbor_share: share(&at("cbor_share"), g.cbor_share, 0.0)?,
            qos,
        });
    }
    Ok(out)
}

fn check_ids(groups: &[Group], seed: u64) -> Res<()> {
    let mut seen = HashSet::new();
    for d in expand::devices(groups, seed) {
        if !is_valid_device_id(&d.id) {
            return bad(
                "fleet",
                format!(
                    "device id '{}' is not 1-64 characters of A-Z a-z 0-9 _ -",
                    d.id
                ),
            );
        }
        if !seen.insert(d.id.clone()) {
            return bad(
                "fleet",
                format!(
                    "two devices get the id '{}'; give the groups distinct id patterns",
                    d.id
                ),
            );
        }
    }
    Ok(())
}

const FAULT_TYPES: &[&str] = &[
    "disconnect",
    "reconnect_storm",
    "flap",
    "garbage",
    "duplicate",
    "reorder",
    "clock_skew",
    "stop_acking",
    "slow_ack",
    "retained_junk",
];

fn faults(sections: &[file::FaultSection], groups: &[Group], seed: u64) -> Res<Vec<Fault>> {
    let kinds: HashSet<&str> = groups.iter().map(|g| g.profile.kind.as_str()).collect();
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, f) in sections.iter().enumerate() {
        let at = |field: &str| format!("faults[{i}].{field}");
        let t = f.kind.as_str();
        if !FAULT_TYPES.contains(&t) {
            return bad(
                at("type"),
                format!(
                    "unknown fault type '{t}' (known: {})",
                    FAULT_TYPES.join(", ")
                ),
            );
        }
        // Which of the type-specific settings this type takes; anything else given is a mistake.
        let allowed: &[&str] = match t {
            "disconnect" => &["graceful"],
            "flap" => &["period"],
            "garbage" => &["payload", "messages"],
            "clock_skew" => &["offset"],
            "slow_ack" => &["latency"],
            "retained_junk" => &["topic", "payload"],
            _ => &[],
        };
        let given = [
            ("graceful", f.graceful.is_some()),
            ("period", f.period.is_some()),
            ("payload", f.payload.is_some()),
            ("messages", f.messages.is_some()),
            ("offset", f.offset.is_some()),
            ("latency", f.latency.is_some()),
            ("topic", f.topic.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(k, g)| *g && !allowed.contains(k)) {
            return bad(at(key), format!("does not apply to a '{t}' fault"));
        }
        let payload = |default: BadPayload| -> Res<BadPayload> {
            match &f.payload {
                None => Ok(default),
                Some(p) => BadPayload::parse(p).ok_or_else(|| {
                    let known: Vec<_> = BadPayload::ALL.iter().map(|p| p.as_str()).collect();
                    (
                        at("payload"),
                        format!("unknown payload '{p}' (known: {})", known.join(", ")),
                    )
                }),
            }
        };
        let action = match t {
            "disconnect" => FaultAction::Disconnect {
                graceful: f.graceful.unwrap_or(false),
            },
            "reconnect_storm" => FaultAction::ReconnectStorm,
            "flap" => {
                let period = f
                    .period
                    .ok_or_else(|| (at("period"), "a flap needs a period".to_string()))?;
                if period < Duration::from_millis(100) {
                    return bad(at("period"), "must be at least 100ms");
                }
                if f.duration.is_none() {
                    return bad(at("for"), "a flap needs to know how long it lasts");
                }
                FaultAction::Flap { period }
            }
            "garbage" => FaultAction::Garbage {
                payload: payload(BadPayload::Garbage)?,
                messages: match f.messages.unwrap_or(1) {
                    0 => return bad(at("messages"), "must be at least 1"),
                    n => n,
                },
            },
            "duplicate" => FaultAction::Duplicate,
            "reorder" => FaultAction::Reorder,
            "clock_skew" => {
                let offset = f.offset.as_deref().ok_or_else(|| {
                    (
                        at("offset"),
                        "a clock skew needs an offset like \"-5m\"".to_string(),
                    )
                })?;
                FaultAction::ClockSkew {
                    offset_ms: crate::duration::parse_offset_ms(offset)
                        .map_err(|e| (at("offset"), e))?,
                }
            }
            "stop_acking" => FaultAction::StopAcking,
            "slow_ack" => {
                let l = f
                    .latency
                    .as_ref()
                    .ok_or_else(|| (at("latency"), "a slow_ack needs a latency".to_string()))?;
                FaultAction::SlowAck {
                    latency: latency(&at("latency"), l)?,
                }
            }
            _ => FaultAction::RetainedJunk {
                topic: match &f.topic {
                    None => DeviceTopic::Meta,
                    Some(s) => DeviceTopic::parse(s).ok_or_else(|| {
                        (
                            at("topic"),
                            format!("'{s}' is not one of meta, status, telemetry, state, ack"),
                        )
                    })?,
                },
                payload: payload(BadPayload::Garbage)?,
            },
        };
        if f.share.is_some() && f.count.is_some() {
            return bad(at("share"), "give share or count, not both");
        }
        if let Some(s) = f.share {
            if !(s > 0.0 && s <= 1.0) {
                return bad(
                    at("share"),
                    format!("must be above 0 and at most 1, got {s}"),
                );
            }
        }
        if f.count == Some(0) {
            return bad(at("count"), "must be at least 1");
        }
        if f.duration.is_some_and(|d| d.is_zero()) {
            return bad(at("for"), "must be > 0");
        }
        if let Some(k) = f.kinds.iter().find(|k| !kinds.contains(k.as_str())) {
            return bad(at("kinds"), format!("no fleet group has kind '{k}'"));
        }
        let name = f.name.clone().unwrap_or_else(|| format!("{t}-{}", i + 1));
        if !names.insert(name.clone()) {
            return bad(at("name"), format!("two faults are called '{name}'"));
        }
        out.push(Fault {
            name,
            at: f.at,
            duration: f.duration,
            select: Selector {
                devices: f.devices.clone(),
                kinds: f.kinds.clone(),
                share: f.share,
                count: f.count,
            },
            action,
            seed: fault_seed(seed, i),
        });
    }
    Ok(out)
}

const EXPECT_TYPES: &[&str] = &[
    "devices_visible",
    "commands_answered",
    "offline_within",
    "no_sequence_gaps",
];

fn expectations(sections: &[file::ExpectSection], faults: &[Fault]) -> Res<Vec<Expectation>> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, e) in sections.iter().enumerate() {
        let at = |field: &str| format!("expect[{i}].{field}");
        let t = e.kind.as_str();
        let allowed: &[&str] = match t {
            "devices_visible" => &["within"],
            "commands_answered" => &["within", "rate", "min_success", "after"],
            "offline_within" => &["within", "fault", "online_again_within"],
            "no_sequence_gaps" => &[],
            _ => {
                return bad(
                    at("type"),
                    format!(
                        "unknown expectation '{t}' (known: {})",
                        EXPECT_TYPES.join(", ")
                    ),
                )
            }
        };
        let given = [
            ("within", e.within.is_some()),
            ("rate", e.rate.is_some()),
            ("min_success", e.min_success.is_some()),
            ("after", e.after.is_some()),
            ("fault", e.fault.is_some()),
            ("online_again_within", e.online_again_within.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(k, g)| *g && !allowed.contains(k)) {
            return bad(at(key), format!("does not apply to '{t}'"));
        }
        let within = || {
            e.within
                .ok_or_else(|| (at("within"), format!("'{t}' needs within")))
        };
        let check = match t {
            "devices_visible" => Check::DevicesVisible { within: within()? },
            "commands_answered" => {
                if out
                    .iter()
                    .any(|x: &Expectation| matches!(x.check, Check::CommandsAnswered { .. }))
                {
                    return bad(
                        at("type"),
                        "one commands_answered per scenario: its commands are judged together",
                    );
                }
                let rate = e.rate.unwrap_or(1.0);
                if !(rate > 0.0 && rate <= 1000.0) {
                    return bad(
                        at("rate"),
                        format!("must be above 0 and at most 1000 per second, got {rate}"),
                    );
                }
                Check::CommandsAnswered {
                    rate,
                    within: within()?,
                    min_success: share(&at("min_success"), e.min_success, 1.0)?,
                    after: e.after.unwrap_or(Duration::ZERO),
                }
            }
            "offline_within" => {
                if let Some(name) = &e.fault {
                    match faults.iter().find(|f| &f.name == name) {
                        None => return bad(at("fault"), format!("no fault is called '{name}'")),
                        Some(f) if !f.action.takes_devices_offline() => {
                            return bad(
                                at("fault"),
                                format!(
                                    "'{name}' is a {} fault, which takes no device offline",
                                    f.action.type_name()
                                ),
                            )
                        }
                        Some(_) => {}
                    }
                } else if !faults.iter().any(|f| f.action.takes_devices_offline()) {
                    return bad(
                        at("type"),
                        "no disconnect, reconnect_storm or flap fault to watch",
                    );
                }
                Check::OfflineWithin {
                    fault: e.fault.clone(),
                    within: within()?,
                    online_again_within: e.online_again_within,
                }
            }
            _ => Check::NoSequenceGaps,
        };
        let name = e.name.clone().unwrap_or_else(|| match &e.fault {
            Some(f) => format!("{t} ({f})"),
            None => t.to_string(),
        });
        if !names.insert(name.clone()) {
            return bad(
                at("name"),
                format!("two expectations are called '{name}'; name them"),
            );
        }
        out.push(Expectation { name, check });
    }
    Ok(out)
}
