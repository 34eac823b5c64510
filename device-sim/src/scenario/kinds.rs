//! Kinds defined in a scenario file: their telemetry fields and generators, controls with
//! initial values, actions and command behaviour, checked and turned into shared [`Profile`]s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::build::{bad, Res};
use super::file::{self, GeneratorSection, KindSection, LatencySection};
use crate::behaviour::{Behaviour, Condition, Latency, RejectRule};
use crate::command;
use crate::generator::{choices_of, CustomPhysics, FieldSim, Generator, SimClock};
use crate::kind::ValueType;
use crate::profile::{DeviceKind, Field, Physics, Profile};

fn valid_kind_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_numeric(ty: ValueType) -> bool {
    matches!(ty, ValueType::Int | ValueType::Float)
}

/// Profiles of every `[kinds.NAME]`; a name of a built-in kind replaces it.
pub(super) fn profiles(
    kinds: &BTreeMap<String, KindSection>,
    clock: SimClock,
) -> Res<BTreeMap<String, Arc<Profile>>> {
    let mut out = BTreeMap::new();
    for (name, section) in kinds {
        let at = format!("kinds.{name}");
        if !valid_kind_name(name) {
            return bad(at, "a kind name is 1-32 characters of A-Z a-z 0-9 _ -");
        }
        out.insert(name.clone(), Arc::new(profile(&at, name, section, clock)?));
    }
    Ok(out)
}

fn check_range(at: &str, min: Option<f64>, max: Option<f64>) -> Res<()> {
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
            return bad(at, format!("min ({lo}) must be below max ({hi})"));
        }
    }
    Ok(())
}

fn profile(at: &str, name: &str, k: &KindSection, clock: SimClock) -> Res<Profile> {
    if k.telemetry.is_empty() {
        return bad(
            format!("{at}.telemetry"),
            "a kind needs at least one telemetry field",
        );
    }
    let mut controls = Vec::new();
    let mut initial = Map::new();
    for (cname, c) in &k.controls {
        let at = format!("{at}.controls.{cname}");
        check_range(&at, c.min, c.max)?;
        if c.ty == ValueType::Enum && c.choices.len() < 2 {
            return bad(&at, "an enum needs at least two choices");
        }
        if c.step.is_some_and(|s| s.is_nan() || s <= 0.0) {
            return bad(format!("{at}.step"), "must be > 0");
        }
        let field = Field {
            name: cname.clone(),
            ty: c.ty,
            unit: c.unit.clone(),
            min: c.min,
            max: c.max,
            step: c.step,
            choices: c.choices.clone(),
        };
        let value = match &c.initial {
            Some(v) => v.clone(),
            None => match c.ty {
                ValueType::Bool => Value::Bool(false),
                ValueType::Int | ValueType::Float => {
                    let v = c.min.unwrap_or(0.0);
                    Value::from(c.max.map_or(v, |max| v.min(max)))
                }
                ValueType::Enum => Value::from(c.choices[0].clone()),
                ValueType::String => Value::from(""),
            },
        };
        // The initial value must be one a `set` would accept.
        let probe = Value::Object(Map::from_iter([(cname.clone(), value)]));
        let normal = command::validate_set(std::slice::from_ref(&field), &probe)
            .map_err(|e| (format!("{at}.initial"), e))?;
        initial.extend(normal);
        controls.push(field);
    }
    let mut fields = Vec::new();
    let mut telemetry = Vec::new();
    for (fname, t) in &k.telemetry {
        let at = format!("{at}.telemetry.{fname}");
        check_range(&at, t.min, t.max)?;
        if t.ty == ValueType::Enum && t.choices.is_empty() {
            return bad(&at, "an enum needs choices");
        }
        let field = Field {
            name: fname.clone(),
            ty: t.ty,
            unit: t.unit.clone(),
            min: t.min,
            max: t.max,
            step: None,
            choices: t.choices.clone(),
        };
        let control_exists = |c: &str| k.controls.contains_key(c);
        if let Some(c) = &t.only_when {
            if !control_exists(c) {
                return bad(
                    format!("{at}.only_when"),
                    format!("no control called '{c}'"),
                );
            }
        }
        let generator = generator(
            &format!("{at}.sim"),
            &field,
            t.sim.as_ref(),
            &control_exists,
        )?;
        fields.push(FieldSim {
            field: field.clone(),
            generator,
            only_when: t.only_when.clone(),
            decimals: t.decimals.unwrap_or(2),
        });
        telemetry.push(field);
    }
    let actions = match &k.actions {
        Some(a) => a.clone(),
        None if controls.is_empty() => Vec::new(),
        None => vec!["set".to_string()],
    };
    let label = k.label.clone().unwrap_or_else(|| {
        let mut chars = name.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    });
    let physics = Physics::Custom(CustomPhysics {
        fields,
        initial,
        clock,
    });
    let mut profile = Profile::new(
        DeviceKind::Custom(Arc::from(name)),
        label,
        telemetry,
        controls,
        actions,
        physics,
        Behaviour::default(),
    );
    if let Some(b) = &k.behaviour {
        profile = profile.with_behaviour(behaviour(&format!("{at}.behaviour"), b, &profile)?);
    }
    Ok(profile)
}

fn generator(
    at: &str,
    field: &Field,
    section: Option<&GeneratorSection>,
    control_exists: &dyn Fn(&str) -> bool,
) -> Res<Generator> {
    let numeric = is_numeric(field.ty);
    let need_numeric = |model: &str| -> Res<()> {
        if numeric {
            Ok(())
        } else {
            bad(
                at,
                format!(
                    "'{model}' makes numbers; field '{}' is not int or float",
                    field.name
                ),
            )
        }
    };
    let nonneg = |name: &str, v: Option<f64>| -> Res<f64> {
        let v = v.unwrap_or(0.0);
        if !(v.is_finite() && v >= 0.0) {
            return bad(
                format!("{at}.{name}"),
                format!("must be a number >= 0, got {v}"),
            );
        }
        Ok(v)
    };
    Ok(match section {
        // Without a model: numbers wander, everything else picks from its choices now and then.
        None if numeric => Generator::Walk {
            start: None,
            sigma: span(field) * 0.01,
            mean: None,
            revert: 0.0,
        },
        None => match field.ty {
            ValueType::String => Generator::Constant {
                value: Value::from(""),
            },
            _ => Generator::Choice {
                choices: Vec::new(),
                change: 0.05,
            },
        },
        Some(GeneratorSection::Constant { value }) => Generator::Constant {
            value: value.clone(),
        },
        Some(GeneratorSection::Walk {
            start,
            sigma,
            mean,
            revert,
        }) => {
            need_numeric("walk")?;
            Generator::Walk {
                start: *start,
                sigma: match sigma {
                    Some(_) => nonneg("sigma", *sigma)?,
                    None => span(field) * 0.01,
                },
                mean: *mean,
                revert: nonneg("revert", *revert)?,
            }
        }
        Some(GeneratorSection::Daily {
            low,
            high,
            peak_hour,
            noise,
        }) => {
            need_numeric("daily")?;
            let peak_hour = peak_hour.unwrap_or(14.0);
            if !(0.0..24.0).contains(&peak_hour) {
                return bad(format!("{at}.peak_hour"), "must be between 0 and 24");
            }
            Generator::Daily {
                low: *low,
                high: *high,
                peak_hour,
                noise: nonneg("noise", *noise)?,
            }
        }
        Some(GeneratorSection::Steps {
            levels,
            hold_min,
            hold_max,
        }) => {
            need_numeric("steps")?;
            if levels.is_empty() && (field.min.is_none() || field.max.is_none()) {
                return bad(at, "steps need levels, or min and max on the field");
            }
            let hold_min = hold_min.unwrap_or(Duration::from_secs(10));
            let hold_max = hold_max.unwrap_or(hold_min * 3);
            if hold_min.is_zero() || hold_max < hold_min {
                return bad(at, "need 0 < hold_min <= hold_max");
            }
            Generator::Steps {
                levels: levels.clone(),
                hold_min,
                hold_max,
            }
        }
        Some(GeneratorSection::Choice { choices, change }) => {
            if choices_of(field, choices).is_empty() {
                return bad(
                    at,
                    format!("'choice' needs choices for field '{}'", field.name),
                );
            }
            Generator::Choice {
                choices: choices.clone(),
                change: nonneg("change", *change)?,
            }
        }
        Some(GeneratorSection::Counter { rate, start }) => {
            need_numeric("counter")?;
            Generator::Counter {
                rate: nonneg("rate", Some(*rate))?,
                start: start.unwrap_or(0.0),
            }
        }
        Some(GeneratorSection::Control {
            control,
            scale,
            offset,
            noise,
        }) => {
            if !control_exists(control) {
                return bad(
                    format!("{at}.control"),
                    format!("no control called '{control}'"),
                );
            }
            Generator::Control {
                control: control.clone(),
                scale: scale.unwrap_or(1.0),
                offset: offset.unwrap_or(0.0),
                noise: nonneg("noise", *noise)?,
            }
        }
    })
}

fn span(field: &Field) -> f64 {
    match (field.min, field.max) {
        (Some(lo), Some(hi)) => hi - lo,
        _ => 1.0,
    }
}

pub(super) fn latency(at: &str, l: &LatencySection) -> Res<Latency> {
    Ok(match l {
        LatencySection::Fixed { value } => Latency::Fixed(*value),
        LatencySection::Uniform { min, max } => {
            if min > max {
                return bad(at, "min must not exceed max");
            }
            Latency::Uniform {
                min: *min,
                max: *max,
            }
        }
        LatencySection::Normal { mean, sd } => Latency::Normal {
            mean: *mean,
            sd: *sd,
        },
        LatencySection::Exponential { mean } => Latency::Exponential { mean: *mean },
    })
}

/// Checks a behaviour section against the controls of the kind it applies to.
pub(super) fn behaviour(at: &str, b: &file::BehaviourSection, profile: &Profile) -> Res<Behaviour> {
    let rate = |name: &str, v: Option<f64>| -> Res<f64> {
        let v = v.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&v) {
            return bad(
                format!("{at}.{name}"),
                format!("must be between 0 and 1, got {v}"),
            );
        }
        Ok(v)
    };
    let mut reject = Vec::new();
    for (i, r) in b.reject.iter().enumerate() {
        let at = format!("{at}.reject[{i}]");
        if !profile.controls.iter().any(|c| c.name == r.control) {
            return bad(
                format!("{at}.control"),
                format!("kind '{}' has no control '{}'", profile.kind, r.control),
            );
        }
        let conditions = [
            r.above.is_some(),
            r.below.is_some(),
            r.equals.is_some(),
            r.one_of.is_some(),
        ];
        if conditions.iter().filter(|c| **c).count() > 1 {
            return bad(&at, "give at most one of above, below, equals, one_of");
        }
        let condition = match (r.above, r.below, &r.equals, &r.one_of) {
            (Some(x), ..) => Condition::Above(x),
            (_, Some(x), ..) => Condition::Below(x),
            (_, _, Some(v), _) => Condition::Equals(v.clone()),
            (_, _, _, Some(vs)) => Condition::OneOf(vs.clone()),
            _ => Condition::Any,
        };
        reject.push(RejectRule {
            control: r.control.clone(),
            condition,
            if_state: r.if_state.clone().unwrap_or_default(),
            error: r
                .error
                .clone()
                .unwrap_or_else(|| format!("{} refused", r.control)),
        });
    }
    Ok(Behaviour {
        ack_latency: match &b.ack_latency {
            Some(l) => latency(&format!("{at}.ack_latency"), l)?,
            None => Latency::default(),
        },
        failure_rate: rate("failure_rate", b.failure_rate)?,
        failure_error: b.failure_error.clone().unwrap_or_default(),
        ignore_rate: rate("ignore_rate", b.ignore_rate)?,
        reject,
    })
}
