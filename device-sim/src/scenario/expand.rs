//! Fleet groups to devices: id and name patterns, room choice, payload formats and per-device
//! seeds, all drawn from the scenario seed so the same seed gives the same fleet.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Group;
use crate::codec::PayloadFormat;
use crate::spec::DeviceSpec;

/// Fills `{var}` and `{var:0W}` (zero-padded to width W) placeholders from `vars`.
/// An unknown variable or an unclosed brace is an error naming it.
pub fn expand_pattern(
    pattern: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in '{pattern}'"))?;
        let inner = &after[..close];
        let (name, width) = match inner.split_once(':') {
            Some((name, spec)) => {
                let digits = spec.trim_start_matches('0');
                let width: usize = digits.parse().map_err(|_| {
                    format!("bad width '{spec}' in '{{{inner}}}' (use e.g. {{n:03}})")
                })?;
                (name, width)
            }
            None => (inner, 0),
        };
        let value =
            vars(name).ok_or_else(|| format!("unknown placeholder '{{{name}}}' in '{pattern}'"))?;
        if value.len() < width && value.bytes().all(|b| b.is_ascii_digit()) {
            out.extend(std::iter::repeat_n('0', width - value.len()));
        }
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unmatched '}}' in '{pattern}'"));
    }
    out.push_str(rest);
    Ok(out)
}

/// Default id pattern: the kind, then a number counted per kind across the whole fleet.
pub(super) fn default_id(width: usize) -> String {
    format!("{{kind}}-{{k:0{width}}}")
}

/// Variables of the id pattern for one device.
pub(super) struct IdVars<'a> {
    pub kind: &'a str,
    /// 1-based within the group.
    pub n: usize,
    /// 1-based within the kind, across groups.
    pub k: usize,
    /// 1-based within the fleet.
    pub i: usize,
    /// 1-based group number.
    pub group: usize,
}

impl IdVars<'_> {
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "kind" => self.kind.to_string(),
            "n" => self.n.to_string(),
            "k" => self.k.to_string(),
            "i" => self.i.to_string(),
            "group" => self.group.to_string(),
            _ => return None,
        })
    }
}

fn group_rng(seed: u64, group: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (group as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f))
}

/// Expands every group. Patterns were checked when the scenario was built, so a failing
/// expansion cannot happen here; should it, the raw pattern stands in for the id.
pub(super) fn devices(groups: &[Group], seed: u64) -> Vec<DeviceSpec> {
    let mut out = Vec::with_capacity(groups.iter().map(|g| g.count).sum());
    let mut per_kind: HashMap<String, usize> = HashMap::new();
    let mut per_name: HashMap<(String, String), usize> = HashMap::new();
    for (gi, group) in groups.iter().enumerate() {
        let mut rng = group_rng(seed, gi);
        let kind = group.profile.kind.as_str().to_string();
        let cbor_share = group.cbor_share.clamp(0.0, 1.0);
        for n in 1..=group.count {
            let k = per_kind.entry(kind.clone()).or_default();
            *k += 1;
            let vars = IdVars {
                kind: &kind,
                n,
                k: *k,
                i: out.len() + 1,
                group: gi + 1,
            };
            let id =
                expand_pattern(&group.id, &|v| vars.get(v)).unwrap_or_else(|_| group.id.clone());
            let room = group.rooms[rng.random_range(0..group.rooms.len())].clone();
            let name = match &group.name {
                Some(pattern) => {
                    let lookup = |v: &str| match v {
                        "room" => Some(room.clone()),
                        "label" => Some(group.profile.label.clone()),
                        "id" => Some(id.clone()),
                        other => vars.get(other),
                    };
                    expand_pattern(pattern, &lookup).unwrap_or_else(|_| pattern.clone())
                }
                None => {
                    let same = per_name.entry((room.clone(), kind.clone())).or_default();
                    *same += 1;
                    match *same {
                        1 => format!("{room} {}", group.profile.label),
                        s => format!("{room} {} {s}", group.profile.label),
                    }
                }
            };
            let format = if rng.random_bool(cbor_share) {
                PayloadFormat::Cbor
            } else {
                PayloadFormat::Json
            };
            out.push(DeviceSpec {
                id,
                profile: group.profile.clone(),
                name,
                room,
                telemetry_interval: group.interval,
                format,
                telemetry_qos: group.qos,
                seed: rng.random(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let vars = |name: &str| match name {
            "kind" => Some("light".to_string()),
            "n" => Some("7".to_string()),
            "room" => Some("Hall".to_string()),
            _ => None,
        };
        assert_eq!(
            expand_pattern("{kind}-{n:03}", &vars),
            Ok("light-007".into())
        );
        assert_eq!(expand_pattern("{kind}-{n}", &vars), Ok("light-7".into()));
        assert_eq!(expand_pattern("{n:2}x", &vars), Ok("07x".into()));
        assert_eq!(expand_pattern("plain", &vars), Ok("plain".into()));
        assert_eq!(
            expand_pattern("{room:05}", &vars),
            Ok("Hall".into()),
            "only numbers are padded"
        );
        assert!(expand_pattern("{nope}", &vars)
            .unwrap_err()
            .contains("nope"));
        assert!(expand_pattern("{kind", &vars)
            .unwrap_err()
            .contains("unclosed"));
        assert!(expand_pattern("kind}", &vars)
            .unwrap_err()
            .contains("unmatched"));
        assert!(expand_pattern("{n:x}", &vars)
            .unwrap_err()
            .contains("width"));
    }
}
