//! One device's simulated state, whatever its kind: the built-in model of a built-in kind or
//! the generators of a scenario-defined kind, behind one interface the device task uses.

use serde_json::{Map, Value};

use crate::command;
use crate::generator::CustomModel;
use crate::model::Model;
use crate::profile::{Physics, Profile};

/// Controls and hidden variables of one device.
// Every device holds exactly one `Sim`, so boxing the larger variant would add an allocation
// per device without saving any memory.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Sim {
    Builtin(Model),
    Custom(CustomModel),
}

impl Sim {
    pub fn new(profile: &Profile, seed: u64) -> Sim {
        match &profile.physics {
            Physics::Builtin(kind) => Sim::Builtin(Model::new(*kind, seed)),
            Physics::Custom(physics) => Sim::Custom(CustomModel::new(physics, seed)),
        }
    }

    /// Current control values: the `state` payload.
    pub fn controls(&self) -> &Map<String, Value> {
        match self {
            Sim::Builtin(m) => m.controls(),
            Sim::Custom(m) => m.controls(),
        }
    }

    /// Checks `params` of a `set` against the profile's controls; returns the normalised changes.
    pub fn validate(profile: &Profile, params: &Value) -> Result<Map<String, Value>, String> {
        command::validate_set(&profile.controls, params)
    }

    /// Applies changes that [`Sim::validate`] returned.
    pub fn apply(&mut self, changes: Map<String, Value>) {
        match self {
            Sim::Builtin(m) => m.apply_changes(changes),
            Sim::Custom(m) => m.apply(changes),
        }
    }

    /// Advances by `dt_secs` and returns the telemetry map (without `ts`).
    pub fn step(&mut self, profile: &Profile, dt_secs: f64) -> Map<String, Value> {
        match (self, &profile.physics) {
            (Sim::Builtin(m), _) => m.step(dt_secs),
            (Sim::Custom(m), Physics::Custom(physics)) => m.step(physics, dt_secs),
            // A custom model always comes with custom physics (both from the same profile).
            (Sim::Custom(_), Physics::Builtin(_)) => Map::new(),
        }
    }
}
