//! Scenario files: a TOML description of a fleet (kinds, counts, id patterns, rooms), how its
//! devices behave, a timeline of faults and the expectations a run is judged by.
//!
//! - `file`: the TOML as written, strict about unknown keys.
//! - `build`: checks it and turns it into a [`Scenario`] (groups, faults, expectations).
//! - `kinds`: builds the profiles of kinds defined in the file (fields, generators, behaviour).
//! - `expand`: turns the fleet groups into [`DeviceSpec`]s, deterministically from the seed.
//!
//! ```
//! let scenario = device_sim::Scenario::from_toml(r#"
//!     seed = 7
//!     [[fleet]]
//!     kind = "light"
//!     count = 3
//! "#, std::path::Path::new(".")).unwrap();
//! let ids: Vec<_> = scenario.devices().into_iter().map(|d| d.id).collect();
//! assert_eq!(ids, ["light-001", "light-002", "light-003"]);
//! ```

mod build;
mod expand;
mod file;
mod kinds;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::expect::Expectation;
use crate::fault::Fault;
use crate::profile::Profile;
use crate::spec::DeviceSpec;

pub use expand::expand_pattern;

/// Why a scenario file cannot be used. Causes are in the messages, never `source`s (see
/// [`crate::SimError`]).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not TOML, or a key or value the format does not know (the message has the line).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Well-formed but unusable; `at` says where (`fleet[2].kind`, `faults[0].share`).
    #[error("{path}: {at}: {message}")]
    Invalid {
        path: String,
        at: String,
        message: String,
    },
}

/// Where devices connect, as the scenario says (flags on the command line win).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerSettings {
    /// `HOST:PORT`
    pub address: Option<String>,
    /// Paths are resolved against the scenario file's folder.
    pub ca: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub prefix: Option<String>,
    pub keep_alive: Option<Duration>,
    /// New connections per second (the connection ramp); `None` = unlimited.
    pub connect_rate: Option<f64>,
}

/// Where the observer connects, as the scenario says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObserverSettings {
    /// `HOST:PORT` of the bridge's TLS port.
    pub bridge: Option<String>,
    /// CA of the bridge's server certificate (default: the broker's CA).
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the bridge's certificate against (default: the host of `bridge`).
    pub server_name: Option<String>,
}

/// A group of devices of one kind (`[[fleet]]`).
#[derive(Debug, Clone)]
pub struct Group {
    pub profile: Arc<Profile>,
    pub count: usize,
    /// Id pattern, e.g. `kitchen-{kind}-{n:02}`.
    pub id: String,
    /// Name pattern; `None` = "{room} {label}" numbered when a room has several.
    pub name: Option<String>,
    pub rooms: Vec<String>,
    pub interval: Duration,
    pub cbor_share: f64,
    pub qos: u8,
}

/// A checked scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    seed: u64,
    /// How long `run` lasts unless told otherwise.
    pub duration: Option<Duration>,
    pub broker: BrokerSettings,
    pub observer: ObserverSettings,
    pub groups: Vec<Group>,
    faults: Vec<Fault>,
    pub expectations: Vec<Expectation>,
}

impl Scenario {
    /// Reads and checks a scenario file; relative paths in it are taken from its folder.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        build::build(&text, &path.display().to_string(), base)
    }

    /// Checks scenario text; relative paths in it are taken from `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Scenario, ScenarioError> {
        build::build(text, "scenario", base_dir)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Changes the seed (ids stay, names, rooms, values, behaviour and fault choices change).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
        for (i, fault) in self.faults.iter_mut().enumerate() {
            fault.seed = build::fault_seed(seed, i);
        }
    }

    /// The fault timeline, in file order.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// A fault by name.
    pub fn fault(&self, name: &str) -> Option<&Fault> {
        self.faults.iter().find(|f| f.name == name)
    }

    /// Every device, in group order: the same seed gives the same ids, names, rooms, formats
    /// and device seeds.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        expand::devices(&self.groups, self.seed)
    }

    /// Total number of devices.
    pub fn device_count(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }
}

#[cfg(test)]
mod tests;
