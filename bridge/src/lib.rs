//! iot-bridge: a bridge between an MQTT broker (devices) and WebSocket clients (people and
//! programs), with mutual TLS on both sides.
//!
//! Data flow:
//! - [`mqtt_link`] owns the broker connection; it decodes device messages ([`topic`], [`payload`])
//!   once and hands them to the [`hub`].
//! - [`hub`] keeps each device's meta, presence, state, last telemetry and sequence number,
//!   encodes each outgoing message once ([`protocol`]) and pushes the shared bytes into the
//!   [`outbox`] of every subscribed session. It never waits on a session.
//! - [`server`] accepts TLS connections (client certificate required, [`tls`]) and serves the
//!   dashboard, health paths and `/ws`; each WebSocket is a [`session`] task that decodes
//!   requests and writes its outbox in batches, fewer and larger ones while the runtime is
//!   [`saturation`]-bound.
//! - [`commands`] tracks commands from a session to a device and back (id, deadline, ack).
//!
//! [`run`] wires them together; the binary only parses flags, loads [`config`] and binds.

pub mod acl;
pub mod commands;
pub mod config;
mod gate;
pub mod history;
pub mod hub;
pub mod keepalive;
pub mod metrics;
pub mod mqtt_link;
pub mod outbox;
pub mod payload;
pub mod protocol;
pub mod ratelimit;
pub mod reload;
pub mod resume;
pub mod saturation;
pub mod server;
pub mod session;
pub mod signals;
pub mod telemetry;
pub mod tls;
pub mod topic;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use config::Config;

/// `0.1.0 (commit abc1234567)`: what `--version` prints and `welcome` carries.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("IOT_BRIDGE_COMMIT"),
    ")"
);

/// Sockets bound by the caller (the binary, or a test on port 0).
#[derive(Debug)]
pub struct Listeners {
    pub https: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Link(#[from] mqtt_link::LinkError),
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    #[error("the {0} task failed (see the log above), so the bridge stopped: start it again")]
    TaskFailed(&'static str),
}

/// How the caller steers a running bridge.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Cancel to stop (graceful, within the configured grace period).
    pub shutdown: CancellationToken,
    /// Notify to reload the ACL and TLS files (the binary does on SIGHUP).
    pub reload: Arc<Notify>,
}

/// What every connection and session shares.
pub struct Shared {
    pub config: Config,
    pub instance: String,
    pub hub: Arc<hub::Hub>,
    pub commands: Arc<commands::Commands>,
    pub metrics: Arc<metrics::Metrics>,
    pub link: mqtt_link::LinkHandle,
    /// Cancelled when the bridge is asked to stop: no new connections.
    pub shutdown: CancellationToken,
    /// Set once in-flight commands had their chance: sessions flush and close. A flag, not a
    /// `CancellationToken`: every session reads it on every turn of its loop, and a token's
    /// `is_cancelled` takes a lock that all of them would share.
    closing: AtomicBool,
    pub tracker: TaskTracker,
    /// When each session pings its client.
    pub keepalive: Arc<keepalive::Keepalive>,
    /// Whether the runtime has time to spare: sessions pace their writes when it has not.
    pub saturation: saturation::Saturation,
    pub rate: ratelimit::RateLimiter,
    acl: RwLock<Arc<acl::Acl>>,
    /// Bumped on every ACL reload; sessions compare it with theirs to recompute their grants.
    acl_version: AtomicU64,
    acceptor: RwLock<TlsAcceptor>,
}

impl Shared {
    pub fn acl(&self) -> Arc<acl::Acl> {
        self.acl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_acl(&self, acl: acl::Acl) {
        *self.acl.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acl);
        self.acl_version.fetch_add(1, Ordering::AcqRel);
        self.hub.nudge_sessions();
    }

    /// Changes with every ACL reload.
    pub fn acl_version(&self) -> u64 {
        self.acl_version.load(Ordering::Acquire)
    }

    /// Closes every session: each delivers what it has queued and says goodbye with 1001.
    pub fn close_sessions(&self) {
        self.closing.store(true, Ordering::Release);
        self.hub.nudge_sessions();
    }

    /// Whether sessions are being closed.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The acceptor for new connections; connections already up keep theirs.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_tls(&self, config: Arc<rustls::ServerConfig>) {
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(config);
    }
}

/// Loads every file the config names (the server's certificate, key, client CA and CRL, the
/// broker link's CA, certificate and key, the ACL) the way [`run`] will, so that a broken one is
/// reported before anything binds or connects.
pub fn check_files(config: &Config) -> Result<(), BridgeError> {
    tls::server_config(&config.tls)?;
    let broker = &config.broker;
    tls::client_config(&broker.ca, &broker.cert, &broker.key)?;
    reload::load_acl(config)?;
    Ok(())
}

/// Runs the bridge until `shutdown` is cancelled, then stops within the configured grace period.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), BridgeError> {
    let control = Control {
        shutdown,
        reload: Arc::default(),
    };
    run_with(listeners, config, control).await
}

/// [`run`], with a reload trigger.
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    control: Control,
) -> Result<(), BridgeError> {
    let shutdown = control.shutdown;
    let instance = config.instance_id();
    let tls = tls::server_config(&config.tls)?;
    let acl = reload::load_acl(&config)?;
    if acl.is_open() {
        warn!("no ACL file: every client certificate from the client CA may read and control every device");
    }
    let hub = hub::Hub::new(
        format!("{instance}.{}", hub::now_ms()),
        history::HistoryLimits {
            max_samples: config.history.max_samples,
            max_age_ms: (config.history.max_age_secs as i64).saturating_mul(1000),
            max_bytes: config.history.max_bytes,
        },
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let commands = commands::Commands::new(&instance, metrics.clone());
    let link = mqtt_link::MqttLink::new(
        &config.broker,
        &instance,
        config.limits.max_payload_bytes,
        hub.clone(),
        commands.clone(),
        metrics.clone(),
    )?;
    let stop_link = CancellationToken::new();
    let link_handle = link.handle();
    let essential = Essential::new(shutdown.clone());
    essential.spawn("broker link", link.run(stop_link.clone()));

    let keepalive =
        keepalive::Keepalive::new(Duration::from_secs(config.limits.ping_interval_secs));
    essential.spawn("keepalive", keepalive.clone().run(stop_link.clone()));
    essential.spawn(
        "command deadline",
        commands.clone().expire(stop_link.clone()),
    );

    let grace = config.grace();
    let config_rate = (config.limits.command_rate, config.limits.command_burst);
    let shared = Arc::new(Shared {
        config,
        instance,
        hub,
        commands,
        metrics,
        link: link_handle,
        shutdown: shutdown.clone(),
        closing: AtomicBool::new(false),
        tracker: TaskTracker::new(),
        keepalive: keepalive.clone(),
        saturation: saturation::Saturation::current(),
        rate: ratelimit::RateLimiter::new(config_rate.0, config_rate.1),
        acl: RwLock::new(Arc::new(acl)),
        acl_version: AtomicU64::new(0),
        acceptor: RwLock::new(TlsAcceptor::from(tls)),
    });
    essential.spawn("reload", reload::watch(shared.clone(), control.reload));
    if let Ok(addr) = listeners.https.local_addr() {
        info!(%addr, instance = %shared.instance, "bridge listening");
    }
    server::serve(listeners.https, shared.clone()).await;

    // Shutdown: in-flight commands may still get their device's answer for half the grace
    // period (the broker link stays up), then sessions flush and close with 1001.
    info!("shutting down");
    let started = Instant::now();
    while shared.commands.in_flight() > 0 && started.elapsed() < grace / 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.commands.fail_all("bridge shutting down");
    shared.close_sessions();
    shared.tracker.close();
    let rest = grace.saturating_sub(started.elapsed());
    if tokio::time::timeout(rest, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = shared.tracker.len(),
            "grace period over, dropping remaining connections"
        );
    }
    stop_link.cancel();
    essential.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), essential.tasks.wait()).await;
    info!("bridge stopped");
    match essential.failed() {
        Some(task) => Err(BridgeError::TaskFailed(task)),
        None => Ok(()),
    }
}

/// The tasks a bridge cannot work without: the broker link, the keepalive wheel, command
/// deadlines, reloads. They end only once shutdown has begun; one that ends before (it
/// panicked: a bug) shuts the bridge down, and [`run`] then fails, so that whatever supervises
/// it starts it afresh, instead of a bridge that still answers `/readyz` with a dead link.
struct Essential {
    shutdown: CancellationToken,
    tasks: TaskTracker,
    failed: Arc<Mutex<Option<&'static str>>>,
}

impl Essential {
    fn new(shutdown: CancellationToken) -> Essential {
        Essential {
            shutdown,
            tasks: TaskTracker::new(),
            failed: Arc::default(),
        }
    }

    fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(task);
        let (shutdown, failed) = (self.shutdown.clone(), self.failed.clone());
        self.tasks.spawn(async move {
            let ended = task.await;
            if shutdown.is_cancelled() {
                return;
            }
            let how = if ended.is_err() { "panicked" } else { "ended" };
            error!(
                task = name,
                "the {name} task {how}: the bridge stops, to be started afresh"
            );
            failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(name);
            shutdown.cancel();
        });
    }

    /// The first task that failed, if any.
    fn failed(&self) -> Option<&'static str> {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_essential_task_that_panics_stops_the_bridge_and_is_named() {
        let shutdown = CancellationToken::new();
        let essential = Essential::new(shutdown.clone());
        essential.spawn("steady", shutdown.clone().cancelled_owned());
        essential.spawn("faulty", async { panic!("a bug") });
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("the panic begins shutdown");
        essential.tasks.close();
        essential.tasks.wait().await;
        assert_eq!(essential.failed(), Some("faulty"));
    }

    #[tokio::test]
    async fn essential_tasks_that_end_once_shutdown_began_are_no_failure() {
        let shutdown = CancellationToken::new();
        let essential = Essential::new(shutdown.clone());
        essential.spawn("steady", shutdown.clone().cancelled_owned());
        shutdown.cancel();
        essential.spawn("late", async {});
        essential.tasks.close();
        essential.tasks.wait().await;
        assert_eq!(essential.failed(), None);
    }
}
