//! The bridge under test: `iot_bridge::run_with` on the test's own runtime, bound to 127.0.0.1,
//! with a cancellation token to stop it, a reload trigger, and the same address to restart it on.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use iot_bridge::{BridgeError, Config, Control, Listeners};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{E2eError, Pki};

/// How long `stop` waits for the bridge to finish (its grace period is shorter, see `start`).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running bridge.
pub struct Bridge {
    addr: SocketAddr,
    config: Config,
    token: CancellationToken,
    /// What SIGHUP is to the binary: reload the ACL and the TLS files.
    reload: Arc<Notify>,
    task: Option<JoinHandle<Result<(), BridgeError>>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("addr", &self.addr)
            .field("running", &self.task.is_some())
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Starts a bridge with `pki`'s certificates against the broker on `localhost:mqtt_port`.
    ///
    /// Test defaults before `tweak`: listen on 127.0.0.1 port 0, a 1 s shutdown grace period and
    /// broker reconnects capped at 1 s, so tests stay fast. The config is validated like the
    /// binary does before anything binds.
    pub async fn start(
        pki: &Pki,
        mqtt_port: u16,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Bridge, E2eError> {
        let mut config = Config::for_dev_certs(pki.dir(), "localhost", mqtt_port);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.shutdown.grace_ms = 1_000;
        config.broker.reconnect_max_ms = 1_000;
        tweak(&mut config);
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(E2eError::io(format!("binding {}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(E2eError::io("reading the bridge's address"))?;
        config.listen = addr;
        let mut bridge = Bridge {
            addr,
            config,
            token: CancellationToken::new(),
            reload: Arc::default(),
            task: None,
        };
        bridge.spawn(listener);
        Ok(bridge)
    }

    /// Where the bridge listens (HTTPS, `/ws`, health); the same after a restart.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The config it runs with (after the test's tweaks; `listen` is the bound address).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Asks the running bridge to reload its ACL, certificates and CRL now (like SIGHUP). It
    /// happens in the bridge's own task, shortly after this returns.
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Cancels the bridge's token and waits for `run` to return; returns the bridge's own error
    /// if it failed.
    pub async fn stop(&mut self) -> Result<(), E2eError> {
        self.token.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(STOP_TIMEOUT, task).await {
            Err(_) => Err(E2eError::timeout("the bridge to stop", STOP_TIMEOUT)),
            Ok(Err(join)) => Err(E2eError::Bridge(format!("bridge task failed: {join}"))),
            Ok(Ok(Err(e))) => Err(E2eError::Bridge(e.to_string())),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Stops the bridge if it runs and starts it again on the same address with the same config.
    pub async fn restart(&mut self) -> Result<(), E2eError> {
        self.stop().await?;
        // tokio sets SO_REUSEADDR on listeners, so the port is free again despite TIME_WAIT.
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(E2eError::io(format!("binding {} again", self.addr)))?;
        self.token = CancellationToken::new();
        self.spawn(listener);
        Ok(())
    }

    fn spawn(&mut self, https: TcpListener) {
        let control = Control {
            shutdown: self.token.clone(),
            reload: Arc::clone(&self.reload),
        };
        let run = iot_bridge::run_with(Listeners { https }, self.config.clone(), control);
        self.task = Some(tokio::spawn(run));
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // The task winds down on its own (or dies with the test's runtime).
        self.token.cancel();
    }
}
