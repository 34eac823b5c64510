//! Command handling without I/O: parse a `cmd` payload, validate `set` params against a kind's
//! controls, and build the `ack` payload.

use serde_json::{Map, Value};

use rand::Rng;

use crate::kind::ValueType;
use crate::profile::Field;
use crate::rng::SplitMix64;

/// Longest string a `string` control accepts; keeps one bad command from bloating retained state.
const MAX_STRING_LEN: usize = 256;

/// A command that carried an id, so it can be answered (even if the rest of it is wrong).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    /// `Err` holds the reason when the command has an id but no usable action/params.
    pub body: Result<(String, Value), String>,
}

/// Parses a `cmd` payload. `None` means there is no id to answer, so the caller logs and drops it.
pub fn parse(payload: &[u8]) -> Option<Command> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let obj = value.as_object()?;
    let id = obj.get("id")?.as_str().filter(|id| !id.is_empty())?;
    let body = match obj.get("action") {
        Some(Value::String(action)) => {
            let params = obj.get("params").cloned().unwrap_or(Value::Null);
            Ok((action.clone(), params))
        }
        Some(_) => Err("action must be a string".to_string()),
        None => Err("command has no action".to_string()),
    };
    Some(Command {
        id: id.to_string(),
        body,
    })
}

/// Checks `params` of a `set` against `controls` and returns the normalised new values.
/// All-or-nothing: the first bad param rejects the whole command, nothing is returned to apply.
pub fn validate_set(controls: &[Field], params: &Value) -> Result<Map<String, Value>, String> {
    if controls.is_empty() {
        return Err("this device has no controls".to_string());
    }
    let params = match params {
        Value::Object(map) => map,
        Value::Null => return Err("set needs params, e.g. {\"params\":{\"on\":true}}".to_string()),
        _ => return Err("params must be an object".to_string()),
    };
    if params.is_empty() {
        return Err("params must not be empty".to_string());
    }
    let mut out = Map::new();
    for (name, value) in params {
        let Some(spec) = controls.iter().find(|c| c.name == *name) else {
            let known: Vec<_> = controls.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "unknown control '{name}' (controls: {})",
                known.join(", ")
            ));
        };
        out.insert(name.clone(), validate_value(spec, value)?);
    }
    Ok(out)
}

fn validate_value(spec: &Field, value: &Value) -> Result<Value, String> {
    let name = &spec.name;
    match spec.ty {
        ValueType::Bool => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| format!("{name} must be true or false")),
        ValueType::Int => {
            // Accept 40.0 from clients whose numbers are all floats (JavaScript), reject 40.5.
            let v = match value {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
                _ => None,
            }
            .ok_or_else(|| format!("{name} must be an integer"))?;
            check_range(spec, v as f64)?;
            Ok(Value::from(v))
        }
        ValueType::Float => {
            let v = value
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("{name} must be a number"))?;
            check_range(spec, v)?;
            Ok(Value::from(v))
        }
        ValueType::Enum => {
            let v = value
                .as_str()
                .ok_or_else(|| format!("{name} must be one of {}", spec.choices.join(", ")))?;
            if spec.choices.iter().any(|c| c == v) {
                Ok(Value::from(v))
            } else {
                Err(format!("{name} must be one of {}", spec.choices.join(", ")))
            }
        }
        ValueType::String => match value.as_str() {
            Some(s) if s.len() <= MAX_STRING_LEN => Ok(Value::from(s)),
            Some(_) => Err(format!("{name} must be at most {MAX_STRING_LEN} bytes")),
            None => Err(format!("{name} must be a string")),
        },
    }
}

fn check_range(spec: &Field, v: f64) -> Result<(), String> {
    let name = &spec.name;
    let shown = |x: f64| {
        if spec.ty == ValueType::Int {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        }
    };
    if let (Some(min), Some(max)) = (spec.min, spec.max) {
        if v < min || v > max {
            return Err(format!(
                "{name} must be between {} and {}",
                shown(min),
                shown(max)
            ));
        }
    }
    if let Some(step) = spec.step {
        let base = spec.min.unwrap_or(0.0);
        let k = (v - base) / step;
        // Tolerance for float steps like 0.5 that arrive as 21.499999999.
        if (k - k.round()).abs() > 1e-6 {
            return Err(format!(
                "{name} must be a multiple of {} from {}",
                shown(step),
                shown(base)
            ));
        }
    }
    Ok(())
}

/// A valid `set` for one randomly chosen control (what a person poking at a dashboard sends);
/// `None` when there are no controls.
pub fn random_set_params(controls: &[Field], rng: &mut SplitMix64) -> Option<Value> {
    if controls.is_empty() {
        return None;
    }
    let c = &controls[rng.random_range(0..controls.len())];
    let (lo, hi) = (c.min.unwrap_or(0.0), c.max.unwrap_or(100.0));
    let value = match c.ty {
        ValueType::Bool => Value::Bool(rng.random_bool(0.5)),
        ValueType::Enum if c.choices.is_empty() => return None,
        ValueType::Enum => Value::from(c.choices[rng.random_range(0..c.choices.len())].clone()),
        ValueType::String => Value::from(format!("sim-{}", rng.random_range(0..1000))),
        ValueType::Int | ValueType::Float => {
            let x = match c.step {
                Some(step) if step > 0.0 => {
                    let steps = ((hi - lo) / step).floor().max(0.0) as u64;
                    lo + step * rng.random_range(0..=steps) as f64
                }
                _ => lo + (hi - lo) * rng.unit(),
            };
            if c.ty == ValueType::Int {
                Value::from(x.round() as i64)
            } else {
                Value::from((x * 100.0).round() / 100.0)
            }
        }
    };
    let mut params = Map::new();
    params.insert(c.name.clone(), value);
    Some(Value::Object(params))
}

/// `{"id":..,"ok":true,"result":..}`
pub fn ack_ok(id: &str, result: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"id": id, "ok": true, "result": result}))
        .unwrap_or_default()
}

/// `{"id":..,"ok":false,"error":..}`
pub fn ack_err(id: &str, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"id": id, "ok": false, "error": reason}))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Kind;
    use serde_json::json;

    /// (kind, params, Ok(expected normalised values) or Err(expected reason))
    fn cases() -> Vec<(Kind, Value, Result<Value, &'static str>)> {
        vec![
            // Thermostat
            (
                Kind::Thermostat,
                json!({"setpoint": 21.5}),
                Ok(json!({"setpoint": 21.5})),
            ),
            (
                Kind::Thermostat,
                json!({"setpoint": 22, "mode": "cool"}),
                Ok(json!({"setpoint": 22.0, "mode": "cool"})),
            ),
            (
                Kind::Thermostat,
                json!({"setpoint": 40}),
                Err("setpoint must be between 5 and 35"),
            ),
            (
                Kind::Thermostat,
                json!({"setpoint": 21.3}),
                Err("setpoint must be a multiple of 0.5 from 5"),
            ),
            (
                Kind::Thermostat,
                json!({"setpoint": "warm"}),
                Err("setpoint must be a number"),
            ),
            (
                Kind::Thermostat,
                json!({"mode": "turbo"}),
                Err("mode must be one of off, heat, cool, auto"),
            ),
            (
                Kind::Thermostat,
                json!({"mode": 1}),
                Err("mode must be one of off, heat, cool, auto"),
            ),
            // Light
            (Kind::Light, json!({"on": true}), Ok(json!({"on": true}))),
            (
                Kind::Light,
                json!({"on": false, "brightness": 40, "color_temp": 3000}),
                Ok(json!({"on": false, "brightness": 40, "color_temp": 3000})),
            ),
            (
                Kind::Light,
                json!({"brightness": 40.0}),
                Ok(json!({"brightness": 40})),
            ),
            (
                Kind::Light,
                json!({"brightness": 101}),
                Err("brightness must be between 0 and 100"),
            ),
            (
                Kind::Light,
                json!({"brightness": -1}),
                Err("brightness must be between 0 and 100"),
            ),
            (
                Kind::Light,
                json!({"brightness": 40.5}),
                Err("brightness must be an integer"),
            ),
            (
                Kind::Light,
                json!({"on": "yes"}),
                Err("on must be true or false"),
            ),
            (
                Kind::Light,
                json!({"color_temp": 2750}),
                Err("color_temp must be a multiple of 100 from 2700"),
            ),
            (
                Kind::Light,
                json!({"color_temp": 2000}),
                Err("color_temp must be between 2700 and 6500"),
            ),
            (
                Kind::Light,
                json!({"on": true, "hue": 3}),
                Err("unknown control 'hue' (controls: on, brightness, color_temp)"),
            ),
            // Plug
            (Kind::Plug, json!({"on": false}), Ok(json!({"on": false}))),
            (
                Kind::Plug,
                json!({"on": 1}),
                Err("on must be true or false"),
            ),
            (
                Kind::Plug,
                json!({"power": 10}),
                Err("unknown control 'power' (controls: on)"),
            ),
            (Kind::Plug, json!({}), Err("params must not be empty")),
            (Kind::Plug, json!([1]), Err("params must be an object")),
            (
                Kind::Plug,
                Value::Null,
                Err("set needs params, e.g. {\"params\":{\"on\":true}}"),
            ),
            // Sensor: nothing can be set
            (
                Kind::Sensor,
                json!({"motion": true}),
                Err("this device has no controls"),
            ),
            (Kind::Sensor, json!({}), Err("this device has no controls")),
            // Blind
            (
                Kind::Blind,
                json!({"position": 0}),
                Ok(json!({"position": 0})),
            ),
            (
                Kind::Blind,
                json!({"position": 100, "tilt": 45}),
                Ok(json!({"position": 100, "tilt": 45})),
            ),
            (
                Kind::Blind,
                json!({"position": 150}),
                Err("position must be between 0 and 100"),
            ),
            (
                Kind::Blind,
                json!({"tilt": 44}),
                Err("tilt must be a multiple of 5 from 0"),
            ),
            (
                Kind::Blind,
                json!({"position": null}),
                Err("position must be an integer"),
            ),
        ]
    }

    #[test]
    fn validate_set_table() {
        for (kind, params, expected) in cases() {
            let profile = crate::profile::Profile::builtin(kind);
            let got = validate_set(&profile.controls, &params);
            match expected {
                Ok(v) => assert_eq!(got, Ok(v.as_object().unwrap().clone()), "{kind} {params}"),
                Err(reason) => assert_eq!(got, Err(reason.to_string()), "{kind} {params}"),
            }
        }
    }

    #[test]
    fn one_bad_param_rejects_the_whole_set() {
        let r = validate_set(
            &crate::profile::Profile::builtin(Kind::Light).controls,
            &json!({"on": true, "brightness": 500}),
        );
        assert_eq!(r, Err("brightness must be between 0 and 100".to_string()));
    }

    #[test]
    fn string_controls_are_checked() {
        let controls = [Field::new("label", ValueType::String)];
        assert!(validate_set(&controls, &json!({"label": "hall"})).is_ok());
        assert_eq!(
            validate_set(&controls, &json!({"label": 3})),
            Err("label must be a string".into())
        );
        let long = "x".repeat(MAX_STRING_LEN + 1);
        assert!(validate_set(&controls, &json!({ "label": long })).is_err());
    }

    #[test]
    fn parse_commands() {
        let c = parse(br#"{"id":"c1","action":"set","params":{"on":true}}"#).unwrap();
        assert_eq!(c.id, "c1");
        assert_eq!(c.body, Ok(("set".to_string(), json!({"on": true}))));

        let c = parse(br#"{"id":"c2","action":"reboot"}"#).unwrap();
        assert_eq!(c.body, Ok(("reboot".to_string(), Value::Null)));

        let c = parse(br#"{"id":"c3"}"#).unwrap();
        assert_eq!(c.body, Err("command has no action".to_string()));
        let c = parse(br#"{"id":"c4","action":7}"#).unwrap();
        assert_eq!(c.body, Err("action must be a string".to_string()));

        // Nothing to answer: dropped by the caller.
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(br#"{"action":"set"}"#), None);
        assert_eq!(parse(br#"{"id":"","action":"set"}"#), None);
        assert_eq!(parse(br#"{"id":5,"action":"set"}"#), None);
        assert_eq!(parse(br#"["id"]"#), None);
    }

    #[test]
    fn random_params_are_always_valid() {
        let mut rng = SplitMix64::new(3);
        for kind in Kind::ALL {
            let profile = crate::profile::Profile::builtin(kind);
            for _ in 0..200 {
                match random_set_params(&profile.controls, &mut rng) {
                    Some(params) => assert!(
                        validate_set(&profile.controls, &params).is_ok(),
                        "{kind}: {params}"
                    ),
                    None => assert!(profile.controls.is_empty()),
                }
            }
        }
    }

    #[test]
    fn ack_payloads_match_the_contract() {
        let mut state = Map::new();
        state.insert("on".into(), json!(true));
        let ok: Value = serde_json::from_slice(&ack_ok("a1", &state)).unwrap();
        assert_eq!(ok, json!({"id": "a1", "ok": true, "result": {"on": true}}));
        let err: Value = serde_json::from_slice(&ack_err("a2", "nope")).unwrap();
        assert_eq!(err, json!({"id": "a2", "ok": false, "error": "nope"}));
    }
}
