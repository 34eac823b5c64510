//! Telemetry generators for device kinds defined in scenario files: seeded random walks, daily
//! curves, step changes, random choices, counters and values that follow a control.
//!
//! Pure and deterministic: values depend on the seed and on simulated time (ticks times the
//! interval, scaled), never on the wall clock, so the same seed gives the same readings.

use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value};

use crate::behaviour::gauss;
use crate::kind::ValueType;
use crate::profile::Field;
use crate::rng::SplitMix64;

const DAY_SECS: f64 = 86_400.0;

/// How one telemetry field changes over time.
#[derive(Debug, Clone, PartialEq)]
pub enum Generator {
    Constant {
        value: Value,
    },
    /// Gaussian steps of `sigma` per √s, pulled towards `mean` at `revert` per second.
    Walk {
        start: Option<f64>,
        sigma: f64,
        mean: Option<f64>,
        revert: f64,
    },
    /// A cosine over the simulated day between `low` and `high`, highest at `peak_hour`.
    Daily {
        low: f64,
        high: f64,
        peak_hour: f64,
        noise: f64,
    },
    /// Holds a level for a random time in `[hold_min, hold_max]`, then jumps to another one
    /// (from `levels`, or anywhere between the field's min and max).
    Steps {
        levels: Vec<f64>,
        hold_min: Duration,
        hold_max: Duration,
    },
    /// One of `choices` (default: the field's choices, or false/true), changing with
    /// probability `change` per second.
    Choice {
        choices: Vec<Value>,
        change: f64,
    },
    /// Grows by `rate` per second while the field's gate is open (energy meters).
    Counter {
        rate: f64,
        start: f64,
    },
    /// `control * scale + offset`, plus uniform noise; a bool control counts as 0 or 1.
    Control {
        control: String,
        scale: f64,
        offset: f64,
        noise: f64,
    },
}

/// One telemetry field of a scenario-defined kind and how it is produced.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSim {
    pub field: Field,
    pub generator: Generator,
    /// Name of a control; while it is false or 0 the field reads 0 (or its min) / false.
    pub only_when: Option<String>,
    /// Decimals kept for float fields.
    pub decimals: u32,
}

/// Simulated time: where the day starts and how fast it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimClock {
    /// Seconds after midnight when the run starts.
    pub start_secs: f64,
    /// Simulated seconds per real second.
    pub time_scale: f64,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock {
            start_secs: 12.0 * 3600.0,
            time_scale: 1.0,
        }
    }
}

/// The physics of a scenario-defined kind.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomPhysics {
    pub fields: Vec<FieldSim>,
    /// Control values a device starts with.
    pub initial: Map<String, Value>,
    pub clock: SimClock,
}

#[derive(Debug, Clone)]
enum FieldState {
    Num(f64),
    Held { value: f64, until: f64 },
    Val(Value),
}

/// One device's state under [`CustomPhysics`].
#[derive(Debug, Clone)]
pub struct CustomModel {
    controls: Map<String, Value>,
    states: Vec<FieldState>,
    /// Simulated seconds since the run started.
    elapsed: f64,
    rng: SplitMix64,
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "off",
        _ => false,
    }
}

fn as_num(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(v) => v.as_f64().unwrap_or(0.0),
        None => 0.0,
    }
}

/// The values a choice generator picks from.
pub fn choices_of(field: &Field, choices: &[Value]) -> Vec<Value> {
    if !choices.is_empty() {
        choices.to_vec()
    } else if field.ty == ValueType::Bool {
        vec![Value::Bool(false), Value::Bool(true)]
    } else {
        field
            .choices
            .iter()
            .map(|c| Value::from(c.as_str()))
            .collect()
    }
}

fn pick(rng: &mut SplitMix64, values: &[Value]) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values[rng.random_range(0..values.len())].clone()
}

fn uniform(rng: &mut SplitMix64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.unit()
}

impl CustomModel {
    pub fn new(physics: &CustomPhysics, seed: u64) -> CustomModel {
        let mut rng = SplitMix64::stream(seed, 0x7e1e);
        let states = physics
            .fields
            .iter()
            .map(|f| {
                let (lo, hi) = (f.field.min, f.field.max);
                match &f.generator {
                    Generator::Walk { start, mean, .. } => FieldState::Num(match (start, lo, hi) {
                        (Some(s), _, _) => *s,
                        (None, Some(lo), Some(hi)) => uniform(&mut rng, lo, hi),
                        _ => mean.unwrap_or(0.0),
                    }),
                    Generator::Steps { .. } => FieldState::Held {
                        value: f64::NAN,
                        until: 0.0,
                    },
                    Generator::Choice { choices, .. } => {
                        FieldState::Val(pick(&mut rng, &choices_of(&f.field, choices)))
                    }
                    Generator::Counter { start, .. } => FieldState::Num(*start),
                    _ => FieldState::Num(0.0),
                }
            })
            .collect();
        CustomModel {
            controls: physics.initial.clone(),
            states,
            elapsed: 0.0,
            rng,
        }
    }

    pub fn controls(&self) -> &Map<String, Value> {
        &self.controls
    }

    /// Applies validated changes to the controls.
    pub fn apply(&mut self, changes: Map<String, Value>) {
        self.controls.extend(changes);
    }

    /// Advances simulated time by `dt_secs` real seconds and returns the telemetry map.
    pub fn step(&mut self, physics: &CustomPhysics, dt_secs: f64) -> Map<String, Value> {
        let dt = dt_secs.max(0.0) * physics.clock.time_scale;
        self.elapsed += dt;
        let now = self.elapsed;
        let time_of_day = (physics.clock.start_secs + now).rem_euclid(DAY_SECS);
        let mut out = Map::new();
        for (f, state) in physics.fields.iter().zip(self.states.iter_mut()) {
            let open = f
                .only_when
                .as_ref()
                .is_none_or(|c| truthy(self.controls.get(c)));
            let rng = &mut self.rng;
            let value = match (&f.generator, state) {
                (Generator::Constant { value }, _) => value.clone(),
                (
                    Generator::Walk {
                        sigma,
                        mean,
                        revert,
                        ..
                    },
                    FieldState::Num(x),
                ) => {
                    let target = mean.unwrap_or(*x);
                    *x += (target - *x) * (revert * dt).min(1.0) + sigma * dt.sqrt() * gauss(rng);
                    *x = clamp(&f.field, *x);
                    Value::from(*x)
                }
                (
                    Generator::Daily {
                        low,
                        high,
                        peak_hour,
                        noise,
                    },
                    _,
                ) => {
                    let phase = (time_of_day - peak_hour * 3600.0) / DAY_SECS;
                    let level = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * phase).cos();
                    let v = low + (high - low) * level + noise * (2.0 * rng.unit() - 1.0);
                    Value::from(clamp(&f.field, v))
                }
                (
                    Generator::Steps {
                        levels,
                        hold_min,
                        hold_max,
                    },
                    FieldState::Held { value, until },
                ) => {
                    if value.is_nan() || now >= *until {
                        *value = if levels.is_empty() {
                            uniform(rng, f.field.min.unwrap_or(0.0), f.field.max.unwrap_or(1.0))
                        } else {
                            levels[rng.random_range(0..levels.len())]
                        };
                        *until = now + uniform(rng, hold_min.as_secs_f64(), hold_max.as_secs_f64());
                    }
                    Value::from(*value)
                }
                (Generator::Choice { choices, change }, FieldState::Val(v)) => {
                    // Poisson process: the chance of at least one change within dt.
                    if rng.chance(1.0 - (-change * dt).exp()) {
                        *v = pick(rng, &choices_of(&f.field, choices));
                    }
                    v.clone()
                }
                (Generator::Counter { rate, .. }, FieldState::Num(x)) => {
                    if open {
                        *x += rate * dt;
                    }
                    Value::from(*x)
                }
                (
                    Generator::Control {
                        control,
                        scale,
                        offset,
                        noise,
                    },
                    _,
                ) => {
                    let base = as_num(self.controls.get(control));
                    let v = base * scale + offset + noise * (2.0 * rng.unit() - 1.0);
                    Value::from(clamp(&f.field, v))
                }
                // A generator paired with the wrong state cannot happen: both come from `new`.
                (_, FieldState::Num(x)) => Value::from(*x),
                (_, FieldState::Held { value, .. }) => Value::from(*value),
                (_, FieldState::Val(v)) => v.clone(),
            };
            let value = if open || matches!(f.generator, Generator::Counter { .. }) {
                value
            } else {
                closed_value(&f.field, value)
            };
            out.insert(f.field.name.clone(), shape(&f.field, f.decimals, value));
        }
        out
    }
}

fn clamp(field: &Field, v: f64) -> f64 {
    let v = field.min.map_or(v, |min| v.max(min));
    field.max.map_or(v, |max| v.min(max))
}

/// What a gated field reads while its control is off.
fn closed_value(field: &Field, value: Value) -> Value {
    match field.ty {
        ValueType::Bool => Value::Bool(false),
        ValueType::Int | ValueType::Float => Value::from(field.min.unwrap_or(0.0).max(0.0)),
        ValueType::Enum | ValueType::String => value,
    }
}

/// Gives a raw value the field's declared type.
fn shape(field: &Field, decimals: u32, value: Value) -> Value {
    match field.ty {
        ValueType::Int => match value.as_f64() {
            Some(x) => Value::from(x.round() as i64),
            None => value,
        },
        ValueType::Float => match value.as_f64() {
            Some(x) => {
                let k = 10f64.powi(decimals.min(9) as i32);
                Value::from((x * k).round() / k)
            }
            None => value,
        },
        ValueType::Bool => match value {
            Value::Bool(_) => value,
            other => Value::Bool(truthy(Some(&other))),
        },
        ValueType::Enum | ValueType::String => match value {
            Value::String(_) => value,
            other => Value::from(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num_field(name: &str, ty: ValueType, min: f64, max: f64) -> Field {
        Field {
            min: Some(min),
            max: Some(max),
            ..Field::new(name, ty)
        }
    }

    fn physics() -> CustomPhysics {
        let sim = |field: Field, generator: Generator, only_when: Option<&str>| FieldSim {
            field,
            generator,
            only_when: only_when.map(str::to_string),
            decimals: 2,
        };
        CustomPhysics {
            fields: vec![
                sim(
                    num_field("temp", ValueType::Float, 10.0, 30.0),
                    Generator::Walk {
                        start: None,
                        sigma: 0.5,
                        mean: Some(20.0),
                        revert: 0.05,
                    },
                    None,
                ),
                sim(
                    num_field("sun", ValueType::Float, 0.0, 1000.0),
                    Generator::Daily {
                        low: 0.0,
                        high: 1000.0,
                        peak_hour: 13.0,
                        noise: 0.0,
                    },
                    None,
                ),
                sim(
                    num_field("load", ValueType::Int, 0.0, 100.0),
                    Generator::Steps {
                        levels: vec![10.0, 50.0, 90.0],
                        hold_min: Duration::from_secs(5),
                        hold_max: Duration::from_secs(10),
                    },
                    None,
                ),
                sim(
                    Field {
                        choices: vec!["a".into(), "b".into()],
                        ..Field::new("mode", ValueType::Enum)
                    },
                    Generator::Choice {
                        choices: vec![],
                        change: 0.5,
                    },
                    None,
                ),
                sim(
                    Field::new("kwh", ValueType::Float),
                    Generator::Counter {
                        rate: 0.5,
                        start: 1.0,
                    },
                    Some("on"),
                ),
                sim(
                    num_field("rpm", ValueType::Int, 0.0, 3000.0),
                    Generator::Control {
                        control: "speed".into(),
                        scale: 1000.0,
                        offset: 0.0,
                        noise: 0.0,
                    },
                    Some("on"),
                ),
                sim(
                    Field::new("label", ValueType::String),
                    Generator::Constant { value: json!("x") },
                    None,
                ),
            ],
            initial: json!({"on": true, "speed": 2})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            clock: SimClock {
                start_secs: 0.0,
                time_scale: 60.0,
            },
        }
    }

    #[test]
    fn same_seed_same_readings() {
        let p = physics();
        let (mut a, mut b, mut c) = (
            CustomModel::new(&p, 9),
            CustomModel::new(&p, 9),
            CustomModel::new(&p, 10),
        );
        let ra: Vec<_> = (0..200).map(|_| a.step(&p, 1.0)).collect();
        let rb: Vec<_> = (0..200).map(|_| b.step(&p, 1.0)).collect();
        let rc: Vec<_> = (0..200).map(|_| c.step(&p, 1.0)).collect();
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
    }

    #[test]
    fn readings_respect_types_ranges_and_gates() {
        let p = physics();
        let mut m = CustomModel::new(&p, 1);
        let mut loads = std::collections::HashSet::new();
        let mut modes = std::collections::HashSet::new();
        let mut last_kwh = 0.0;
        for _ in 0..300 {
            let t = m.step(&p, 1.0);
            let temp = t["temp"].as_f64().unwrap();
            assert!((10.0..=30.0).contains(&temp), "{temp}");
            assert!(t["load"].is_i64());
            loads.insert(t["load"].as_i64().unwrap());
            modes.insert(t["mode"].as_str().unwrap().to_string());
            assert_eq!(t["rpm"], 2000);
            assert_eq!(t["label"], "x");
            let kwh = t["kwh"].as_f64().unwrap();
            assert!(kwh > last_kwh);
            last_kwh = kwh;
        }
        assert!(
            loads.iter().all(|l| [10, 50, 90].contains(l)) && loads.len() > 1,
            "{loads:?}"
        );
        assert_eq!(modes.len(), 2);
        m.apply(json!({"on": false}).as_object().cloned().unwrap());
        let off = m.step(&p, 1.0);
        assert_eq!(off["rpm"], 0);
        assert_eq!(
            off["kwh"].as_f64().unwrap(),
            last_kwh,
            "counter must hold while off"
        );
    }

    #[test]
    fn daily_curve_peaks_at_its_hour() {
        let p = physics(); // starts at midnight, 60x: one real minute is one simulated hour
        let mut m = CustomModel::new(&p, 1);
        let mut by_hour = Vec::new();
        for _ in 0..24 {
            let mut last = Map::new();
            for _ in 0..60 {
                last = m.step(&p, 1.0);
            }
            by_hour.push(last["sun"].as_f64().unwrap());
        }
        // Index h holds the reading at hour h+1.
        let peak = by_hour
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(h, _)| h + 1);
        assert_eq!(peak, Some(13));
        assert!(by_hour[0] < 100.0);
    }
}
