//! The scenario file as written: TOML tables mapped one to one onto structs that refuse unknown
//! keys, so a typo is an error with a line number instead of a silently ignored setting.
//! [`super::build`] turns these into checked, ready-to-run types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::duration;
use crate::kind::ValueType;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScenarioFile {
    pub name: Option<String>,
    pub description: Option<String>,
    pub seed: Option<u64>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub duration: Option<Duration>,
    /// `HH:MM`: the simulated time of day when the run starts (daily curves).
    pub start_time: Option<String>,
    pub time_scale: Option<f64>,
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub broker: BrokerSection,
    #[serde(default)]
    pub observer: ObserverSection,
    #[serde(default)]
    pub kinds: BTreeMap<String, KindSection>,
    #[serde(default)]
    pub fleet: Vec<GroupSection>,
    #[serde(default)]
    pub faults: Vec<FaultSection>,
    #[serde(default)]
    pub expect: Vec<ExpectSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BrokerSection {
    /// `HOST:PORT`
    pub address: Option<String>,
    pub ca: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub prefix: Option<String>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub keep_alive: Option<Duration>,
    pub connect_rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObserverSection {
    /// `HOST:PORT` of the bridge.
    pub bridge: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KindSection {
    pub label: Option<String>,
    #[serde(default)]
    pub telemetry: BTreeMap<String, TelemetrySection>,
    #[serde(default)]
    pub controls: BTreeMap<String, ControlSection>,
    pub actions: Option<Vec<String>>,
    pub behaviour: Option<BehaviourSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetrySection {
    #[serde(rename = "type")]
    pub ty: ValueType,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(default)]
    pub choices: Vec<String>,
    pub sim: Option<GeneratorSection>,
    pub only_when: Option<String>,
    pub decimals: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlSection {
    #[serde(rename = "type")]
    pub ty: ValueType,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub step: Option<f64>,
    #[serde(default)]
    pub choices: Vec<String>,
    pub initial: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum GeneratorSection {
    Constant {
        value: Value,
    },
    Walk {
        start: Option<f64>,
        sigma: Option<f64>,
        mean: Option<f64>,
        revert: Option<f64>,
    },
    Daily {
        low: f64,
        high: f64,
        peak_hour: Option<f64>,
        noise: Option<f64>,
    },
    Steps {
        #[serde(default)]
        levels: Vec<f64>,
        #[serde(default, deserialize_with = "duration::de_opt")]
        hold_min: Option<Duration>,
        #[serde(default, deserialize_with = "duration::de_opt")]
        hold_max: Option<Duration>,
    },
    Choice {
        #[serde(default)]
        choices: Vec<Value>,
        change: Option<f64>,
    },
    Counter {
        rate: f64,
        start: Option<f64>,
    },
    Control {
        control: String,
        scale: Option<f64>,
        offset: Option<f64>,
        noise: Option<f64>,
    },
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BehaviourSection {
    pub ack_latency: Option<LatencySection>,
    pub failure_rate: Option<f64>,
    pub failure_error: Option<String>,
    pub ignore_rate: Option<f64>,
    #[serde(default)]
    pub reject: Vec<RejectSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum LatencySection {
    Fixed {
        #[serde(deserialize_with = "duration::de")]
        value: Duration,
    },
    Uniform {
        #[serde(deserialize_with = "duration::de")]
        min: Duration,
        #[serde(deserialize_with = "duration::de")]
        max: Duration,
    },
    Normal {
        #[serde(deserialize_with = "duration::de")]
        mean: Duration,
        #[serde(deserialize_with = "duration::de")]
        sd: Duration,
    },
    Exponential {
        #[serde(deserialize_with = "duration::de")]
        mean: Duration,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectSection {
    pub control: String,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub equals: Option<Value>,
    pub one_of: Option<Vec<Value>>,
    pub if_state: Option<Map<String, Value>>,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSection {
    pub kind: String,
    pub count: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub rooms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub interval: Option<Duration>,
    pub cbor_share: Option<f64>,
    pub qos: Option<u8>,
    pub behaviour: Option<BehaviourSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSection {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "duration::de")]
    pub at: Duration,
    #[serde(rename = "for", default, deserialize_with = "duration::de_opt")]
    pub duration: Option<Duration>,
    pub share: Option<f64>,
    pub count: Option<usize>,
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub period: Option<Duration>,
    pub payload: Option<String>,
    pub messages: Option<u32>,
    pub offset: Option<String>,
    pub latency: Option<LatencySection>,
    pub topic: Option<String>,
    pub graceful: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExpectSection {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub within: Option<Duration>,
    pub rate: Option<f64>,
    pub min_success: Option<f64>,
    pub fault: Option<String>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub online_again_within: Option<Duration>,
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub after: Option<Duration>,
}
