//! Device profiles: everything devices of one kind share (fields, controls, actions, physics,
//! command behaviour), for built-in kinds and for kinds defined in scenario files alike.
//!
//! A profile is built once and shared through an `Arc` by every device of its kind, so a large
//! fleet holds one copy of the description, not one per device.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::behaviour::Behaviour;
use crate::generator::CustomPhysics;
use crate::kind::{FieldSpec, Kind, ValueType};

/// One telemetry field or control, as described in `meta` (the owned form of [`FieldSpec`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: ValueType,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Controls only: values must be `min + k * step`.
    pub step: Option<f64>,
    /// Allowed values of an `enum`; empty for other types.
    pub choices: Vec<String>,
}

impl Field {
    /// A field of this type with no unit, range or choices.
    pub fn new(name: impl Into<String>, ty: ValueType) -> Field {
        Field {
            name: name.into(),
            ty,
            unit: None,
            min: None,
            max: None,
            step: None,
            choices: Vec::new(),
        }
    }
}

impl From<&FieldSpec> for Field {
    fn from(spec: &FieldSpec) -> Field {
        Field {
            name: spec.name.to_string(),
            ty: spec.ty,
            unit: spec.unit.map(str::to_string),
            min: spec.min,
            max: spec.max,
            step: spec.step,
            choices: spec.choices.iter().map(|c| c.to_string()).collect(),
        }
    }
}

impl Serialize for Field {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", &self.ty)?;
        if let Some(unit) = &self.unit {
            map.serialize_entry("unit", unit)?;
        }
        // Integer fields print their bounds as integers so clients can use them as-is.
        let num = |v: f64| -> serde_json::Value {
            if self.ty == ValueType::Int {
                serde_json::Value::from(v as i64)
            } else {
                serde_json::Value::from(v)
            }
        };
        for (key, value) in [("min", self.min), ("max", self.max), ("step", self.step)] {
            if let Some(v) = value {
                map.serialize_entry(key, &num(v))?;
            }
        }
        if !self.choices.is_empty() {
            map.serialize_entry("choices", &self.choices)?;
        }
        map.end()
    }
}

/// The kind of a device: one of the built-in kinds or one defined in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Builtin(Kind),
    Custom(Arc<str>),
}

impl DeviceKind {
    /// The name used in `meta.kind` and in id patterns.
    pub fn as_str(&self) -> &str {
        match self {
            DeviceKind::Builtin(kind) => kind.as_str(),
            DeviceKind::Custom(name) => name,
        }
    }

    pub fn builtin(&self) -> Option<Kind> {
        match self {
            DeviceKind::Builtin(kind) => Some(*kind),
            DeviceKind::Custom(_) => None,
        }
    }
}

/// Lets callers that only know built-in kinds keep writing `device.kind() == Kind::Light`.
impl PartialEq<Kind> for DeviceKind {
    fn eq(&self, other: &Kind) -> bool {
        self.builtin() == Some(*other)
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a kind's telemetry is produced.
#[derive(Debug)]
pub enum Physics {
    /// The hand-written model of a built-in kind (see [`crate::model`]).
    Builtin(Kind),
    /// Generators declared in a scenario file (see [`crate::generator`]).
    Custom(CustomPhysics),
}

/// Everything devices of one kind share.
#[derive(Debug)]
pub struct Profile {
    pub kind: DeviceKind,
    /// Human label used in default device names ("Kitchen Fan").
    pub label: String,
    pub telemetry: Vec<Field>,
    pub controls: Vec<Field>,
    pub actions: Vec<String>,
    pub physics: Physics,
    pub behaviour: Behaviour,
    /// `"telemetry":{..},"controls":{..},"actions":[..]`, rendered once for every device's meta.
    meta_tail: String,
}

impl Profile {
    /// Builds a profile and renders the shared part of its `meta`.
    pub fn new(
        kind: DeviceKind,
        label: String,
        telemetry: Vec<Field>,
        controls: Vec<Field>,
        actions: Vec<String>,
        physics: Physics,
        behaviour: Behaviour,
    ) -> Profile {
        let meta_tail = render_tail(&telemetry, &controls, &actions);
        Profile {
            kind,
            label,
            telemetry,
            controls,
            actions,
            physics,
            behaviour,
            meta_tail,
        }
    }

    /// The shared profile of a built-in kind, with the default (prompt, faultless) behaviour.
    pub fn builtin(kind: Kind) -> Arc<Profile> {
        static PROFILES: OnceLock<Vec<Arc<Profile>>> = OnceLock::new();
        let all = PROFILES.get_or_init(|| {
            Kind::ALL
                .iter()
                .map(|k| Arc::new(Profile::builtin_with(*k, Behaviour::default())))
                .collect()
        });
        let index = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        all[index].clone()
    }

    /// A built-in kind with its own behaviour (a scenario group that makes plugs slow to ack).
    pub fn builtin_with(kind: Kind, behaviour: Behaviour) -> Profile {
        Profile::new(
            DeviceKind::Builtin(kind),
            kind.label().to_string(),
            kind.telemetry().iter().map(Field::from).collect(),
            kind.controls().iter().map(Field::from).collect(),
            kind.actions().iter().map(|a| a.to_string()).collect(),
            Physics::Builtin(kind),
            behaviour,
        )
    }

    /// The same kind with another behaviour.
    pub fn with_behaviour(&self, behaviour: Behaviour) -> Profile {
        Profile {
            kind: self.kind.clone(),
            label: self.label.clone(),
            telemetry: self.telemetry.clone(),
            controls: self.controls.clone(),
            actions: self.actions.clone(),
            physics: match &self.physics {
                Physics::Builtin(kind) => Physics::Builtin(*kind),
                Physics::Custom(custom) => Physics::Custom(custom.clone()),
            },
            behaviour,
            meta_tail: self.meta_tail.clone(),
        }
    }

    /// The retained `meta` document of one device of this kind.
    pub fn meta_json(&self, name: &str, room: &str) -> Vec<u8> {
        // Serialising strings cannot fail.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        format!(
            "{{\"kind\":{},\"name\":{},\"room\":{},{}}}",
            quote(self.kind.as_str()),
            quote(name),
            quote(room),
            self.meta_tail
        )
        .into_bytes()
    }

    /// Whether the device accepts `set` commands (it has controls and lists the action).
    pub fn accepts_set(&self) -> bool {
        !self.controls.is_empty() && self.actions.iter().any(|a| a == "set")
    }
}

struct Fields<'a>(&'a [Field]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for field in self.0 {
            map.serialize_entry(&field.name, field)?;
        }
        map.end()
    }
}

fn render_tail(telemetry: &[Field], controls: &[Field], actions: &[String]) -> String {
    // Serialising in-memory fields and strings cannot fail.
    format!(
        "\"telemetry\":{},\"controls\":{},\"actions\":{}",
        serde_json::to_string(&Fields(telemetry)).unwrap_or_default(),
        serde_json::to_string(&Fields(controls)).unwrap_or_default(),
        serde_json::to_string(actions).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Meta;
    use serde_json::Value;

    #[test]
    fn builtin_meta_matches_the_static_tables() {
        for kind in Kind::ALL {
            let profile = Profile::builtin(kind);
            let ours: Value = serde_json::from_slice(&profile.meta_json("N \"q\"", "R")).unwrap();
            let tables: Value = serde_json::from_slice(
                &Meta {
                    kind,
                    name: "N \"q\"",
                    room: "R",
                }
                .to_json(),
            )
            .unwrap();
            assert_eq!(ours, tables, "{kind}");
            assert_eq!(profile.accepts_set(), !kind.controls().is_empty());
        }
    }

    #[test]
    fn device_kind_compares_with_builtin_kinds() {
        assert_eq!(DeviceKind::Builtin(Kind::Light), Kind::Light);
        assert!(DeviceKind::Builtin(Kind::Light) != Kind::Plug);
        let fan = DeviceKind::Custom(Arc::from("fan"));
        assert!(fan != Kind::Light);
        assert_eq!(fan.as_str(), "fan");
        assert_eq!(fan.to_string(), "fan");
    }
}
