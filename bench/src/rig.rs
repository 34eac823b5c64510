//! The systems under test, started fresh for a run: a certificate set, one Mosquitto (an MQTT
//! listener for devices and the bridge, and, with the built peer, a WebSocket listener for
//! browsers-as-MQTT-clients), and the bridge, as its own release process or in this process.
//! Every listener is on loopback, TLS 1.3, and refuses clients without a certificate.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_certs::{DevCertOptions, DevCertPaths};
use rustls::ClientConfig;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procstat::{self, Usage};
use crate::{tls, BenchError};

/// The client certificate every benchmark client presents (a person, as far as the bridge knows).
pub const USER: &str = "bench";
/// The certificate every simulated device presents; the client id tells devices apart.
pub const DEVICE: &str = "bench-device";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How to run the bridge.
#[derive(Debug, Clone)]
pub enum BridgeMode {
    /// A separate process from this binary (a release build), so that its CPU time and memory
    /// can be read on their own.
    Process(PathBuf),
    /// `iot_bridge::run` on this process's runtime: no figures of its own, for the smoke test.
    InProcess,
}

#[derive(Debug, Clone)]
pub struct RigOptions {
    /// Mosquitto binary; the built peer (WebSocket-capable) or Debian's.
    pub mosquitto: PathBuf,
    /// Open the WSS listener (only the built peer can).
    pub websockets: bool,
    pub bridge: BridgeMode,
    /// The bridge's `limits.max_connections`.
    pub max_connections: usize,
    /// More `key = value` lines for the bridge's `[limits]` (to try a setting without a rebuild).
    pub limits: Vec<String>,
}

/// A certificate set in a temporary folder, with the TLS client configs built from it once.
pub struct Certs {
    pub paths: DevCertPaths,
    /// TLS 1.3 with the `bench` user certificate.
    pub user: Arc<ClientConfig>,
    /// TLS 1.3 with the device certificate.
    pub device: Arc<ClientConfig>,
    /// TLS 1.3 without any client certificate: servers must refuse it.
    pub anonymous: Arc<ClientConfig>,
    _dir: TempDir,
}

impl Certs {
    pub fn generate() -> Result<Certs, BenchError> {
        let dir = tempfile::tempdir().map_err(BenchError::io("creating a temporary folder"))?;
        let opts = DevCertOptions {
            out_dir: dir.path().to_owned(),
            users: vec![USER.into()],
            devices: vec![DEVICE.into()],
            ..DevCertOptions::default()
        };
        let paths = iot_certs::generate_dev_certs(&opts)?;
        let (ucert, ukey, _) = paths.user(USER);
        let (dcert, dkey) = paths.device(DEVICE);
        Ok(Certs {
            user: tls::client_config(&paths.ca_cert, Some((&ucert, &ukey)))?,
            device: tls::client_config(&paths.ca_cert, Some((&dcert, &dkey)))?,
            anonymous: tls::client_config(&paths.ca_cert, None)?,
            paths,
            _dir: dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }
}

/// A child process that is killed when dropped, so no broker or bridge outlives a failed run.
struct Owned(Child);

impl Owned {
    /// SIGTERM, so that the process can shut down as it would in service (and tools wrapped
    /// around it can write their output); SIGKILL if it is still there after `grace`.
    fn terminate(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// Picks a free loopback port (bound and released; the process that gets it binds it next).
pub fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(BenchError::io("finding a free port"))?
        .port())
}

/// Whether Mosquitto's start-up log says it could not bind a listener's port.
fn port_taken(log: &str) -> bool {
    log.contains("Unable to create websockets listener") || log.contains("Address already in use")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `log` holds `needle`, or the child exits, or the timeout.
fn wait_for_log(child: &mut Child, log: &Path, needle: &str, what: &str) -> Result<(), BenchError> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Setup(format!(
                "{what} exited ({status}): {text}"
            )));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(BenchError::Timeout(format!("{what} did not start: {text}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mosquitto with an MQTT/TLS listener and, optionally, an MQTT-over-WSS listener.
pub struct Broker {
    pub mqtt: SocketAddr,
    pub wss: Option<SocketAddr>,
    child: Owned,
}

impl Broker {
    /// Starts Mosquitto on free ports; tries new ports if it cannot bind the ones picked (a port
    /// found free can be taken before Mosquitto binds it, e.g. by a lingering connection of a
    /// previous run with thousands of sockets).
    pub fn start(
        binary: &Path,
        websockets: bool,
        certs: &Certs,
        dir: &Path,
    ) -> Result<Broker, BenchError> {
        let mut attempt = 1;
        loop {
            match Self::start_once(binary, websockets, certs, dir) {
                Err(BenchError::Setup(e)) if attempt < 3 && port_taken(&e) => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(
        binary: &Path,
        websockets: bool,
        certs: &Certs,
        dir: &Path,
    ) -> Result<Broker, BenchError> {
        let mqtt = loopback(free_port()?);
        let wss = if websockets {
            Some(loopback(free_port()?))
        } else {
            None
        };
        let p = &certs.paths;
        // Mutual TLS 1.3 on every listener, identity from the certificate, no ACL file: the peer
        // gets the cheapest configuration it can have (an ACL would cost it per delivery).
        let tls = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\ntls_version tlsv1.3\nrequire_certificate true\nuse_identity_as_username true\n",
            p.ca_cert.display(),
            p.broker_cert.display(),
            p.broker_key.display()
        );
        let mut conf = String::from(
            "# Written by iot-bench.\n\
             # When started as root, stay root: the key files are in a private temporary folder.\n\
             user root\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
             log_type information\nconnection_messages false\npersistence false\n\
             allow_anonymous false\nper_listener_settings false\nset_tcp_nodelay true\n",
        );
        conf += &format!("listener {} 127.0.0.1\nprotocol mqtt\n{tls}", mqtt.port());
        if let Some(wss) = wss {
            conf += &format!(
                "listener {} 127.0.0.1\nprotocol websockets\n{tls}",
                wss.port()
            );
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).map_err(BenchError::io("writing mosquitto.conf"))?;
        let log = dir.join("mosquitto.log");
        let out = File::create(&log).map_err(BenchError::io("creating mosquitto.log"))?;
        let err = out
            .try_clone()
            .map_err(BenchError::io("creating mosquitto.log"))?;
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(BenchError::io(format!("starting {}", binary.display())))?;
        wait_for_log(&mut child, &log, " running", "mosquitto")?;
        Ok(Broker {
            mqtt,
            wss,
            child: Owned(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn usage(&self) -> Option<Usage> {
        procstat::usage(self.pid())
    }
}

enum Running {
    Process(Owned),
    InProcess {
        stop: CancellationToken,
        task: JoinHandle<Result<(), iot_bridge::BridgeError>>,
    },
}

/// The bridge, connected to the rig's broker.
pub struct Bridge {
    pub addr: SocketAddr,
    running: Running,
}

impl Bridge {
    /// Starts bridge instance `instance` (0 is the rig's own; others have their own instance
    /// id, port and files, as several instances on one broker would) and returns once its
    /// broker link is up.
    pub async fn start(
        opts: &RigOptions,
        broker: &Broker,
        certs: &Certs,
        dir: &Path,
        instance: usize,
    ) -> Result<Bridge, BenchError> {
        let p = &certs.paths;
        let name = match instance {
            0 => "bench".to_owned(),
            n => format!("bench-{n}"),
        };
        let file = |ext: &str| match instance {
            0 => format!("bridge.{ext}"),
            n => format!("bridge-{n}.{ext}"),
        };
        let config = |listen: SocketAddr| {
            format!(
                "listen = \"{listen}\"\ninstance_id = \"{name}\"\n\
                 [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
                 [broker]\nhost = \"localhost\"\nport = {}\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
                 [limits]\nmax_connections = {}\n\
                 # Commands come from one identity in this benchmark, far above a person's rate.\n\
                 command_rate = 100000.0\ncommand_burst = 100000\n{}\n",
                p.server_cert.display().to_string(),
                p.server_key.display().to_string(),
                p.ca_cert.display().to_string(),
                broker.mqtt.port(),
                p.ca_cert.display().to_string(),
                p.bridge_client_cert.display().to_string(),
                p.bridge_client_key.display().to_string(),
                opts.max_connections,
                opts.limits.join("\n"),
            )
        };
        let mode = &opts.bridge;
        let running = match mode {
            BridgeMode::Process(binary) => {
                let addr = loopback(free_port()?);
                let path = dir.join(file("toml"));
                std::fs::write(&path, config(addr))
                    .map_err(BenchError::io(format!("writing {}", path.display())))?;
                let log = dir.join(file("log"));
                let creating = || BenchError::io(format!("creating {}", log.display()));
                let out = File::create(&log).map_err(creating())?;
                let err = out.try_clone().map_err(creating())?;
                let mut child = Command::new(binary)
                    .arg("--config")
                    .arg(&path)
                    // Per-connection info lines would only measure the logger in the idle scenario.
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .map_err(BenchError::io(format!("starting {}", binary.display())))?;
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(BenchError::Setup(format!(
                        "bridge exited at once: {status}"
                    )));
                }
                (addr, Running::Process(Owned(child)))
            }
            BridgeMode::InProcess => {
                let https = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(BenchError::io("binding the bridge's port"))?;
                let addr = https
                    .local_addr()
                    .map_err(BenchError::io("bridge address"))?;
                let config = iot_bridge::Config::from_toml(&config(addr))?;
                config.validate()?;
                let stop = CancellationToken::new();
                let task = tokio::spawn(iot_bridge::run(
                    iot_bridge::Listeners { https },
                    config,
                    stop.clone(),
                ));
                (addr, Running::InProcess { stop, task })
            }
        };
        let (addr, running) = running;
        let bridge = Bridge { addr, running };
        crate::clients::wait_bridge_ready(addr, &certs.user, START_TIMEOUT).await?;
        Ok(bridge)
    }

    /// The bridge's own process id, when it runs as a process.
    pub fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Process(child) => Some(child.0.id()),
            Running::InProcess { .. } => None,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.pid().and_then(procstat::usage)
    }

    /// Stops the bridge (SIGTERM, then SIGKILL if it takes longer than its grace period).
    pub async fn stop(&mut self) {
        match &mut self.running {
            Running::Process(child) => child.terminate(Duration::from_secs(10)),
            Running::InProcess { stop, task } => {
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
        }
    }
}

impl Drop for Bridge {
    /// A process is killed by its [`Owned`]; an in-process bridge is told to stop.
    fn drop(&mut self) {
        if let Running::InProcess { stop, .. } = &self.running {
            stop.cancel();
        }
    }
}

/// Everything a scenario needs: certificates, the broker, the bridge and their work folder.
pub struct Rig {
    pub certs: Certs,
    pub broker: Broker,
    pub bridge: Bridge,
    pub opts: RigOptions,
    bridge_running: bool,
    work: TempDir,
}

impl Rig {
    pub async fn start(opts: RigOptions) -> Result<Rig, BenchError> {
        let certs = Certs::generate()?;
        let work = tempfile::tempdir().map_err(BenchError::io("creating a temporary folder"))?;
        let broker = Broker::start(&opts.mosquitto, opts.websockets, &certs, work.path())?;
        let bridge = Bridge::start(&opts, &broker, &certs, work.path(), 0).await?;
        Ok(Rig {
            certs,
            broker,
            bridge,
            opts,
            bridge_running: true,
            work,
        })
    }

    /// Replaces the bridge with a fresh one (same broker): for a clean memory baseline, or to
    /// bring it back after [`Rig::bridge_down`].
    pub async fn restart_bridge(&mut self) -> Result<(), BenchError> {
        // The old one goes first: both would use the same MQTT client id.
        self.bridge_down().await;
        self.bridge =
            Bridge::start(&self.opts, &self.broker, &self.certs, self.work.path(), 0).await?;
        self.bridge_running = true;
        Ok(())
    }

    /// Starts `n` more bridge instances on the rig's broker, each ready when returned: the
    /// scale-out model on one machine (docs/operations.md, "Several instances"). They stop when
    /// dropped.
    pub async fn more_bridges(&self, n: usize) -> Result<Vec<Bridge>, BenchError> {
        let mut more = Vec::with_capacity(n);
        for instance in 1..=n {
            let dir = self.work.path();
            more.push(Bridge::start(&self.opts, &self.broker, &self.certs, dir, instance).await?);
        }
        Ok(more)
    }

    /// Makes sure the bridge runs (it is stopped while the peer is measured, so that its
    /// own subscription costs the peer nothing).
    pub async fn bridge_up(&mut self) -> Result<(), BenchError> {
        if self.bridge_running {
            return Ok(());
        }
        self.restart_bridge().await
    }

    pub async fn bridge_down(&mut self) {
        if self.bridge_running {
            self.bridge.stop().await;
            self.bridge_running = false;
        }
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    pub async fn stop(mut self) {
        self.bridge.stop().await;
    }
}
