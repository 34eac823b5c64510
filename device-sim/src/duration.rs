//! Human durations (`250ms`, `1.5s`, `2m`, `1h`) for the command line and scenario files, and
//! signed offsets (`-5m`) for clock skew.

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses `250ms`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 500ms, 1s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' in '{s}' (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

/// Parses a signed duration such as `-5m` or `+30s` into milliseconds.
pub fn parse_offset_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (sign, rest) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = parse_duration(rest)?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| format!("'{s}' is too large"))?;
    Ok(sign * ms)
}

/// Short display form: `850ms`, `12s`, `1.5s`, `3m`, `2h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration such as \"500ms\", \"2s\" or \"1m\", or a number of seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(v).map_err(|e| E::custom(format!("{v}: {e}")))
    }
}

/// `#[serde(deserialize_with = "duration::de")]`: a duration string or a number of seconds.
pub(crate) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// Like [`de`], for `Option<Duration>` fields (use with `#[serde(default)]`).
pub(crate) fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset_ms("-5m"), Ok(-300_000));
        assert_eq!(parse_offset_ms("+30s"), Ok(30_000));
        assert_eq!(parse_offset_ms("250ms"), Ok(250));
        assert!(parse_offset_ms("--1s").is_err());
    }

    #[test]
    fn display() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_secs(12)), "12s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(180)), "3m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn serde_accepts_strings_and_numbers() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "de")]
            a: Duration,
            #[serde(default, deserialize_with = "de_opt")]
            b: Option<Duration>,
            #[serde(default, deserialize_with = "de_opt")]
            c: Option<Duration>,
        }
        let t: T = toml::from_str("a = \"2s\"\nb = 3\n").unwrap();
        assert_eq!(
            (t.a, t.b, t.c),
            (Duration::from_secs(2), Some(Duration::from_secs(3)), None)
        );
        let t: T = toml::from_str("a = 0.25").unwrap();
        assert_eq!(t.a, Duration::from_millis(250));
        let err = toml::from_str::<T>("a = \"soon\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }
}
