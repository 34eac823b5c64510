//! Simulated IoT device fleets speaking the iot-bridge MQTT contract over mutual TLS, driven by
//! scenario files with fault injection and checked expectations.
//!
//! How the pieces fit:
//! - Describing devices: [`kind`] holds the built-in kinds' tables and [`model`] their physics;
//!   [`profile`] is what every device of a kind shares (fields, controls, physics, [`behaviour`]);
//!   [`generator`] makes telemetry for kinds defined in scenario files; [`sim`] runs either.
//! - [`scenario`] reads a TOML scenario into groups of devices ([`spec::DeviceSpec`]), a fault
//!   timeline ([`fault`]) and expectations ([`expect`]); [`spec::FleetSpec`] is the quick
//!   programmatic way to a fleet of built-in kinds.
//! - Running: [`fleet`] starts one task per device (`device`), each owning a lean MQTT connection
//!   (`link`) opened through the fleet's connection ramp (`ramp`) with TLS configs from
//!   [`broker`]; [`Fleet::fire`] injects faults into the running fleet.
//! - Judging: [`observer`] connects to the bridge as a WebSocket client, records what it sees in
//!   a journal and sends commands; [`run`] ties a scenario, a fleet, its timeline and the observer
//!   together and [`report`] prints progress, the summary and the JSON report.
//! - [`command`] and [`codec`] are the pure halves of command handling and payload encoding.
//!
//! ```no_run
//! # async fn demo(ca_pem: String, ca_key: String) -> Result<(), device_sim::SimError> {
//! use device_sim::{BrokerOpts, DeviceIdentity, Fleet, FleetSpec};
//! use std::time::Duration;
//!
//! let identity = DeviceIdentity::MintFromCa { ca_cert_pem: ca_pem.clone(), ca_key_pem: ca_key };
//! let broker = BrokerOpts::new("localhost", 8883, ca_pem, identity);
//! let fleet = Fleet::start(broker, &FleetSpec { count: 10, ..FleetSpec::default() }).await?;
//! fleet.wait_connected(Duration::from_secs(10)).await?;
//! fleet.stop().await;
//! # Ok(()) }
//! ```

pub mod behaviour;
pub mod broker;
pub mod codec;
pub mod command;
mod device;
pub mod duration;
mod error;
pub mod expect;
pub mod fault;
pub mod fleet;
pub mod generator;
mod inject;
pub mod kind;
mod link;
pub mod model;
pub mod observer;
pub mod profile;
mod ramp;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod sim;
pub mod spec;

pub use broker::{BrokerOpts, DeviceIdentity};
pub use codec::PayloadFormat;
pub use error::SimError;
pub use fault::{Fault, FaultAction};
pub use fleet::{DeviceHandle, Fleet, FleetStats};
pub use inject::FiredFault;
pub use kind::Kind;
pub use profile::{DeviceKind, Profile};
pub use scenario::{Scenario, ScenarioError};
pub use spec::{is_valid_device_id, DeviceSpec, FleetSpec, MAX_DEVICES};
