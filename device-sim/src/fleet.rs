//! Fleets: deterministic device specifications, starting one task per device, and the handles
//! tests and demos use to watch, kill, revive and stop devices.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::{self, BrokerOpts, TlsFactory};
use crate::codec::PayloadFormat;
use crate::device::{Control, Device, Shared};
use crate::kind::Kind;
use crate::model::Model;
use crate::SimError;

const ROOMS: &[&str] = &[
    "Kitchen",
    "Living Room",
    "Bedroom",
    "Bathroom",
    "Hallway",
    "Office",
    "Garage",
    "Garden",
    "Nursery",
    "Basement",
    "Attic",
    "Dining Room",
];

/// One simulated device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub room: String,
    pub telemetry_interval: Duration,
    pub format: PayloadFormat,
    /// Seeds the device's simulation and its telemetry phase.
    pub seed: u64,
}

/// A whole fleet, described compactly; [`FleetSpec::devices`] expands it deterministically.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub count: usize,
    /// Kinds assigned round-robin; empty means every kind.
    pub kinds: Vec<Kind>,
    pub telemetry_interval: Duration,
    pub seed: u64,
    /// Share of devices (0..=1) that publish telemetry and state as CBOR instead of JSON.
    pub cbor_share: f64,
    /// Prepended to every device id, e.g. `"lab1-"`.
    pub id_prefix: String,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            count: 12,
            kinds: Kind::ALL.to_vec(),
            telemetry_interval: Duration::from_secs(1),
            seed: 42,
            cbor_share: 0.25,
            id_prefix: String::new(),
        }
    }
}

impl FleetSpec {
    /// The fleet's devices. Same spec (seed included) => same ids, names, rooms, formats and seeds.
    /// Ids are `{id_prefix}{kind}-{n}` with `n` counting per kind from 1.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        let mut kinds: Vec<Kind> = Vec::new();
        for kind in &self.kinds {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        if kinds.is_empty() {
            kinds = Kind::ALL.to_vec();
        }
        let cbor_share = if self.cbor_share.is_nan() {
            0.0
        } else {
            self.cbor_share.clamp(0.0, 1.0)
        };
        let width = self.count.div_ceil(kinds.len()).to_string().len().max(3);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut per_kind: HashMap<Kind, usize> = HashMap::new();
        let mut per_name: HashMap<(usize, Kind), usize> = HashMap::new();
        (0..self.count)
            .map(|i| {
                let kind = kinds[i % kinds.len()];
                let n = per_kind.entry(kind).or_default();
                *n += 1;
                let room = rng.random_range(0..ROOMS.len());
                let same_name = per_name.entry((room, kind)).or_default();
                *same_name += 1;
                let name = match *same_name {
                    1 => format!("{} {}", ROOMS[room], kind.label()),
                    k => format!("{} {} {k}", ROOMS[room], kind.label()),
                };
                let format = if rng.random_bool(cbor_share) {
                    PayloadFormat::Cbor
                } else {
                    PayloadFormat::Json
                };
                DeviceSpec {
                    id: format!("{}{}-{:0width$}", self.id_prefix, kind.as_str(), n),
                    kind,
                    name,
                    room: ROOMS[room].to_string(),
                    telemetry_interval: self.telemetry_interval,
                    format,
                    seed: rng.random(),
                }
            })
            .collect()
    }
}

/// Whether `id` is a valid device id per the contract: `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where in its interval a device publishes; derived from its seed but independent of its model.
fn telemetry_phase(spec: &DeviceSpec) -> Duration {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x9e37_79b9_7f4a_7c15);
    spec.telemetry_interval.mul_f64(rng.random_range(0.0..1.0))
}

/// A running device, as seen from outside its task.
pub struct DeviceHandle {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
}

impl DeviceHandle {
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn kind(&self) -> Kind {
        self.shared.kind
    }

    /// Current control values: what the device last reported on `state`.
    pub fn state(&self) -> Map<String, Value> {
        match self.shared.state.lock() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The broker accepted the connection and it has not failed since.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Connected, subscribed to commands, and meta/status/state acknowledged by the broker.
    pub fn is_online(&self) -> bool {
        *self.shared.online.borrow()
    }

    /// Commands answered with an ack (accepted or rejected).
    pub fn commands_handled(&self) -> u64 {
        self.shared.commands.load(Ordering::Relaxed)
    }

    /// Messages written to the broker connection.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    async fn send(&self, make: fn(oneshot::Sender<()>) -> Control) {
        let (tx, rx) = oneshot::channel();
        // A device whose task has ended has nothing left to do.
        if self.control.send(make(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Abrupt: drops the TCP connection without DISCONNECT so the broker fires the will. The
    /// device stays down until [`DeviceHandle::revive`].
    pub async fn kill(&self) {
        self.send(Control::Kill).await;
    }

    /// Reconnects a killed or stopped device; returns at once, see [`DeviceHandle::is_online`].
    pub async fn revive(&self) {
        self.send(Control::Revive).await;
    }

    /// Graceful: publishes retained `offline`, disconnects, and stays down until revived.
    pub async fn stop(&self) {
        self.send(Control::Stop).await;
    }

    async fn wait_online(&self) {
        let mut online = self.shared.online.subscribe();
        let _ = online.wait_for(|up| *up).await;
    }
}

/// Totals across a fleet, for the periodic summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetStats {
    pub devices: usize,
    pub connected: usize,
    pub online: usize,
    pub published: u64,
    pub commands_handled: u64,
    /// Publishes dropped because a device's request queue was full.
    pub dropped: u64,
}

/// A running fleet. Dropping it without [`Fleet::stop`] still asks every device to go offline,
/// but nobody waits for them.
pub struct Fleet {
    devices: Vec<DeviceHandle>,
    index: HashMap<String, usize>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Fleet {
    /// Starts every device of `spec`.
    pub async fn start(broker: BrokerOpts, spec: &FleetSpec) -> Result<Fleet, SimError> {
        if !(0.0..=1.0).contains(&spec.cbor_share) {
            return Err(SimError::InvalidSpec(format!(
                "cbor_share must be between 0 and 1, got {}",
                spec.cbor_share
            )));
        }
        Fleet::start_devices(broker, spec.devices()).await
    }

    /// Starts exactly these devices. Everything is checked (ids, intervals, certificates) before
    /// the first device connects, so an error leaves nothing running.
    pub async fn start_devices(
        broker: BrokerOpts,
        specs: Vec<DeviceSpec>,
    ) -> Result<Fleet, SimError> {
        broker::validate(&broker)?;
        let mut seen = HashSet::new();
        for spec in &specs {
            if !is_valid_device_id(&spec.id) {
                return Err(SimError::InvalidDeviceId(spec.id.clone()));
            }
            if !seen.insert(spec.id.as_str()) {
                return Err(SimError::DuplicateDeviceId(spec.id.clone()));
            }
            if spec.telemetry_interval.is_zero() {
                return Err(SimError::InvalidSpec(format!(
                    "{}: telemetry interval must be > 0",
                    spec.id
                )));
            }
        }
        let tls = TlsFactory::new(&broker)?;
        let mut prepared = Vec::with_capacity(specs.len());
        for spec in specs {
            let base = format!("{}/{}/", broker.topic_prefix, spec.id);
            let mqtt = broker::mqtt_options(
                &broker,
                &spec.id,
                tls.for_device(&spec.id)?,
                &format!("{base}status"),
            );
            let model = Model::new(spec.kind, spec.seed);
            let shared = Arc::new(Shared {
                id: spec.id.clone(),
                kind: spec.kind,
                state: Mutex::new(model.controls().clone()),
                connected: AtomicBool::new(false),
                online: watch::Sender::new(false),
                commands: AtomicU64::new(0),
                published: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            });
            let phase = telemetry_phase(&spec);
            let device = Device::new(
                shared,
                spec.name,
                spec.room,
                spec.format,
                spec.telemetry_interval,
                phase,
                base,
                mqtt,
                model,
            );
            prepared.push(device);
        }

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut devices = Vec::with_capacity(prepared.len());
        let mut index = HashMap::with_capacity(prepared.len());
        for device in prepared {
            // Small: a device only ever has one control request in flight per caller.
            let (control, control_rx) = mpsc::channel(4);
            let shared = device.shared.clone();
            let span = tracing::info_span!("device", id = %shared.id, kind = %shared.kind);
            tasks.spawn(device.run(control_rx, shutdown.clone()).instrument(span));
            index.insert(shared.id.clone(), devices.len());
            devices.push(DeviceHandle { shared, control });
        }
        tasks.close();
        Ok(Fleet {
            devices,
            index,
            shutdown,
            tasks,
        })
    }

    /// Device ids in start order.
    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.id().to_string()).collect()
    }

    pub fn device(&self, id: &str) -> Option<&DeviceHandle> {
        self.index.get(id).map(|&i| &self.devices[i])
    }

    pub fn devices(&self) -> &[DeviceHandle] {
        &self.devices
    }

    /// Waits until every device has a ConnAck and the broker acknowledged its meta, status and state.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), SimError> {
        let all = async {
            for device in &self.devices {
                device.wait_online().await;
            }
        };
        if tokio::time::timeout(timeout, all).await.is_ok() {
            return Ok(());
        }
        let missing: Vec<_> = self.devices.iter().filter(|d| !d.is_online()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(SimError::NotConnected {
            missing: missing.len(),
            total: self.devices.len(),
            waited: timeout,
            first: missing[0].id().to_string(),
        })
    }

    pub fn stats(&self) -> FleetStats {
        let mut stats = FleetStats {
            devices: self.devices.len(),
            ..FleetStats::default()
        };
        for d in &self.devices {
            stats.connected += usize::from(d.is_connected());
            stats.online += usize::from(d.is_online());
            stats.published += d.published();
            stats.commands_handled += d.commands_handled();
            stats.dropped += d.shared.dropped.load(Ordering::Relaxed);
        }
        stats
    }

    /// Graceful: every device publishes retained `offline`, disconnects, and its task ends.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> FleetSpec {
        FleetSpec {
            count: 40,
            seed,
            ..FleetSpec::default()
        }
    }

    #[test]
    fn same_seed_same_devices_and_telemetry() {
        let (a, b) = (spec(42).devices(), spec(42).devices());
        assert_eq!(a, b);
        for (da, db) in a.iter().zip(&b) {
            let (mut ma, mut mb) = (Model::new(da.kind, da.seed), Model::new(db.kind, db.seed));
            let first_a: Vec<_> = (0..10).map(|_| ma.step(1.0)).collect();
            let first_b: Vec<_> = (0..10).map(|_| mb.step(1.0)).collect();
            assert_eq!(first_a, first_b, "{}", da.id);
            assert_eq!(telemetry_phase(da), telemetry_phase(db));
        }
        let c = spec(43).devices();
        assert_eq!(
            a.iter().map(|d| &d.id).collect::<Vec<_>>(),
            c.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        assert_ne!(
            a, c,
            "a different seed should change names, rooms or formats"
        );
    }

    #[test]
    fn ids_are_valid_unique_and_round_robin() {
        let devices = FleetSpec {
            count: 12,
            kinds: vec![Kind::Light, Kind::Plug, Kind::Light],
            id_prefix: "lab-".into(),
            ..FleetSpec::default()
        }
        .devices();
        assert_eq!(devices.len(), 12);
        let ids: HashSet<_> = devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), 12);
        assert!(devices.iter().all(|d| is_valid_device_id(&d.id)));
        assert_eq!(devices[0].id, "lab-light-001");
        assert_eq!(devices[1].id, "lab-plug-001");
        assert_eq!(devices[2].id, "lab-light-002");
        let names: HashSet<_> = devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), 12, "names must be unique: {names:?}");
        assert!(devices.iter().all(|d| d.name.starts_with(&d.room)));
    }

    #[test]
    fn cbor_share_and_empty_kinds() {
        let all_cbor = FleetSpec {
            count: 20,
            cbor_share: 1.0,
            kinds: vec![],
            ..FleetSpec::default()
        }
        .devices();
        assert!(all_cbor.iter().all(|d| d.format == PayloadFormat::Cbor));
        let kinds: HashSet<_> = all_cbor.iter().map(|d| d.kind).collect();
        assert_eq!(kinds.len(), Kind::ALL.len());
        let none = FleetSpec {
            count: 20,
            cbor_share: 0.0,
            ..FleetSpec::default()
        }
        .devices();
        assert!(none.iter().all(|d| d.format == PayloadFormat::Json));
        let some = FleetSpec {
            count: 400,
            cbor_share: 0.25,
            ..FleetSpec::default()
        }
        .devices();
        let cbor = some
            .iter()
            .filter(|d| d.format == PayloadFormat::Cbor)
            .count();
        assert!(
            (60..=140).contains(&cbor),
            "{cbor} of 400 CBOR devices at share 0.25"
        );
        // NaN must not panic inside the RNG.
        let nan = FleetSpec {
            count: 3,
            cbor_share: f64::NAN,
            ..FleetSpec::default()
        }
        .devices();
        assert_eq!(nan.len(), 3);
    }

    #[test]
    fn phases_spread_within_the_interval() {
        let devices = FleetSpec {
            count: 100,
            ..FleetSpec::default()
        }
        .devices();
        let phases: Vec<_> = devices.iter().map(telemetry_phase).collect();
        assert!(phases.iter().all(|p| *p < Duration::from_secs(1)));
        let distinct: HashSet<_> = phases.iter().map(|p| p.as_millis() / 100).collect();
        assert!(distinct.len() >= 8, "phases bunch up: {distinct:?}");
    }

    #[test]
    fn device_id_rule() {
        assert!(is_valid_device_id("a"));
        assert!(is_valid_device_id("Plug_01-x"));
        assert!(is_valid_device_id(&"x".repeat(64)));
        assert!(!is_valid_device_id(""));
        assert!(!is_valid_device_id(&"x".repeat(65)));
        assert!(!is_valid_device_id("a/b"));
        assert!(!is_valid_device_id("a+"));
        assert!(!is_valid_device_id("caf\u{e9}"));
    }
}
