//! iot-bench: the bridge measured side by side with its alternative, a browser speaking MQTT
//! over WebSockets straight to Mosquitto, in one run on one machine.
//!
//! Modules and how data flows between them:
//! - [`rig`] starts the systems under test: a certificate set, one Mosquitto (MQTT/TLS for
//!   devices and the bridge, MQTT over WSS for the peer) and the bridge.
//! - [`devices`] connects simulated devices ([`mqtt`] codec over [`tls`]) that publish
//!   [`telemetry`] open loop and answer commands; [`clients`] connects the receivers of each
//!   side, which record every message into a [`recorder`].
//! - [`measure`] runs one trial (publish at a rate, drain, read CPU from [`procstat`]) and
//!   searches for the highest sustained rate; [`commands`], [`idle`] and [`fleet`] are the
//!   command round trip, idle-connection and device-simulator scenarios.
//! - [`plan`] orders the scenarios of a full or smoke run into [`plan::Results`];
//!   [`report`] renders them as the table in BENCHMARKS.md.

pub mod clients;
pub mod commands;
pub mod devices;
mod error;
pub mod fleet;
pub mod idle;
pub mod measure;
pub mod mqtt;
pub mod plan;
pub mod procstat;
pub mod recorder;
pub mod report;
pub mod rig;
pub mod telemetry;
pub mod tls;

pub use error::BenchError;
pub use plan::{Plan, Results, Scenario};
pub use rig::{BridgeMode, Rig, RigOptions};

/// Starts a rig, runs `plan` on it and stops it again.
pub async fn bench(
    plan: &Plan,
    opts: RigOptions,
    log: &mut dyn FnMut(String),
) -> Result<Results, BenchError> {
    let mut rig = Rig::start(opts).await?;
    log(format!(
        "rig up: broker MQTT {} WSS {:?}, bridge {}",
        rig.broker.mqtt, rig.broker.wss, rig.bridge.addr
    ));
    let results = plan::run(plan, &mut rig, log).await;
    rig.stop().await;
    results
}

/// Raises this process's open-file limit as far as allowed (children inherit it): tens of
/// thousands of connections need as many descriptors on each end. Returns the new soft limit.
pub fn raise_open_files() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    // Root may raise the hard limit too, up to the kernel's per-process ceiling.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let hard = current.maximum.unwrap_or(u64::MAX).max(ceiling);
    let wanted = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    if setrlimit(Resource::Nofile, wanted).is_err() {
        let soft = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        let _ = setrlimit(Resource::Nofile, soft);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
