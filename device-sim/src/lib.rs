//! Simulated IoT device fleets speaking the iot-bridge MQTT contract over mutual TLS.
//!
//! How the pieces fit:
//! - [`kind`] describes each device kind (telemetry fields, controls, actions) and renders `meta`.
//! - [`model`] simulates a device's readings from a seeded random walk that follows its controls.
//! - [`command`] parses `cmd` payloads, validates `set` params against the kind's controls, builds acks.
//! - [`codec`] encodes telemetry and state as JSON or CBOR maps.
//! - [`broker`] turns [`BrokerOpts`] into per-device TLS configs and MQTT options.
//! - `link` owns a device's MQTT event loop and reconnect backoff.
//! - `device` runs one task per device: event loop, telemetry timer, commands, kill/revive/stop.
//! - [`spec`] expands a [`FleetSpec`] into [`DeviceSpec`]s (ids, names, rooms, formats, seeds).
//! - [`fleet`] validates the specs, starts one device task each and hands out [`DeviceHandle`]s.
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

pub mod broker;
pub mod codec;
pub mod command;
mod device;
mod error;
pub mod fleet;
pub mod kind;
mod link;
pub mod model;
pub mod spec;

pub use broker::{BrokerOpts, DeviceIdentity};
pub use codec::PayloadFormat;
pub use error::SimError;
pub use fleet::{DeviceHandle, Fleet, FleetStats};
pub use kind::Kind;
pub use spec::{is_valid_device_id, DeviceSpec, FleetSpec};
