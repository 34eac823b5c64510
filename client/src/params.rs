//! Command-line values: `key=value` command parameters and durations like `10s`. Pure functions.

use std::time::Duration;

use serde_json::{Map, Value};

/// Turns `key=value` arguments into a command's `params`.
///
/// A value that is valid JSON is taken as JSON (`on=true`, `brightness=42`, `setpoint=21.5`,
/// `name="x y"`, `list=[1,2]`); anything else is a string (`mode=heat`), so the common cases
/// need no shell quoting. A key given twice is an error rather than a silent overwrite.
pub fn parse_params<S: AsRef<str>>(args: &[S]) -> Result<Map<String, Value>, String> {
    let mut params = Map::new();
    for arg in args {
        let arg = arg.as_ref();
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {arg:?}"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("missing the key in {arg:?}"));
        }
        if params.contains_key(key) {
            return Err(format!("parameter {key:?} given twice"));
        }
        params.insert(key.to_owned(), parse_value(raw));
    }
    Ok(params)
}

/// One parameter value: JSON when it parses as JSON, else the text itself.
pub fn parse_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Parses `250ms`, `10s`, `2m`, `1h`, or a plain number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s, 2m, 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_parse() {
        let cases = [
            ("true", json!(true)),
            ("false", json!(false)),
            ("42", json!(42)),
            ("-3", json!(-3)),
            ("21.5", json!(21.5)),
            ("\"x\"", json!("x")),
            ("\"42\"", json!("42")),
            ("null", json!(null)),
            ("[1,2]", json!([1, 2])),
            ("{\"a\":1}", json!({"a": 1})),
            ("heat", json!("heat")),
            ("True", json!("True")),
            ("", json!("")),
            ("two words", json!("two words")),
            ("1.2.3", json!("1.2.3")),
            ("=", json!("=")),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_value(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn key_value_pairs() {
        let p = parse_params(&["on=true", "brightness=42", "mode=warm", "expr=a=b"]).unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"on": true, "brightness": 42, "mode": "warm", "expr": "a=b"})
        );
        assert!(parse_params::<&str>(&[]).unwrap().is_empty());
        for bad in [&["on"][..], &["=1"], &["on=true", "on=false"]] {
            assert!(parse_params(bad).is_err(), "{bad:?} should be refused");
        }
        let err = parse_params(&["brightness"]).unwrap_err();
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "10x", "-1s", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
