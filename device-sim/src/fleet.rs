//! Running fleets: one task per device, and the handles tests and demos use to watch, kill,
//! revive and stop devices.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::{self, BrokerOpts, TlsFactory};
use crate::device::{Control, Device, Shared};
use crate::kind::Kind;
use crate::model::Model;
use crate::spec::{is_valid_device_id, telemetry_phase, DeviceSpec, FleetSpec};
use crate::SimError;

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
    use crate::DeviceIdentity;

    fn broker(port: u16) -> BrokerOpts {
        let ca = iot_certs::Ca::generate("fleet test CA").unwrap();
        let identity = DeviceIdentity::MintFromCa {
            ca_cert_pem: ca.cert_pem().into(),
            ca_key_pem: ca.key_pem().into(),
        };
        BrokerOpts::new("127.0.0.1", port, ca.cert_pem(), identity)
    }

    fn one(id: &str) -> Vec<DeviceSpec> {
        let mut spec = FleetSpec {
            count: 1,
            ..FleetSpec::default()
        }
        .devices();
        spec[0].id = id.into();
        spec
    }

    /// A port with nothing listening: bind, read the port, close.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn bad_specs_are_refused_before_anything_starts() {
        let err = |r: Result<Fleet, SimError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let b = broker(1);
        let e = err(Fleet::start_devices(b.clone(), one("a/b")).await);
        assert!(e.contains("invalid device id 'a/b'"), "{e}");
        let mut twice = one("same");
        twice.extend(one("same"));
        let e = err(Fleet::start_devices(b.clone(), twice).await);
        assert!(e.contains("duplicate device id 'same'"), "{e}");
        let mut zero = one("z");
        zero[0].telemetry_interval = Duration::ZERO;
        assert!(err(Fleet::start_devices(b.clone(), zero).await).contains("interval"));
        let share = FleetSpec {
            cbor_share: 1.5,
            ..FleetSpec::default()
        };
        assert!(err(Fleet::start(b.clone(), &share).await).contains("cbor_share"));
        let mut fast = b.clone();
        fast.keep_alive = Duration::from_millis(500);
        assert!(err(Fleet::start_devices(fast, one("k")).await).contains("keep_alive"));
        let mut wild = b.clone();
        wild.topic_prefix = "iot/#".into();
        assert!(err(Fleet::start_devices(wild, one("w")).await).contains("wildcards"));
        let mut no_ca = b.clone();
        no_ca.ca_pem = "not a pem".into();
        assert!(err(Fleet::start_devices(no_ca, one("c")).await).contains("broker CA"));
        let mut shared = b;
        shared.identity = DeviceIdentity::Shared {
            cert_pem: "x".into(),
            key_pem: "y".into(),
        };
        assert!(err(Fleet::start_devices(shared, one("s")).await).contains("device certificate"));
    }

    #[tokio::test]
    async fn unreachable_broker_times_out_and_stops_promptly() {
        let fleet = Fleet::start(
            broker(closed_port()),
            &FleetSpec {
                count: 3,
                ..FleetSpec::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(fleet.ids().len(), 3);
        let id = fleet.ids()[1].clone();
        let device = fleet.device(&id).unwrap();
        assert_eq!(device.id(), id);
        assert!(fleet.device("nope").is_none());
        match fleet.wait_connected(Duration::from_millis(300)).await {
            Err(SimError::NotConnected {
                missing: 3,
                total: 3,
                ..
            }) => {}
            other => panic!("expected NotConnected, got {other:?}"),
        }
        assert!(!device.is_connected());
        assert_eq!(
            device.state(),
            Model::new(device.kind(), spec_seed(&fleet, &id))
                .controls()
                .clone()
        );
        // Control requests on a device that never connected still complete.
        device.kill().await;
        device.revive().await;
        device.stop().await;
        let stats = fleet.stats();
        assert_eq!((stats.devices, stats.connected, stats.published), (3, 0, 0));
        tokio::time::timeout(Duration::from_secs(2), fleet.stop())
            .await
            .expect("stop must not wait for a broker that is not there");
    }

    fn spec_seed(fleet: &Fleet, id: &str) -> u64 {
        let spec = FleetSpec {
            count: 3,
            ..FleetSpec::default()
        }
        .devices();
        assert_eq!(
            fleet.ids(),
            spec.iter().map(|d| d.id.clone()).collect::<Vec<_>>()
        );
        spec.iter().find(|d| d.id == id).map(|d| d.seed).unwrap()
    }
}
