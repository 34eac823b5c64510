//! The physics of each simulated device: a seeded random walk that stays in realistic ranges and
//! follows the device's control state (a plug that is off draws nothing, a heating thermostat warms up).
//!
//! Pure and deterministic: the same seed and the same sequence of calls give the same values.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::command;
use crate::kind::{Kind, DOOR_STATES, HVAC_STATES};

/// Per-kind hidden variables (what the device "measures", as opposed to what it is told).
#[derive(Debug, Clone)]
enum Sim {
    Thermostat {
        temperature: f64,
        humidity: f64,
        ambient: f64,
        /// Index into HVAC_STATES; kept so heating has hysteresis instead of flapping every tick.
        hvac: usize,
    },
    Light {
        energy_wh: f64,
    },
    Plug {
        base_load: f64,
        load: f64,
        voltage: f64,
        energy_kwh: f64,
    },
    Sensor {
        temperature: f64,
        humidity: f64,
        illuminance: f64,
        battery: f64,
        door_open: bool,
        motion_ticks: u32,
    },
    Blind {
        position: f64,
        tilt: f64,
    },
}

/// One device's simulated state: its controls (as reported on `state`) and its hidden variables.
#[derive(Debug, Clone)]
pub struct Model {
    kind: Kind,
    rng: ChaCha8Rng,
    controls: Map<String, Value>,
    sim: Sim,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Symmetric noise in [-scale, scale].
fn noise(rng: &mut ChaCha8Rng, scale: f64) -> f64 {
    rng.random_range(-1.0..=1.0) * scale
}

impl Model {
    pub fn new(kind: Kind, seed: u64) -> Model {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut controls = Map::new();
        let sim = match kind {
            Kind::Thermostat => {
                let setpoint = f64::from(rng.random_range(38..=46u8)) * 0.5; // 19.0..23.0
                controls.insert("setpoint".into(), Value::from(setpoint));
                let mode = if rng.random_bool(0.7) { "heat" } else { "auto" };
                controls.insert("mode".into(), Value::from(mode));
                let ambient = rng.random_range(14.0..20.0);
                Sim::Thermostat {
                    temperature: ambient + rng.random_range(0.0..4.0),
                    humidity: rng.random_range(35.0..55.0),
                    ambient,
                    hvac: 0,
                }
            }
            Kind::Light => {
                controls.insert("on".into(), Value::from(rng.random_bool(0.5)));
                controls.insert(
                    "brightness".into(),
                    Value::from(rng.random_range(10..=100i64)),
                );
                let color_temp = 2700 + 100 * rng.random_range(0..=38i64);
                controls.insert("color_temp".into(), Value::from(color_temp));
                Sim::Light { energy_wh: 0.0 }
            }
            Kind::Plug => {
                controls.insert("on".into(), Value::from(rng.random_bool(0.6)));
                let base_load = rng.random_range(5.0..1500.0);
                Sim::Plug {
                    base_load,
                    load: base_load,
                    voltage: rng.random_range(226.0..234.0),
                    energy_kwh: 0.0,
                }
            }
            Kind::Sensor => Sim::Sensor {
                temperature: rng.random_range(17.0..24.0),
                humidity: rng.random_range(35.0..60.0),
                illuminance: rng.random_range(50.0..600.0),
                battery: rng.random_range(60.0..100.0),
                door_open: false,
                motion_ticks: 0,
            },
            Kind::Blind => {
                let position = 5 * rng.random_range(0..=20i64);
                controls.insert("position".into(), Value::from(position));
                let tilt = 5 * rng.random_range(0..=18i64);
                controls.insert("tilt".into(), Value::from(tilt));
                Sim::Blind {
                    position: position as f64,
                    tilt: tilt as f64,
                }
            }
        };
        Model {
            kind,
            rng,
            controls,
            sim,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The current control values: the `state` payload and the `result` of a successful `set`.
    pub fn controls(&self) -> &Map<String, Value> {
        &self.controls
    }

    /// Validates and applies a `set`; on error nothing changes.
    pub fn apply_set(&mut self, params: &Value) -> Result<&Map<String, Value>, String> {
        let profile = crate::profile::Profile::builtin(self.kind);
        let changes = command::validate_set(&profile.controls, params)?;
        self.controls.extend(changes);
        Ok(&self.controls)
    }

    /// Applies changes already validated against this kind's controls.
    pub fn apply_changes(&mut self, changes: Map<String, Value>) {
        self.controls.extend(changes);
    }

    fn num(&self, name: &str) -> f64 {
        self.controls
            .get(name)
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    }

    fn flag(&self, name: &str) -> bool {
        self.controls
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Advances the simulation by `dt_secs` and returns the telemetry map (without `ts`).
    pub fn step(&mut self, dt_secs: f64) -> Map<String, Value> {
        let dt = dt_secs.max(0.0);
        let mut out = Map::new();
        // Read controls before borrowing `sim` mutably.
        let setpoint = self.num("setpoint");
        let mode = self
            .controls
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("off")
            .to_string();
        let on = self.flag("on");
        let brightness = self.num("brightness");
        let (target_pos, target_tilt) = (self.num("position"), self.num("tilt"));
        let rng = &mut self.rng;
        match &mut self.sim {
            Sim::Thermostat {
                temperature,
                humidity,
                ambient,
                hvac,
            } => {
                let can_heat = mode == "heat" || mode == "auto";
                let can_cool = mode == "cool" || mode == "auto";
                // Hysteresis of 0.3 °C around the setpoint, like a real two-point controller.
                *hvac = match *hvac {
                    1 if can_heat && *temperature < setpoint + 0.3 => 1,
                    2 if can_cool && *temperature > setpoint - 0.3 => 2,
                    _ if can_heat && *temperature < setpoint - 0.3 => 1,
                    _ if can_cool && *temperature > setpoint + 0.3 => 2,
                    _ => 0,
                };
                let (target, rate) = match *hvac {
                    1 => (setpoint + 1.0, 0.02),
                    2 => (setpoint - 1.0, 0.02),
                    _ => (*ambient, 0.002),
                };
                let k = (rate * dt).min(1.0);
                *temperature += (target - *temperature) * k + noise(rng, 0.02 * dt.sqrt());
                *temperature = temperature.clamp(-20.0, 50.0);
                *humidity = (*humidity + noise(rng, 0.2 * dt.sqrt())).clamp(20.0, 80.0);
                out.insert("temperature".into(), Value::from(round2(*temperature)));
                out.insert("humidity".into(), Value::from(round2(*humidity)));
                out.insert("hvac".into(), Value::from(HVAC_STATES[*hvac]));
            }
            Sim::Light { energy_wh } => {
                let power = if on {
                    let p = 0.6 + 9.4 * brightness / 100.0;
                    (p * (1.0 + noise(rng, 0.02))).clamp(0.0, 12.0)
                } else {
                    0.0
                };
                *energy_wh += power * dt / 3600.0;
                out.insert("power".into(), Value::from(round2(power)));
                out.insert(
                    "energy".into(),
                    Value::from((*energy_wh * 1e4).round() / 1e4),
                );
            }
            Sim::Plug {
                base_load,
                load,
                voltage,
                energy_kwh,
            } => {
                // Mean-reverting walk around the appliance's typical draw.
                *load += (*base_load - *load) * (0.1 * dt).min(1.0)
                    + noise(rng, 0.05 * *base_load * dt.sqrt());
                // 3300 W keeps the current under the plug's 16 A rating even at low mains voltage.
                *load = load.clamp(0.0, 3300.0);
                *voltage += (230.0 - *voltage) * (0.05 * dt).min(1.0) + noise(rng, 0.5 * dt.sqrt());
                *voltage = voltage.clamp(207.0, 253.0);
                let power = if on { *load } else { 0.0 };
                *energy_kwh += power * dt / 3.6e6;
                out.insert("power".into(), Value::from(round2(power)));
                out.insert("voltage".into(), Value::from(round2(*voltage)));
                out.insert(
                    "current".into(),
                    Value::from((power / *voltage * 1e3).round() / 1e3),
                );
                out.insert(
                    "energy".into(),
                    Value::from((*energy_kwh * 1e6).round() / 1e6),
                );
            }
            Sim::Sensor {
                temperature,
                humidity,
                illuminance,
                battery,
                door_open,
                motion_ticks,
            } => {
                *temperature = (*temperature + noise(rng, 0.03 * dt.sqrt())).clamp(-20.0, 50.0);
                *humidity = (*humidity + noise(rng, 0.2 * dt.sqrt())).clamp(10.0, 95.0);
                *illuminance =
                    (*illuminance * (1.0 + noise(rng, 0.05 * dt.sqrt()))).clamp(0.0, 2000.0);
                // A battery sensor loses roughly 1 % a day, faster while it reports motion.
                let drain = if *motion_ticks > 0 { 3.0 } else { 1.0 };
                *battery = (*battery - drain * dt / 86_400.0).max(0.0);
                if *motion_ticks > 0 {
                    *motion_ticks -= 1;
                } else if rng.random_bool((0.03 * dt).min(1.0)) {
                    *motion_ticks = rng.random_range(2..8);
                }
                if rng.random_bool((0.005 * dt).min(1.0)) {
                    *door_open = !*door_open;
                }
                out.insert("temperature".into(), Value::from(round2(*temperature)));
                out.insert("humidity".into(), Value::from(round2(*humidity)));
                out.insert("illuminance".into(), Value::from(illuminance.round()));
                out.insert("motion".into(), Value::from(*motion_ticks > 0));
                out.insert(
                    "door".into(),
                    Value::from(DOOR_STATES[usize::from(*door_open)]),
                );
                out.insert("battery".into(), Value::from(battery.ceil() as i64));
            }
            Sim::Blind { position, tilt } => {
                // Motors move 10 %/s and tilt 30 °/s towards the commanded values.
                let moving = *position != target_pos || *tilt != target_tilt;
                *position = approach(*position, target_pos, 10.0 * dt);
                *tilt = approach(*tilt, target_tilt, 30.0 * dt);
                out.insert("position".into(), Value::from(position.round() as i64));
                out.insert("tilt".into(), Value::from(tilt.round() as i64));
                out.insert("moving".into(), Value::from(moving));
            }
        }
        out
    }
}

fn approach(current: f64, target: f64, max_delta: f64) -> f64 {
    if (target - current).abs() <= max_delta {
        target
    } else {
        current + max_delta.copysign(target - current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ValueType;
    use serde_json::json;

    #[test]
    fn same_seed_same_telemetry() {
        for kind in Kind::ALL {
            let (mut a, mut b) = (Model::new(kind, 7), Model::new(kind, 7));
            assert_eq!(a.controls(), b.controls());
            for _ in 0..50 {
                assert_eq!(a.step(1.0), b.step(1.0), "{kind}");
            }
            let mut c = Model::new(kind, 8);
            let differs = (0..50).any(|_| c.step(1.0) != a.step(1.0));
            assert!(differs, "{kind}: seed has no effect");
        }
    }

    #[test]
    fn telemetry_matches_meta_over_a_long_run() {
        for kind in Kind::ALL {
            for seed in 0..5 {
                let mut m = Model::new(kind, seed);
                for _ in 0..2000 {
                    let t = m.step(5.0);
                    assert_eq!(t.len(), kind.telemetry().len(), "{kind}");
                    for spec in kind.telemetry() {
                        let v = &t[spec.name];
                        let ok = match spec.ty {
                            ValueType::Bool => v.is_boolean(),
                            ValueType::Int => v.is_i64(),
                            ValueType::Float => v.is_f64(),
                            ValueType::Enum => spec.choices.contains(&v.as_str().unwrap_or("")),
                            ValueType::String => v.is_string(),
                        };
                        assert!(ok, "{kind}.{}: {v} does not fit {:?}", spec.name, spec.ty);
                        if let (Some(min), Some(max), Some(x)) = (spec.min, spec.max, v.as_f64()) {
                            assert!((min..=max).contains(&x), "{kind}.{} = {x}", spec.name);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn plug_draws_nothing_when_off() {
        let mut m = Model::new(Kind::Plug, 1);
        m.apply_set(&json!({"on": true})).unwrap();
        assert!(m.step(1.0)["power"].as_f64().unwrap() > 0.0);
        m.apply_set(&json!({"on": false})).unwrap();
        let t = m.step(1.0);
        assert_eq!(t["power"], json!(0.0));
        assert_eq!(t["current"], json!(0.0));
    }

    #[test]
    fn light_power_follows_brightness() {
        let mut m = Model::new(Kind::Light, 1);
        m.apply_set(&json!({"on": true, "brightness": 10})).unwrap();
        let dim = m.step(1.0)["power"].as_f64().unwrap();
        m.apply_set(&json!({"brightness": 100})).unwrap();
        let bright = m.step(1.0)["power"].as_f64().unwrap();
        assert!(bright > dim * 3.0, "dim {dim} bright {bright}");
        m.apply_set(&json!({"on": false})).unwrap();
        assert_eq!(m.step(1.0)["power"], json!(0.0));
    }

    #[test]
    fn thermostat_heats_towards_setpoint_and_idles_when_off() {
        let mut m = Model::new(Kind::Thermostat, 3);
        m.apply_set(&json!({"mode": "heat", "setpoint": 30}))
            .unwrap();
        let first = m.step(1.0);
        assert_eq!(first["hvac"], "heating");
        let start = first["temperature"].as_f64().unwrap();
        let mut last = Map::new();
        for _ in 0..600 {
            last = m.step(1.0);
        }
        let end = last["temperature"].as_f64().unwrap();
        assert!(end > start + 3.0 && end < 31.5, "start {start} end {end}");
        m.apply_set(&json!({"mode": "off"})).unwrap();
        assert_eq!(m.step(1.0)["hvac"], "idle");
    }

    #[test]
    fn blind_moves_to_commanded_position() {
        let mut m = Model::new(Kind::Blind, 1);
        m.apply_set(&json!({"position": 0, "tilt": 0})).unwrap();
        for _ in 0..20 {
            m.step(1.0);
        }
        m.apply_set(&json!({"position": 100})).unwrap();
        let t = m.step(1.0);
        assert_eq!(t["moving"], true);
        assert_eq!(t["position"], 10);
        for _ in 0..10 {
            m.step(1.0);
        }
        let t = m.step(1.0);
        assert_eq!(
            (t["position"].as_i64(), t["moving"].as_bool()),
            (Some(100), Some(false))
        );
    }

    #[test]
    fn sensor_battery_drains_and_motion_happens() {
        let mut m = Model::new(Kind::Sensor, 2);
        let first = m.step(60.0)["battery"].as_i64().unwrap();
        let mut motion = false;
        let mut last = first;
        for _ in 0..(3 * 1440) {
            let t = m.step(60.0);
            motion |= t["motion"] == true;
            last = t["battery"].as_i64().unwrap();
        }
        assert!(motion, "no motion in three simulated days");
        assert!(last < first, "battery did not drain: {first} -> {last}");
    }

    #[test]
    fn failed_set_changes_nothing() {
        let mut m = Model::new(Kind::Light, 1);
        let before = m.controls().clone();
        assert!(m
            .apply_set(&json!({"on": !before["on"].as_bool().unwrap(), "brightness": 1000}))
            .is_err());
        assert_eq!(m.controls(), &before);
    }
}
