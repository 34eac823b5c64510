//! How a device answers commands, without I/O: how long it takes to ack, how often it fails,
//! which requests it refuses and which it never answers.
//!
//! Decisions draw from the device's own seeded generator, so the same seed and the same commands
//! give the same answers.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::rng::SplitMix64;

/// No simulated ack takes longer than this, whatever the distribution's tail.
pub const MAX_LATENCY: Duration = Duration::from_secs(120);

/// A distribution of ack delays.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform {
        min: Duration,
        max: Duration,
    },
    /// Gaussian, cut at zero.
    Normal {
        mean: Duration,
        sd: Duration,
    },
    /// Many quick answers, a long tail of slow ones.
    Exponential {
        mean: Duration,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed(Duration::ZERO)
    }
}

impl Latency {
    pub fn sample(&self, rng: &mut SplitMix64) -> Duration {
        let secs = match self {
            Latency::Fixed(d) => d.as_secs_f64(),
            Latency::Uniform { min, max } => {
                let (lo, hi) = (min.as_secs_f64(), max.as_secs_f64());
                lo + (hi - lo) * rng.unit()
            }
            Latency::Normal { mean, sd } => mean.as_secs_f64() + sd.as_secs_f64() * gauss(rng),
            Latency::Exponential { mean } => -mean.as_secs_f64() * (1.0 - rng.unit()).ln(),
        };
        Duration::try_from_secs_f64(secs.max(0.0))
            .unwrap_or(MAX_LATENCY)
            .min(MAX_LATENCY)
    }

    /// Whether every sample is zero (the device answers in the same step it reads the command).
    pub fn is_zero(&self) -> bool {
        *self == Latency::Fixed(Duration::ZERO)
    }
}

/// A standard normal sample (Box-Muller).
pub(crate) fn gauss(rng: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - rng.unit(); // (0, 1]: ln stays finite
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// When a rule refuses a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Any value of the control.
    Any,
    Above(f64),
    Below(f64),
    Equals(Value),
    OneOf(Vec<Value>),
}

/// "Refuse setting `control` when ..." (a thermostat that will not go above 28 °C, a blind that
/// refuses to move while tilted).
#[derive(Debug, Clone, PartialEq)]
pub struct RejectRule {
    pub control: String,
    pub condition: Condition,
    /// The rule applies only while the device's current state has these values.
    pub if_state: Map<String, Value>,
    pub error: String,
}

impl RejectRule {
    fn refuses(&self, changes: &Map<String, Value>, state: &Map<String, Value>) -> bool {
        let Some(value) = changes.get(&self.control) else {
            return false;
        };
        if self.if_state.iter().any(|(k, v)| state.get(k) != Some(v)) {
            return false;
        }
        let num = value.as_f64();
        match &self.condition {
            Condition::Any => true,
            Condition::Above(limit) => num.is_some_and(|n| n > *limit),
            Condition::Below(limit) => num.is_some_and(|n| n < *limit),
            Condition::Equals(v) => same(value, v),
            Condition::OneOf(vs) => vs.iter().any(|v| same(value, v)),
        }
    }
}

/// Equality that treats 21 and 21.0 as the same number (TOML and JSON disagree on which is which).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// How a device answers commands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Behaviour {
    pub ack_latency: Latency,
    /// Share (0..=1) of otherwise valid commands answered `ok: false` with `failure_error`.
    pub failure_rate: f64,
    pub failure_error: String,
    /// Share (0..=1) of commands the device reads and never answers.
    pub ignore_rate: f64,
    pub reject: Vec<RejectRule>,
}

/// What the device does with a command that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Apply,
    Reject(String),
    Ignore,
}

/// The error text of a simulated failure when the scenario gives none.
pub const DEFAULT_FAILURE: &str = "simulated failure";

impl Behaviour {
    /// Decides the fate of validated `changes` given the device's current `state`.
    /// Order: never answered, refused by a rule, random failure, applied.
    pub fn decide(
        &self,
        changes: &Map<String, Value>,
        state: &Map<String, Value>,
        rng: &mut SplitMix64,
    ) -> Decision {
        if rng.chance(self.ignore_rate) {
            return Decision::Ignore;
        }
        if let Some(rule) = self.reject.iter().find(|r| r.refuses(changes, state)) {
            return Decision::Reject(rule.error.clone());
        }
        if rng.chance(self.failure_rate) {
            let error = if self.failure_error.is_empty() {
                DEFAULT_FAILURE.to_string()
            } else {
                self.failure_error.clone()
            };
            return Decision::Reject(error);
        }
        Decision::Apply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn latencies_stay_in_their_ranges() {
        let mut rng = SplitMix64::new(1);
        let ms = Duration::from_millis;
        assert_eq!(Latency::Fixed(ms(30)).sample(&mut rng), ms(30));
        let uniform = Latency::Uniform {
            min: ms(10),
            max: ms(20),
        };
        let normal = Latency::Normal {
            mean: ms(100),
            sd: ms(30),
        };
        let exp = Latency::Exponential { mean: ms(50) };
        let (mut n_sum, mut e_sum) = (0.0, 0.0);
        for _ in 0..5000 {
            let u = uniform.sample(&mut rng);
            assert!(u >= ms(10) && u <= ms(20), "{u:?}");
            n_sum += normal.sample(&mut rng).as_secs_f64();
            e_sum += exp.sample(&mut rng).as_secs_f64();
        }
        let (n_mean, e_mean) = (n_sum / 5000.0, e_sum / 5000.0);
        assert!((0.095..0.105).contains(&n_mean), "normal mean {n_mean}");
        assert!(
            (0.045..0.055).contains(&e_mean),
            "exponential mean {e_mean}"
        );
        let huge = Latency::Fixed(Duration::from_secs(1000));
        assert_eq!(huge.sample(&mut rng), MAX_LATENCY);
        assert!(Latency::default().is_zero());
    }

    #[test]
    fn rules_refuse_by_value_and_state() {
        let behaviour = Behaviour {
            reject: vec![
                RejectRule {
                    control: "setpoint".into(),
                    condition: Condition::Above(28.0),
                    if_state: Map::new(),
                    error: "too hot".into(),
                },
                RejectRule {
                    control: "mode".into(),
                    condition: Condition::Equals(json!("cool")),
                    if_state: map(json!({"installed": false})),
                    error: "no AC".into(),
                },
                RejectRule {
                    control: "level".into(),
                    condition: Condition::OneOf(vec![json!(1), json!(3)]),
                    if_state: Map::new(),
                    error: "odd".into(),
                },
            ],
            ..Behaviour::default()
        };
        let mut rng = SplitMix64::new(2);
        let state = map(json!({"installed": false}));
        let decide = |c: Value, s: &Map<String, Value>, rng: &mut SplitMix64| {
            behaviour.decide(&map(c), s, rng)
        };
        assert_eq!(
            decide(json!({"setpoint": 29}), &state, &mut rng),
            Decision::Reject("too hot".into())
        );
        assert_eq!(
            decide(json!({"setpoint": 28}), &state, &mut rng),
            Decision::Apply
        );
        assert_eq!(
            decide(json!({"mode": "cool"}), &state, &mut rng),
            Decision::Reject("no AC".into())
        );
        let installed = map(json!({"installed": true}));
        assert_eq!(
            decide(json!({"mode": "cool"}), &installed, &mut rng),
            Decision::Apply
        );
        assert_eq!(
            decide(json!({"level": 3.0}), &state, &mut rng),
            Decision::Reject("odd".into())
        );
        assert_eq!(
            decide(json!({"level": 2}), &state, &mut rng),
            Decision::Apply
        );
    }

    #[test]
    fn failure_and_ignore_rates_are_seeded() {
        let behaviour = Behaviour {
            failure_rate: 0.3,
            ignore_rate: 0.1,
            ..Behaviour::default()
        };
        let run = |seed| {
            let mut rng = SplitMix64::new(seed);
            (0..1000)
                .map(|_| behaviour.decide(&Map::new(), &Map::new(), &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(5);
        assert_eq!(a, run(5));
        assert_ne!(a, run(6));
        let ignored = a.iter().filter(|d| **d == Decision::Ignore).count();
        let failed = a
            .iter()
            .filter(|d| matches!(d, Decision::Reject(e) if e == DEFAULT_FAILURE))
            .count();
        assert!((60..140).contains(&ignored), "{ignored}");
        assert!((220..320).contains(&failed), "{failed}");
        let always = Behaviour {
            ignore_rate: 1.0,
            ..Behaviour::default()
        };
        assert_eq!(
            always.decide(&Map::new(), &Map::new(), &mut SplitMix64::new(0)),
            Decision::Ignore
        );
    }
}
