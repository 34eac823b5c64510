//! Running fleets: one task per device, and the handles tests and demos use to watch, kill,
//! revive and stop devices. Faults are fired at a running fleet in `inject`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::{self, BrokerOpts, TlsFactory};
use crate::device::{Context, Control, Device, Shared};
use crate::profile::{DeviceKind, Profile};
use crate::ramp::Ramp;
use crate::scenario::Scenario;
use crate::spec::{is_valid_device_id, telemetry_phase, DeviceSpec, FleetSpec, MAX_DEVICES};
use crate::SimError;

/// Control requests a device may have queued; a caller waits for each one's answer.
const CONTROL_QUEUE: usize = 4;

/// A running device, as seen from outside its task.
pub struct DeviceHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: mpsc::Sender<Control>,
}

impl DeviceHandle {
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Its kind; compares equal to a built-in [`crate::Kind`] (`device.kind() == Kind::Light`).
    pub fn kind(&self) -> DeviceKind {
        self.shared.profile.kind.clone()
    }

    /// Its kind's description: fields, controls, actions and command behaviour.
    pub fn profile(&self) -> &Arc<Profile> {
        &self.shared.profile
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

    /// Commands read and deliberately left unanswered (behaviour or a fault).
    pub fn commands_ignored(&self) -> u64 {
        self.shared.ignored.load(Ordering::Relaxed)
    }

    /// Messages written to the broker connection.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Whether the device takes `set` commands.
    pub fn accepts_set(&self) -> bool {
        self.shared.profile.accepts_set()
    }

    /// A fault that makes commands to it unreliable (a disconnect, stopped or slow acks) is active.
    pub fn is_disturbed(&self) -> bool {
        self.shared.disturbed.load(Ordering::Relaxed) > 0
    }

    pub(crate) async fn request(&self, make: impl FnOnce(oneshot::Sender<()>) -> Control) {
        let (tx, rx) = oneshot::channel();
        // A device whose task has ended has nothing left to do.
        if self.control.send(make(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Abrupt: drops the TCP connection without DISCONNECT so the broker fires the will. The
    /// device stays down until [`DeviceHandle::revive`].
    pub async fn kill(&self) {
        self.request(Control::Kill).await;
    }

    /// Reconnects a killed or stopped device, at once (no ramp, no backoff); returns without
    /// waiting for the connection, see [`DeviceHandle::is_online`].
    pub async fn revive(&self) {
        self.request(|reply| Control::Revive {
            immediate: true,
            reply,
        })
        .await;
    }

    /// Graceful: publishes retained `offline`, disconnects, and stays down until revived.
    pub async fn stop(&self) {
        self.request(Control::Stop).await;
    }

    async fn wait_online(&self) {
        let mut online = self.shared.online.subscribe();
        let _ = online.wait_for(|up| *up).await;
    }
}

/// Totals across a fleet, for progress lines and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetStats {
    pub devices: usize,
    pub connected: usize,
    pub online: usize,
    pub published: u64,
    pub commands_handled: u64,
    /// Commands read and deliberately never answered.
    pub commands_ignored: u64,
    /// Publishes dropped because the device had no connection at the time.
    pub dropped: u64,
}

/// A running fleet. Dropping it without [`Fleet::stop`] still asks every device to go offline,
/// but nobody waits for them.
pub struct Fleet {
    pub(crate) devices: Vec<DeviceHandle>,
    index: HashMap<String, usize>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

impl Fleet {
    /// Starts every device of `spec`.
    pub async fn start(broker: BrokerOpts, spec: &FleetSpec) -> Result<Fleet, SimError> {
        // Before the devices are made, which for a huge count would exhaust memory.
        check_size(spec.count)?;
        if !(0.0..=1.0).contains(&spec.cbor_share) {
            return Err(SimError::InvalidSpec(format!(
                "cbor_share must be between 0 and 1, got {}",
                spec.cbor_share
            )));
        }
        Fleet::start_devices(broker, spec.devices()).await
    }

    /// Starts the devices of a scenario (its faults are fired separately, see [`Fleet::fire`]).
    pub async fn start_scenario(
        broker: BrokerOpts,
        scenario: &Scenario,
    ) -> Result<Fleet, SimError> {
        Fleet::start_devices(broker, scenario.devices()).await
    }

    /// Starts exactly these devices. Everything is checked (ids, intervals, certificates) before
    /// the first device connects, so an error leaves nothing running.
    pub async fn start_devices(
        broker: BrokerOpts,
        specs: Vec<DeviceSpec>,
    ) -> Result<Fleet, SimError> {
        broker::validate(&broker)?;
        check_size(specs.len())?;
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
            if spec.telemetry_qos > 1 {
                return Err(SimError::InvalidSpec(format!(
                    "{}: telemetry QoS must be 0 or 1",
                    spec.id
                )));
            }
        }
        drop(seen);
        let ctx = Arc::new(Context {
            target: broker::target(&broker)?,
            tls: TlsFactory::new(&broker)?,
            ramp: Ramp::new(broker.connect_rate),
            opts: broker,
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut devices = Vec::with_capacity(specs.len());
        let mut index = HashMap::with_capacity(specs.len());
        for spec in specs {
            let phase = telemetry_phase(&spec);
            let device = Device::new(spec, ctx.clone(), phase);
            let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
            let shared = device.shared.clone();
            let span = tracing::info_span!("device", id = %shared.id, kind = %shared.profile.kind);
            tasks.spawn(device.run(control_rx, shutdown.clone()).instrument(span));
            index.insert(shared.id.clone(), devices.len());
            devices.push(DeviceHandle { shared, control });
        }
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

    /// Waits until every device has a CONNACK and the broker acknowledged its meta, status and state.
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
            let s = &d.shared;
            stats.connected += usize::from(d.is_connected());
            stats.online += usize::from(d.is_online());
            stats.published += s.published.load(Ordering::Relaxed);
            stats.commands_handled += s.commands.load(Ordering::Relaxed);
            stats.commands_ignored += s.ignored.load(Ordering::Relaxed);
            stats.dropped += s.dropped.load(Ordering::Relaxed);
        }
        stats
    }

    /// Graceful: every device publishes retained `offline`, disconnects, and its task ends;
    /// running fault timers are cancelled.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn check_size(devices: usize) -> Result<(), SimError> {
    if devices > MAX_DEVICES {
        return Err(SimError::InvalidSpec(format!(
            "{devices} devices; a fleet has at most {MAX_DEVICES}"
        )));
    }
    Ok(())
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
        let huge = FleetSpec {
            count: MAX_DEVICES + 1,
            ..FleetSpec::default()
        };
        let e = err(Fleet::start(b.clone(), &huge).await);
        assert!(
            e.contains("1000001 devices; a fleet has at most 1000000"),
            "{e}"
        );
        let mut fast = b.clone();
        fast.keep_alive = Duration::from_millis(500);
        assert!(err(Fleet::start_devices(fast, one("k")).await).contains("keep_alive"));
        for rate in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let mut paced = b.clone();
            paced.connect_rate = Some(rate);
            let e = err(Fleet::start_devices(paced, one("r")).await);
            assert!(e.contains("connect rate must be above 0"), "{rate}: {e}");
        }
        let mut wild = b.clone();
        wild.topic_prefix = "iot/#".into();
        assert!(err(Fleet::start_devices(wild, one("w")).await).contains("wildcards"));
        let mut no_ca = b.clone();
        no_ca.ca_pem = "not a pem".into();
        assert!(err(Fleet::start_devices(no_ca, one("c")).await).contains("broker CA"));
        let mut qos = one("q");
        qos[0].telemetry_qos = 2;
        assert!(err(Fleet::start_devices(b.clone(), qos).await).contains("QoS"));
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
        let kind = device.kind().builtin().unwrap();
        assert_eq!(
            device.state(),
            crate::model::Model::new(kind, spec_seed(&fleet, &id))
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
