//! The one-command demo: an embedded MQTT broker with mutual TLS ([`broker`]), a simulated
//! fleet and the bridge, all in one process ([`stack`]), so nothing but Rust is needed.

pub mod broker;
pub mod stack;

pub use stack::{start, Demo, DemoError, DemoOptions, DEMO_USER};
