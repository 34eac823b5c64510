//! The observer: a WebSocket client of the bridge (mutual TLS, `iotbridge.v1.json`) that watches
//! what a real client would see and sends commands for the expectations to judge.

mod journal;

pub use journal::{CommandRecord, Gap, Journal};
