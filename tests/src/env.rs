//! `TestEnv`: certificates, a Mosquitto broker, a simulated fleet and a bridge, started together
//! and ready (broker link up, every device online at the bridge) before a test begins.

use std::time::{Duration, Instant};

use device_sim::{BrokerOpts, DeviceHandle, DeviceIdentity, Fleet, FleetSpec, Kind};
use iot_bridge::Config;

use crate::https::{self, HttpResponse};
use crate::metrics::Scrape;
use crate::{Bridge, ClientCert, E2eError, Mosquitto, Pki, WsClient};

/// Waits in set-up: generous for a loaded 2-core CI machine, normally well under a second.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

type ConfigTweak = Box<dyn FnOnce(&mut Config) + Send>;

/// Builder for [`TestEnv`]; see [`TestEnv::new`].
pub struct TestEnvBuilder {
    spec: FleetSpec,
    tweak: Option<ConfigTweak>,
    broker_acl: String,
}

/// A running environment. Dropping it kills everything; [`TestEnv::shutdown`] stops it cleanly
/// and reports what did not stop.
pub struct TestEnv {
    // Field order is drop order: devices go first, the certificate folder last.
    fleet: Fleet,
    pub bridge: Bridge,
    pub mosquitto: Mosquitto,
    pub pki: Pki,
    /// Client certificate of the harness itself (readiness checks).
    ops: ClientCert,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("bridge", &self.bridge)
            .field("mosquitto", &self.mosquitto)
            .field("devices", &self.fleet.ids())
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Starts describing an environment: no devices, 200 ms telemetry, every device kind,
    /// a quarter of the devices speaking CBOR. Also sets up test logging (see [`crate::init_tracing`]).
    #[allow(clippy::new_ret_no_self)] // `TestEnv::new().devices(3).start()` reads as the thing built.
    pub fn new() -> TestEnvBuilder {
        crate::init_tracing();
        TestEnvBuilder {
            spec: FleetSpec {
                count: 0,
                kinds: Kind::ALL.to_vec(),
                telemetry_interval: Duration::from_millis(200),
                seed: 7,
                cbor_share: 0.25,
                id_prefix: String::new(),
            },
            tweak: None,
            broker_acl: String::new(),
        }
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn device(&self, id: &str) -> Option<&DeviceHandle> {
        self.fleet.device(id)
    }

    /// Ids of the fleet's devices of one kind, in start order.
    pub fn ids_of(&self, kind: Kind) -> Vec<String> {
        self.fleet
            .devices()
            .iter()
            .filter(|d| d.kind() == kind)
            .map(|d| d.id().to_owned())
            .collect()
    }

    /// A client certificate for a person or program called `name`, from the environment's CA.
    pub fn client_cert(&self, name: &str) -> Result<ClientCert, E2eError> {
        self.pki.client(name)
    }

    /// Connects a WebSocket client as `name` and consumes its `welcome`.
    pub async fn connect(&self, name: &str) -> Result<WsClient, E2eError> {
        let cert = self.client_cert(name)?;
        let mut client = WsClient::connect(
            self.bridge.addr(),
            &cert.cert_pem,
            &cert.key_pem,
            self.pki.ca_pem(),
        )
        .await?;
        let welcome = client.recv(SETUP_TIMEOUT).await?;
        if welcome["type"] != "welcome" || welcome["identity"] != name {
            return Err(E2eError::Bridge(format!(
                "expected a welcome for {name}, got {welcome}"
            )));
        }
        Ok(client)
    }

    /// `GET path` on the bridge with the harness's own client certificate.
    pub async fn get(&self, path: &str) -> Result<HttpResponse, E2eError> {
        https::get(self.bridge.addr(), path, &self.ops, self.pki.ca_pem()).await
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Result<Scrape, E2eError> {
        let r = self.get("/metrics").await?;
        if r.status != 200 {
            return Err(E2eError::Http(format!("/metrics answered {}", r.status)));
        }
        Scrape::parse(&r.body)
    }

    /// Polls `/readyz` until it answers `status`.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) -> Result<(), E2eError> {
        let started = Instant::now();
        loop {
            // A bridge that is restarting may refuse connections for a moment: keep polling.
            if let Ok(r) = self.get("/readyz").await {
                if r.status == status {
                    return Ok(());
                }
            }
            if !self.bridge.is_running() {
                return Err(E2eError::Bridge(
                    "the bridge stopped while waiting for /readyz (its error is in the log; \
                     `Bridge::stop` returns it)"
                        .into(),
                ));
            }
            if started.elapsed() > timeout {
                return Err(E2eError::timeout(format!("/readyz {status}"), timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the bridge lists every device of the fleet as online.
    pub async fn wait_devices_online(&self, timeout: Duration) -> Result<(), E2eError> {
        let ids = self.fleet.ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.wait_online(&ids, timeout).await
    }

    /// Waits until the bridge lists each of `ids` as online (devices outside the fleet too).
    pub async fn wait_online(&self, ids: &[&str], timeout: Duration) -> Result<(), E2eError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut client = self.connect("e2e-setup").await?;
        client.wait_online(ids, timeout).await?;
        client.close().await
    }

    /// Stops devices (gracefully), the bridge and the broker, in that order.
    pub async fn shutdown(self) -> Result<(), E2eError> {
        let TestEnv {
            fleet,
            mut bridge,
            mut mosquitto,
            pki,
            ops: _,
        } = self;
        fleet.stop().await;
        bridge.stop().await?;
        mosquitto.stop().await?;
        drop(pki);
        Ok(())
    }
}

impl TestEnvBuilder {
    /// How many simulated devices (kinds assigned round-robin).
    pub fn devices(mut self, count: usize) -> Self {
        self.spec.count = count;
        self
    }

    pub fn kinds(mut self, kinds: &[Kind]) -> Self {
        self.spec.kinds = kinds.to_vec();
        self
    }

    pub fn telemetry_interval(mut self, interval: Duration) -> Self {
        self.spec.telemetry_interval = interval;
        self
    }

    /// Share of devices (0..=1) publishing CBOR instead of JSON.
    pub fn cbor_share(mut self, share: f64) -> Self {
        self.spec.cbor_share = share;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.spec.seed = seed;
        self
    }

    /// Lines appended to the broker's shipped ACL (see [`Mosquitto::start_with_acl`]).
    pub fn broker_acl(mut self, extra: &str) -> Self {
        self.broker_acl = extra.to_owned();
        self
    }

    /// Changes the bridge's config after the harness's defaults (see [`Bridge::start`]).
    pub fn bridge_config(mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Some(Box::new(tweak));
        self
    }

    /// Starts broker, bridge and fleet, and waits until the bridge's broker link is up and
    /// every device is online at the bridge.
    pub async fn start(self) -> Result<TestEnv, E2eError> {
        let pki = Pki::new()?;
        let mosquitto = Mosquitto::start_with_acl(&pki, &self.broker_acl).await?;
        let tweak = self.tweak;
        let bridge = Bridge::start(&pki, mosquitto.port(), |c| {
            if let Some(tweak) = tweak {
                tweak(c);
            }
        })
        .await?;
        let fleet = Fleet::start(broker_opts(&pki, &mosquitto), &self.spec).await?;
        let ops = pki.client("e2e-harness")?;
        let env = TestEnv {
            fleet,
            bridge,
            mosquitto,
            pki,
            ops,
        };
        env.fleet.wait_connected(SETUP_TIMEOUT).await?;
        if let Err(e) = env.wait_readyz(200, SETUP_TIMEOUT).await {
            let mut env = env;
            // A bridge that stopped by itself has a better story than the timeout.
            if !env.bridge.is_running() {
                env.bridge.stop().await?;
            }
            return Err(e);
        }
        env.wait_devices_online(SETUP_TIMEOUT).await?;
        Ok(env)
    }
}

/// How simulated devices reach the environment's broker: a certificate minted per device
/// (CN = device id, which the shipped ACL turns into its own topics).
pub fn broker_opts(pki: &Pki, mosquitto: &Mosquitto) -> BrokerOpts {
    let identity = DeviceIdentity::MintFromCa {
        ca_cert_pem: pki.ca_pem().to_owned(),
        ca_key_pem: pki.ca_key_pem().to_owned(),
    };
    BrokerOpts::new("localhost", mosquitto.port(), pki.ca_pem(), identity)
}
