//! Scenario loading: every section parses into what it says, the same seed gives the same fleet,
//! faults and readings, and mistakes are refused with the place they are at.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::behaviour::{Condition, Latency};
use crate::expect::Check;
use crate::fault::{BadPayload, DeviceTopic, FaultAction};
use crate::kind::Kind;
use crate::sim::Sim;

const FULL: &str = r#"
name = "test home"
seed = 11
duration = "30s"
start_time = "06:00"
time_scale = 60
rooms = ["Kitchen", "Hall"]

[broker]
address = "localhost:8883"
ca = "certs/ca.pem"
ca_key = "certs/ca.key"
connect_rate = 50

[observer]
bridge = "localhost:8443"
cert = "certs/users/ci.pem"
key = "certs/users/ci.key"

[kinds.fan]
label = "Ceiling fan"
[kinds.fan.controls.on]
type = "bool"
initial = true
[kinds.fan.controls.speed]
type = "int"
min = 0
max = 3
step = 1
initial = 2
[kinds.fan.telemetry.rpm]
type = "int"
unit = "rpm"
min = 0
max = 1500
only_when = "on"
sim = { model = "control", control = "speed", scale = 400, noise = 5 }
[kinds.fan.telemetry.temperature]
type = "float"
unit = "°C"
min = 10
max = 35
sim = { model = "daily", low = 16, high = 24, peak_hour = 15 }
[kinds.fan.telemetry.energy]
type = "float"
sim = { model = "counter", rate = 0.01 }
only_when = "on"
[kinds.fan.behaviour]
ack_latency = { dist = "uniform", min = "20ms", max = "80ms" }
failure_rate = 0.1
failure_error = "motor jammed"
[[kinds.fan.behaviour.reject]]
control = "speed"
above = 2
if_state = { on = false }
error = "turn it on first"

[[fleet]]
kind = "fan"
count = 4
id = "fan-{n:02}"
name = "{room} fan {n}"

[[fleet]]
kind = "light"
count = 5
cbor_share = 0.5
interval = "500ms"
rooms = ["Office"]
behaviour = { ignore_rate = 0.2 }

[[fleet]]
kind = "sensor"
count = 3
qos = 1

[[faults]]
name = "outage"
type = "disconnect"
at = "5s"
for = "3s"
share = 0.5

[[faults]]
type = "garbage"
at = "8s"
count = 2
kinds = ["light"]
payload = "truncated"
messages = 3

[[faults]]
type = "clock_skew"
at = "1s"
offset = "-5m"
devices = ["fan-*"]

[[faults]]
type = "slow_ack"
at = "2s"
for = "10s"
latency = { dist = "exponential", mean = "2s" }

[[faults]]
type = "retained_junk"
at = "3s"
topic = "state"
count = 1

[[faults]]
type = "flap"
at = "4s"
for = "6s"
period = "1s"
count = 1

[[expect]]
type = "devices_visible"
within = "10s"

[[expect]]
type = "commands_answered"
rate = 2
within = "3s"
min_success = 0.9

[[expect]]
type = "offline_within"
fault = "outage"
within = "5s"
online_again_within = "10s"

[[expect]]
type = "no_sequence_gaps"
"#;

fn load(text: &str) -> Scenario {
    match Scenario::from_toml(text, Path::new("/base")) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn error(text: &str) -> String {
    match Scenario::from_toml(text, Path::new(".")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_section_is_read() {
    let s = load(FULL);
    assert_eq!(
        (s.name.as_str(), s.seed(), s.duration),
        ("test home", 11, Some(Duration::from_secs(30)))
    );
    assert_eq!(s.broker.address.as_deref(), Some("localhost:8883"));
    assert_eq!(
        s.broker.ca_key.as_deref(),
        Some(Path::new("/base/certs/ca.key"))
    );
    assert_eq!(s.broker.connect_rate, Some(50.0));
    assert_eq!(
        s.observer.cert.as_deref(),
        Some(Path::new("/base/certs/users/ci.pem"))
    );
    assert_eq!(s.device_count(), 12);

    let fan = &s.groups[0].profile;
    assert_eq!(fan.kind.as_str(), "fan");
    assert_eq!(fan.actions, ["set"]);
    assert_eq!(
        fan.behaviour.ack_latency,
        Latency::Uniform {
            min: Duration::from_millis(20),
            max: Duration::from_millis(80)
        }
    );
    assert_eq!(fan.behaviour.reject[0].condition, Condition::Above(2.0));
    assert_eq!(fan.behaviour.failure_error, "motor jammed");
    let meta: Value = serde_json::from_slice(&fan.meta_json("Hall fan 1", "Hall")).unwrap();
    assert_eq!(meta["kind"], "fan");
    assert_eq!(
        meta["controls"]["speed"],
        json!({"type": "int", "min": 0, "max": 3, "step": 1})
    );
    assert_eq!(meta["telemetry"]["rpm"]["unit"], "rpm");
    let light = &s.groups[1].profile;
    assert_eq!(light.kind, Kind::Light);
    assert_eq!(light.behaviour.ignore_rate, 0.2);
    assert_eq!(s.groups[1].interval, Duration::from_millis(500));
    assert_eq!(s.groups[2].qos, 1);

    let devices = s.devices();
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "fan-01",
            "fan-02",
            "fan-03",
            "fan-04",
            "light-001",
            "light-002",
            "light-003",
            "light-004",
            "light-005",
            "sensor-001",
            "sensor-002",
            "sensor-003"
        ]
    );
    assert!(devices[..4].iter().all(|d| d
        .name
        .ends_with(&format!("fan {}", &d.id[5..].trim_start_matches('0')))
        && ["Kitchen", "Hall"].contains(&d.room.as_str())));
    assert!(devices[4..9].iter().all(|d| d.room == "Office"));

    let f = s.faults();
    assert_eq!(f.len(), 6);
    assert_eq!(f[0].name, "outage");
    assert_eq!(f[0].action, FaultAction::Disconnect { graceful: false });
    assert_eq!(f[1].name, "garbage-2");
    assert_eq!(
        f[1].action,
        FaultAction::Garbage {
            payload: BadPayload::Truncated,
            messages: 3
        }
    );
    assert_eq!(
        f[2].action,
        FaultAction::ClockSkew {
            offset_ms: -300_000
        }
    );
    assert_eq!(
        f[3].action,
        FaultAction::SlowAck {
            latency: Latency::Exponential {
                mean: Duration::from_secs(2)
            }
        }
    );
    assert_eq!(
        f[4].action,
        FaultAction::RetainedJunk {
            topic: DeviceTopic::State,
            payload: BadPayload::Garbage
        }
    );
    assert_eq!(
        f[5].action,
        FaultAction::Flap {
            period: Duration::from_secs(1)
        }
    );

    let e = &s.expectations;
    assert_eq!(
        e[0].check,
        Check::DevicesVisible {
            within: Duration::from_secs(10)
        }
    );
    assert_eq!(
        e[1].check,
        Check::CommandsAnswered {
            rate: 2.0,
            within: Duration::from_secs(3),
            min_success: 0.9,
            after: Duration::ZERO
        }
    );
    assert_eq!(e[2].name, "offline_within (outage)");
    assert_eq!(e[3].check, Check::NoSequenceGaps);
}

fn fault_choices(s: &Scenario) -> Vec<Vec<usize>> {
    let devices = s.devices();
    let refs: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| (d.id.as_str(), d.kind().as_str()))
        .collect();
    s.faults().iter().map(|f| f.choose(&refs)).collect()
}

fn readings(s: &Scenario) -> Vec<Vec<serde_json::Map<String, Value>>> {
    s.devices()
        .iter()
        .map(|d| {
            let mut sim = Sim::new(&d.profile, d.seed);
            (0..20).map(|_| sim.step(&d.profile, 1.0)).collect()
        })
        .collect()
}

#[test]
fn same_seed_same_run() {
    let (a, b) = (load(FULL), load(FULL));
    assert_eq!(a.devices(), b.devices());
    assert_eq!(fault_choices(&a), fault_choices(&b));
    assert_eq!(readings(&a), readings(&b));
    assert_eq!(fault_choices(&a)[0].len(), 6, "half of 12 devices");
    assert_eq!(fault_choices(&a)[1].len(), 2);
    assert!(
        fault_choices(&a)[1].iter().all(|i| (4..9).contains(i)),
        "garbage only hits lights"
    );
    assert_eq!(fault_choices(&a)[2], [0, 1, 2, 3]);

    let mut c = load(FULL);
    c.set_seed(12);
    let ids = |s: &Scenario| s.devices().into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&c), "ids come from patterns, not the seed");
    assert_ne!(
        a.devices(),
        c.devices(),
        "names, rooms, formats or seeds change with the seed"
    );
    assert_ne!(readings(&a), readings(&c));
    assert_ne!(fault_choices(&a)[0], fault_choices(&c)[0]);
    c.set_seed(11);
    assert_eq!(fault_choices(&a), fault_choices(&c));
}

#[test]
fn custom_kind_readings_follow_controls() {
    let s = load(FULL);
    let fan = &s.devices()[0];
    let mut sim = Sim::new(&fan.profile, fan.seed);
    assert_eq!(
        sim.controls(),
        json!({"on": true, "speed": 2}).as_object().unwrap()
    );
    let t = sim.step(&fan.profile, 1.0);
    let rpm = t["rpm"].as_i64().unwrap();
    assert!((795..=805).contains(&rpm), "{rpm}");
    let changes = Sim::validate(&fan.profile, &json!({"on": false})).unwrap();
    sim.apply(changes);
    assert_eq!(sim.step(&fan.profile, 1.0)["rpm"], 0);
    assert!(Sim::validate(&fan.profile, &json!({"speed": 9})).is_err());
}

#[test]
fn defaults_are_small_and_sensible() {
    let s = load("[[fleet]]\nkind = \"plug\"\ncount = 2\n[[fleet]]\nkind = \"plug\"\ncount = 2\nid = \"p{n}\"");
    assert_eq!(s.seed(), 1);
    assert_eq!(s.duration, None);
    let ids: Vec<_> = s.devices().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["plug-001", "plug-002", "p1", "p2"]);
    let d = &s.devices()[0];
    assert_eq!(
        (d.telemetry_interval, d.format, d.telemetry_qos),
        (Duration::from_secs(1), crate::PayloadFormat::Json, 0)
    );
    assert!(crate::spec::ROOMS.contains(&d.room.as_str()));
    let names: HashSet<_> = s.devices().into_iter().map(|d| d.name).collect();
    assert_eq!(names.len(), 4, "default names are unique");
}

#[test]
fn mistakes_say_where_they_are() {
    let cases: &[(&str, &str)] = &[
        ("[[fleet]]\nkind = \"toaster\"\ncount = 1", "fleet[0].kind: unknown kind 'toaster'"),
        ("[[fleet]]\nkind = \"light\"\ncount = 0", "fleet[0].count"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\ncolour = \"red\"", "unknown field `colour`"),
        ("seed = 1", "at least one [[fleet]]"),
        ("[[fleet]]\nkind = \"light\"\ncount = 2\nid = \"same\"", "two devices get the id 'same'"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\nid = \"a/{n}\"", "is not 1-64 characters"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\nid = \"{x}\"", "fleet[0].id: unknown placeholder '{x}'"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\ninterval = \"1ms\"", "at least 10ms"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\ncbor_share = 2", "fleet[0].cbor_share"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"meteor\"\nat = 1", "faults[0].type: unknown fault type 'meteor'"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"disconnect\"\nat = 1\nperiod = 2", "faults[0].period: does not apply to a 'disconnect' fault"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"flap\"\nat = 1\nperiod = 1", "faults[0].for"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"duplicate\"\nat = 1\nshare = 0", "faults[0].share"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"duplicate\"\nat = 1\nkinds = [\"plug\"]", "no fleet group has kind 'plug'"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"garbage\"\nat = 1\npayload = \"x\"", "unknown payload 'x'"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"clock_skew\"\nat = 1", "needs an offset"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[expect]]\ntype = \"offline_within\"\nwithin = 1", "no disconnect"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[expect]]\ntype = \"devices_visible\"", "expect[0].within"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[expect]]\ntype = \"no_sequence_gaps\"\nwithin = 1", "does not apply"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\n[[faults]]\ntype = \"duplicate\"\nat = 1\n[[expect]]\ntype = \"offline_within\"\nfault = \"duplicate-1\"\nwithin = 1", "takes no device offline"),
        ("[kinds.fan]\n[[fleet]]\nkind = \"fan\"\ncount = 1", "kinds.fan.telemetry: a kind needs at least one"),
        ("[kinds.fan.telemetry.x]\ntype = \"bool\"\nsim = { model = \"walk\" }\n[[fleet]]\nkind = \"fan\"\ncount = 1", "kinds.fan.telemetry.x.sim: 'walk' makes numbers"),
        ("[kinds.fan.telemetry.x]\ntype = \"int\"\nonly_when = \"on\"\n[[fleet]]\nkind = \"fan\"\ncount = 1", "kinds.fan.telemetry.x.only_when: no control called 'on'"),
        ("[kinds.fan.telemetry.x]\ntype = \"int\"\n[kinds.fan.controls.s]\ntype = \"int\"\nmin = 0\nmax = 3\ninitial = 7\n[[fleet]]\nkind = \"fan\"\ncount = 1", "kinds.fan.controls.s.initial: s must be between 0 and 3"),
        ("[kinds.fan.telemetry.x]\ntype = \"int\"\nmin = 5\nmax = 1\n[[fleet]]\nkind = \"fan\"\ncount = 1", "min (5) must be below max (1)"),
        ("[kinds.fan.telemetry.x]\ntype = \"int\"\nsim = { model = \"walk\", sigma = 1, wobble = 2 }\n[[fleet]]\nkind = \"fan\"\ncount = 1", "wobble"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\nbehaviour = { failure_rate = 1.5 }", "fleet[0].behaviour.failure_rate"),
        ("[[fleet]]\nkind = \"light\"\ncount = 1\nbehaviour = { reject = [{ control = \"hue\" }] }", "has no control 'hue'"),
        ("start_time = \"25:00\"\n[[fleet]]\nkind = \"light\"\ncount = 1", "start_time"),
        ("[broker]\nca_key = \"k\"\ncert = \"c\"\nkey = \"k\"\n[[fleet]]\nkind = \"light\"\ncount = 1", "not both"),
        ("rooms = []\n[[fleet]]\nkind = \"light\"\ncount = 1", "rooms: must name at least one room"),
        ("[[fleet]]\nkind = \"light\"\ncount = 600000\n[[fleet]]\nkind = \"plug\"\ncount = 400001", "fleet: 1000001 devices; a scenario has at most 1000000"),
    ];
    for (text, wanted) in cases {
        let e = error(text);
        assert!(e.contains(wanted), "for\n{text}\nwanted '{wanted}' in: {e}");
    }
}

#[test]
fn reading_a_missing_file_names_it() {
    let e = Scenario::from_file(Path::new("/no/such/scenario.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/scenario.toml"), "{e}");
}
