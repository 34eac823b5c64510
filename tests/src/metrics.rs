//! Reading the bridge's `/metrics` (OpenMetrics text): samples by name and labels, and the
//! metric families with their types, so tests can compare two scrapes and check dashboards.

use std::collections::BTreeMap;

use crate::E2eError;

/// One sample line: `name{label="value",...} 1.5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> type (`counter`, `gauge`, `histogram`, ...), from the `# TYPE` lines.
    pub families: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, E2eError> {
        let bad = |line: &str, why: &str| E2eError::Http(format!("metrics line {line:?}: {why}"));
        let mut scrape = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| bad(line, "no type"))?;
                scrape.families.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad(line, "no value"))?;
            let value = parse_value(value).ok_or_else(|| bad(line, "value is not a number"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .ok_or_else(|| bad(line, "unclosed labels"))?;
                    (
                        name,
                        parse_labels(inner).ok_or_else(|| bad(line, "labels"))?,
                    )
                }
            };
            scrape.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok(scrape)
    }

    /// Sum of the samples called `name` whose labels include every pair of `labels`; `None`
    /// when there is no such sample at all.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// [`Scrape::value`], or 0 when absent (a counter nobody touched may not be listed).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every sample name a query may use: a counter family `x` is exposed as `x_total` (and
    /// `x_created`), a histogram `x` as `x_bucket`, `x_sum` and `x_count`, others as `x`.
    pub fn exposed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .families
            .iter()
            .flat_map(|(name, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                    "summary" => &["", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .map(move |s| format!("{name}{s}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// `a="x",b="y\"z"` -> map. Values are quoted; `\"`, `\\` and `\n` are escapes.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics() {
        let text = "# HELP iotbridge_clients Connected\n# TYPE iotbridge_clients gauge\n\
            iotbridge_clients{subprotocol=\"iotbridge.v1.json\"} 2\n\
            iotbridge_clients{subprotocol=\"iotbridge.v1.cbor\"} 1\n\
            # TYPE iotbridge_cmd histogram\n\
            iotbridge_cmd_bucket{le=\"+Inf\",outcome=\"o\\\"k\"} 3\n\
            # TYPE iotbridge_in counter\niotbridge_in_total 7\n# EOF\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.value("iotbridge_clients", &[]), Some(3.0));
        assert_eq!(
            s.value("iotbridge_clients", &[("subprotocol", "iotbridge.v1.cbor")]),
            Some(1.0)
        );
        assert_eq!(
            s.value("iotbridge_cmd_bucket", &[("outcome", "o\"k")]),
            Some(3.0)
        );
        assert_eq!(s.get("iotbridge_in_total", &[]), 7.0);
        assert_eq!(s.value("nothing", &[]), None);
        let names = s.exposed_names();
        for n in [
            "iotbridge_clients",
            "iotbridge_cmd_count",
            "iotbridge_in_total",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(Scrape::parse("x{a=\"1\" 2").is_err());
    }
}
