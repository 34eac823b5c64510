//! Fleet and device specifications: what to simulate, expanded deterministically from a seed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::PayloadFormat;
use crate::kind::Kind;
use crate::profile::{DeviceKind, Profile};

/// Most devices one fleet or scenario may have: far more than one process runs (see
/// BENCHMARKS.md), and a count above it is a slip (an extra zero) that would otherwise exhaust
/// memory before the first device connects.
pub const MAX_DEVICES: usize = 1_000_000;

/// Rooms used when a fleet or scenario names none.
pub(crate) const ROOMS: &[&str] = &[
    "Kitchen",
    "Living Room",
    "Bedroom",
    "Bathroom",
    "Hallway",
    "Office",
    "Garage",
    "Garden",
    "Nursery",
    "Basement",
    "Attic",
    "Dining Room",
];

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub id: String,
    /// Its kind's shared description, physics and behaviour.
    pub profile: Arc<Profile>,
    pub name: String,
    pub room: String,
    pub telemetry_interval: Duration,
    pub format: PayloadFormat,
    /// QoS of telemetry publishes: 0 or 1.
    pub telemetry_qos: u8,
    /// Seeds the device's simulation, behaviour and telemetry phase.
    pub seed: u64,
}

impl DeviceSpec {
    /// A device of a built-in kind with default behaviour, JSON payloads, QoS 0 telemetry every
    /// second; change the fields for anything else.
    pub fn builtin(id: impl Into<String>, kind: Kind) -> DeviceSpec {
        DeviceSpec {
            id: id.into(),
            profile: Profile::builtin(kind),
            name: kind.label().to_string(),
            room: ROOMS[0].to_string(),
            telemetry_interval: Duration::from_secs(1),
            format: PayloadFormat::Json,
            telemetry_qos: 0,
            seed: 0,
        }
    }

    pub fn kind(&self) -> &DeviceKind {
        &self.profile.kind
    }
}

/// Equal when everything that shapes the device is equal (profiles compare by kind and
/// behaviour, which is what a scenario can change between two runs).
impl PartialEq for DeviceSpec {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.profile.kind == other.profile.kind
            && self.profile.behaviour == other.profile.behaviour
            && self.name == other.name
            && self.room == other.room
            && self.telemetry_interval == other.telemetry_interval
            && self.format == other.format
            && self.telemetry_qos == other.telemetry_qos
            && self.seed == other.seed
    }
}

/// A whole fleet, described compactly; [`FleetSpec::devices`] expands it deterministically.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub count: usize,
    /// Kinds assigned round-robin; empty means every kind.
    pub kinds: Vec<Kind>,
    pub telemetry_interval: Duration,
    pub seed: u64,
    /// Share of devices (0..=1) that publish telemetry and state as CBOR instead of JSON.
    pub cbor_share: f64,
    /// Prepended to every device id, e.g. `"lab1-"`.
    pub id_prefix: String,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            count: 12,
            kinds: Kind::ALL.to_vec(),
            telemetry_interval: Duration::from_secs(1),
            seed: 42,
            cbor_share: 0.25,
            id_prefix: String::new(),
        }
    }
}

impl FleetSpec {
    /// The fleet's devices. Same spec (seed included) => same ids, names, rooms, formats and seeds.
    /// Ids are `{id_prefix}{kind}-{n}` with `n` counting per kind from 1.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        let mut kinds: Vec<Kind> = Vec::new();
        for kind in &self.kinds {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        if kinds.is_empty() {
            kinds = Kind::ALL.to_vec();
        }
        let cbor_share = if self.cbor_share.is_nan() {
            0.0
        } else {
            self.cbor_share.clamp(0.0, 1.0)
        };
        let width = self.count.div_ceil(kinds.len()).to_string().len().max(3);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut per_kind: HashMap<Kind, usize> = HashMap::new();
        let mut per_name: HashMap<(usize, Kind), usize> = HashMap::new();
        (0..self.count)
            .map(|i| {
                let kind = kinds[i % kinds.len()];
                let n = per_kind.entry(kind).or_default();
                *n += 1;
                let room = rng.random_range(0..ROOMS.len());
                let same_name = per_name.entry((room, kind)).or_default();
                *same_name += 1;
                let name = match *same_name {
                    1 => format!("{} {}", ROOMS[room], kind.label()),
                    k => format!("{} {} {k}", ROOMS[room], kind.label()),
                };
                let format = if rng.random_bool(cbor_share) {
                    PayloadFormat::Cbor
                } else {
                    PayloadFormat::Json
                };
                DeviceSpec {
                    id: format!("{}{}-{:0width$}", self.id_prefix, kind.as_str(), n),
                    profile: Profile::builtin(kind),
                    name,
                    room: ROOMS[room].to_string(),
                    telemetry_interval: self.telemetry_interval,
                    format,
                    telemetry_qos: 0,
                    seed: rng.random(),
                }
            })
            .collect()
    }
}

/// Whether `id` is a valid device id per the contract: `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where in its interval a device publishes; derived from its seed but independent of its model.
pub(crate) fn telemetry_phase(spec: &DeviceSpec) -> Duration {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x9e37_79b9_7f4a_7c15);
    spec.telemetry_interval.mul_f64(rng.random_range(0.0..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use std::collections::HashSet;

    fn spec(seed: u64) -> FleetSpec {
        FleetSpec {
            count: 40,
            seed,
            ..FleetSpec::default()
        }
    }

    #[test]
    fn same_seed_same_devices_and_telemetry() {
        let (a, b) = (spec(42).devices(), spec(42).devices());
        assert_eq!(a, b);
        for (da, db) in a.iter().zip(&b) {
            let kind = |d: &DeviceSpec| d.kind().builtin().unwrap();
            let (mut ma, mut mb) = (Model::new(kind(da), da.seed), Model::new(kind(db), db.seed));
            let first_a: Vec<_> = (0..10).map(|_| ma.step(1.0)).collect();
            let first_b: Vec<_> = (0..10).map(|_| mb.step(1.0)).collect();
            assert_eq!(first_a, first_b, "{}", da.id);
            assert_eq!(telemetry_phase(da), telemetry_phase(db));
        }
        let c = spec(43).devices();
        assert_eq!(
            a.iter().map(|d| &d.id).collect::<Vec<_>>(),
            c.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        assert_ne!(
            a, c,
            "a different seed should change names, rooms or formats"
        );
    }

    #[test]
    fn ids_are_valid_unique_and_round_robin() {
        let devices = FleetSpec {
            count: 12,
            kinds: vec![Kind::Light, Kind::Plug, Kind::Light],
            id_prefix: "lab-".into(),
            ..FleetSpec::default()
        }
        .devices();
        assert_eq!(devices.len(), 12);
        let ids: HashSet<_> = devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), 12);
        assert!(devices.iter().all(|d| is_valid_device_id(&d.id)));
        assert_eq!(devices[0].id, "lab-light-001");
        assert_eq!(devices[1].id, "lab-plug-001");
        assert_eq!(devices[2].id, "lab-light-002");
        let names: HashSet<_> = devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), 12, "names must be unique: {names:?}");
        assert!(devices.iter().all(|d| d.name.starts_with(&d.room)));
    }

    #[test]
    fn cbor_share_and_empty_kinds() {
        let all_cbor = FleetSpec {
            count: 20,
            cbor_share: 1.0,
            kinds: vec![],
            ..FleetSpec::default()
        }
        .devices();
        assert!(all_cbor.iter().all(|d| d.format == PayloadFormat::Cbor));
        let kinds: HashSet<_> = all_cbor.iter().map(|d| d.kind().clone()).collect();
        assert_eq!(kinds.len(), Kind::ALL.len());
        let none = FleetSpec {
            count: 20,
            cbor_share: 0.0,
            ..FleetSpec::default()
        }
        .devices();
        assert!(none.iter().all(|d| d.format == PayloadFormat::Json));
        let some = FleetSpec {
            count: 400,
            cbor_share: 0.25,
            ..FleetSpec::default()
        }
        .devices();
        let cbor = some
            .iter()
            .filter(|d| d.format == PayloadFormat::Cbor)
            .count();
        assert!(
            (60..=140).contains(&cbor),
            "{cbor} of 400 CBOR devices at share 0.25"
        );
        // NaN must not panic inside the RNG.
        let nan = FleetSpec {
            count: 3,
            cbor_share: f64::NAN,
            ..FleetSpec::default()
        }
        .devices();
        assert_eq!(nan.len(), 3);
    }

    #[test]
    fn phases_spread_within_the_interval() {
        let devices = FleetSpec {
            count: 100,
            ..FleetSpec::default()
        }
        .devices();
        let phases: Vec<_> = devices.iter().map(telemetry_phase).collect();
        assert!(phases.iter().all(|p| *p < Duration::from_secs(1)));
        let distinct: HashSet<_> = phases.iter().map(|p| p.as_millis() / 100).collect();
        assert!(distinct.len() >= 8, "phases bunch up: {distinct:?}");
    }

    #[test]
    fn device_id_rule() {
        assert!(is_valid_device_id("a"));
        assert!(is_valid_device_id("Plug_01-x"));
        assert!(is_valid_device_id(&"x".repeat(64)));
        assert!(!is_valid_device_id(""));
        assert!(!is_valid_device_id(&"x".repeat(65)));
        assert!(!is_valid_device_id("a/b"));
        assert!(!is_valid_device_id("a+"));
        assert!(!is_valid_device_id("caf\u{e9}"));
    }
}
