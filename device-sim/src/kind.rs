//! Device kinds and their static descriptions: telemetry fields, controls, actions and the `meta` document.
//!
//! Descriptions are `'static` tables so a fleet of many devices shares them instead of holding a copy each.

use std::fmt;
use std::str::FromStr;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// The kinds of device the simulator can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Room thermostat: setpoint and mode; reports temperature, humidity and what the HVAC is doing.
    Thermostat,
    /// Dimmable light: on/off, brightness, colour temperature; reports power drawn.
    Light,
    /// Smart plug: on/off; reports power, voltage, current and energy.
    Plug,
    /// Battery multi-sensor: motion, door contact, temperature, humidity, light level. No controls.
    Sensor,
    /// Motorised blind: position 0 (closed) to 100 (open) and slat tilt; reports movement.
    Blind,
}

/// Value types used in `meta` for telemetry fields and controls (the contract's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Bool,
    Int,
    Float,
    Enum,
    String,
}

/// One telemetry field or control as described in `meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: ValueType,
    pub unit: Option<&'static str>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Only meaningful for controls: values must be `min + k * step`.
    pub step: Option<f64>,
    /// Allowed values of an `enum`; empty for other types.
    pub choices: &'static [&'static str],
}

impl FieldSpec {
    const fn new(name: &'static str, ty: ValueType) -> Self {
        FieldSpec {
            name,
            ty,
            unit: None,
            min: None,
            max: None,
            step: None,
            choices: &[],
        }
    }
    const fn unit(mut self, unit: &'static str) -> Self {
        self.unit = Some(unit);
        self
    }
    const fn range(mut self, min: f64, max: f64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
    const fn step(mut self, step: f64) -> Self {
        self.step = Some(step);
        self
    }
    const fn choices(mut self, choices: &'static [&'static str]) -> Self {
        self.choices = choices;
        self
    }
}

impl Serialize for FieldSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", &self.ty)?;
        if let Some(unit) = self.unit {
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
        if let Some(min) = self.min {
            map.serialize_entry("min", &num(min))?;
        }
        if let Some(max) = self.max {
            map.serialize_entry("max", &num(max))?;
        }
        if let Some(step) = self.step {
            map.serialize_entry("step", &num(step))?;
        }
        if !self.choices.is_empty() {
            map.serialize_entry("choices", self.choices)?;
        }
        map.end()
    }
}

use ValueType::{Bool, Enum, Float, Int};

pub(crate) const THERMOSTAT_MODES: &[&str] = &["off", "heat", "cool", "auto"];
pub(crate) const HVAC_STATES: &[&str] = &["idle", "heating", "cooling"];
pub(crate) const DOOR_STATES: &[&str] = &["closed", "open"];

const THERMOSTAT_TELEMETRY: &[FieldSpec] = &[
    FieldSpec::new("temperature", Float)
        .unit("°C")
        .range(-20.0, 50.0),
    FieldSpec::new("humidity", Float)
        .unit("%")
        .range(0.0, 100.0),
    FieldSpec::new("hvac", Enum).choices(HVAC_STATES),
];
const THERMOSTAT_CONTROLS: &[FieldSpec] = &[
    FieldSpec::new("setpoint", Float)
        .unit("°C")
        .range(5.0, 35.0)
        .step(0.5),
    FieldSpec::new("mode", Enum).choices(THERMOSTAT_MODES),
];

const LIGHT_TELEMETRY: &[FieldSpec] = &[
    FieldSpec::new("power", Float).unit("W").range(0.0, 12.0),
    FieldSpec::new("energy", Float).unit("Wh").range(0.0, 1.0e9),
];
const LIGHT_CONTROLS: &[FieldSpec] = &[
    FieldSpec::new("on", Bool),
    FieldSpec::new("brightness", Int)
        .unit("%")
        .range(0.0, 100.0)
        .step(1.0),
    FieldSpec::new("color_temp", Int)
        .unit("K")
        .range(2700.0, 6500.0)
        .step(100.0),
];

const PLUG_TELEMETRY: &[FieldSpec] = &[
    FieldSpec::new("power", Float).unit("W").range(0.0, 3680.0),
    FieldSpec::new("voltage", Float)
        .unit("V")
        .range(207.0, 253.0),
    FieldSpec::new("current", Float).unit("A").range(0.0, 16.0),
    FieldSpec::new("energy", Float)
        .unit("kWh")
        .range(0.0, 1.0e9),
];
const PLUG_CONTROLS: &[FieldSpec] = &[FieldSpec::new("on", Bool)];

const SENSOR_TELEMETRY: &[FieldSpec] = &[
    FieldSpec::new("temperature", Float)
        .unit("°C")
        .range(-20.0, 50.0),
    FieldSpec::new("humidity", Float)
        .unit("%")
        .range(0.0, 100.0),
    FieldSpec::new("illuminance", Float)
        .unit("lx")
        .range(0.0, 2000.0),
    FieldSpec::new("motion", Bool),
    FieldSpec::new("door", Enum).choices(DOOR_STATES),
    FieldSpec::new("battery", Int).unit("%").range(0.0, 100.0),
];

const BLIND_TELEMETRY: &[FieldSpec] = &[
    FieldSpec::new("position", Int).unit("%").range(0.0, 100.0),
    FieldSpec::new("tilt", Int).unit("°").range(0.0, 90.0),
    FieldSpec::new("moving", Bool),
];
const BLIND_CONTROLS: &[FieldSpec] = &[
    FieldSpec::new("position", Int)
        .unit("%")
        .range(0.0, 100.0)
        .step(1.0),
    FieldSpec::new("tilt", Int)
        .unit("°")
        .range(0.0, 90.0)
        .step(5.0),
];

impl Kind {
    /// Every kind, in a fixed order (used for round-robin fleets and the CLI default).
    pub const ALL: [Kind; 5] = [
        Kind::Thermostat,
        Kind::Light,
        Kind::Plug,
        Kind::Sensor,
        Kind::Blind,
    ];

    /// The name used in `meta.kind`, device ids and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Thermostat => "thermostat",
            Kind::Light => "light",
            Kind::Plug => "plug",
            Kind::Sensor => "sensor",
            Kind::Blind => "blind",
        }
    }

    /// A human label used to build device names ("Kitchen Light").
    pub fn label(self) -> &'static str {
        match self {
            Kind::Thermostat => "Thermostat",
            Kind::Light => "Light",
            Kind::Plug => "Plug",
            Kind::Sensor => "Sensor",
            Kind::Blind => "Blind",
        }
    }

    pub fn telemetry(self) -> &'static [FieldSpec] {
        match self {
            Kind::Thermostat => THERMOSTAT_TELEMETRY,
            Kind::Light => LIGHT_TELEMETRY,
            Kind::Plug => PLUG_TELEMETRY,
            Kind::Sensor => SENSOR_TELEMETRY,
            Kind::Blind => BLIND_TELEMETRY,
        }
    }

    pub fn controls(self) -> &'static [FieldSpec] {
        match self {
            Kind::Thermostat => THERMOSTAT_CONTROLS,
            Kind::Light => LIGHT_CONTROLS,
            Kind::Plug => PLUG_CONTROLS,
            Kind::Sensor => &[],
            Kind::Blind => BLIND_CONTROLS,
        }
    }

    /// Actions the device accepts on its `cmd` topic; a kind without controls accepts none.
    pub fn actions(self) -> &'static [&'static str] {
        if self.controls().is_empty() {
            &[]
        } else {
            &["set"]
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown device kind '{s}' (known: {})", names.join(", "))
            })
    }
}

/// The retained `meta` document of one device, serialised with fields in table order.
pub struct Meta<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub room: &'a str,
}

struct Fields(&'static [FieldSpec]);

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for field in self.0 {
            map.serialize_entry(field.name, field)?;
        }
        map.end()
    }
}

impl Serialize for Meta<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(6))?;
        map.serialize_entry("kind", self.kind.as_str())?;
        map.serialize_entry("name", self.name)?;
        map.serialize_entry("room", self.room)?;
        map.serialize_entry("telemetry", &Fields(self.kind.telemetry()))?;
        map.serialize_entry("controls", &Fields(self.kind.controls()))?;
        map.serialize_entry("actions", self.kind.actions())?;
        map.end()
    }
}

impl Meta<'_> {
    /// The JSON bytes published on `{prefix}/{id}/meta`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising static tables and two strings into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn meta_value(kind: Kind) -> Value {
        let meta = Meta {
            kind,
            name: "Test",
            room: "Lab",
        };
        serde_json::from_slice(&meta.to_json()).unwrap()
    }

    #[test]
    fn meta_has_contract_shape_for_every_kind() {
        for kind in Kind::ALL {
            let v = meta_value(kind);
            assert_eq!(v["kind"], kind.as_str());
            assert_eq!(v["name"], "Test");
            assert_eq!(v["room"], "Lab");
            let telemetry = v["telemetry"].as_object().unwrap();
            assert!(!telemetry.is_empty(), "{kind}: no telemetry");
            let controls = v["controls"].as_object().unwrap();
            assert_eq!(controls.len(), kind.controls().len());
            let actions: Vec<_> = v["actions"].as_array().unwrap().iter().collect();
            assert_eq!(actions.is_empty(), controls.is_empty(), "{kind}");
            for section in [telemetry, controls] {
                for (name, spec) in section {
                    let ty = spec["type"].as_str().unwrap_or_default();
                    assert!(
                        ["bool", "int", "float", "enum", "string"].contains(&ty),
                        "{kind}.{name}: bad type {ty}"
                    );
                    if ty == "int" || ty == "float" {
                        let (min, max) = (spec["min"].as_f64(), spec["max"].as_f64());
                        let (min, max) = (min.unwrap(), max.unwrap());
                        assert!(min < max, "{kind}.{name}: min {min} >= max {max}");
                    }
                    if ty == "int" {
                        assert!(
                            spec["min"].is_i64(),
                            "{kind}.{name}: int min printed as float"
                        );
                    }
                    if ty == "enum" {
                        assert!(spec["choices"].as_array().unwrap().len() >= 2);
                    }
                }
            }
            for (name, spec) in controls {
                if let Some(step) = spec.get("step") {
                    let step = step.as_f64().unwrap();
                    let span = spec["max"].as_f64().unwrap() - spec["min"].as_f64().unwrap();
                    assert!(step > 0.0 && step <= span, "{kind}.{name}: step {step}");
                    let k = span / step;
                    assert!((k - k.round()).abs() < 1e-9, "{kind}.{name}: max off-step");
                }
            }
        }
    }

    #[test]
    fn meta_keeps_table_order() {
        let json = String::from_utf8(
            Meta {
                kind: Kind::Light,
                name: "n",
                room: "r",
            }
            .to_json(),
        )
        .unwrap();
        let on = json.find("\"on\"").unwrap();
        let brightness = json.find("\"brightness\"").unwrap();
        let color = json.find("\"color_temp\"").unwrap();
        assert!(on < brightness && brightness < color, "{json}");
        assert!(json.starts_with("{\"kind\":\"light\""), "{json}");
    }

    #[test]
    fn kind_parses_case_insensitively_and_rejects_unknown() {
        assert_eq!("Thermostat".parse::<Kind>(), Ok(Kind::Thermostat));
        assert_eq!(" blind ".parse::<Kind>(), Ok(Kind::Blind));
        let err = "toaster".parse::<Kind>().unwrap_err();
        assert!(
            err.contains("toaster") && err.contains("thermostat"),
            "{err}"
        );
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
        }
    }
}
