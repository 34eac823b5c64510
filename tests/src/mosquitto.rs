//! A real Mosquitto broker per test, running the shipped `mosquitto/mosquitto.conf` and
//! `mosquitto/acl` with only the listener port and the two container folders swapped for local ones.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::pki::make_traversable;
use crate::{E2eError, Pki};

/// The listener line of the shipped config; the only listener, replaced by a local port.
pub const SHIPPED_LISTENER: &str = "listener 8883";
/// Where the shipped config expects the certificate set (docker-compose mounts `dev-certs/` there).
pub const CONTAINER_CERTS_DIR: &str = "/mosquitto/certs/";
/// Where the shipped config expects itself and the ACL file.
pub const CONTAINER_CONFIG_DIR: &str = "/mosquitto/config/";

/// What Mosquitto logs once its listeners are open ("mosquitto version 2.0.11 running").
const RUNNING: &str = " running";
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at a free port before giving up (another process may take the port we picked).
const PORT_ATTEMPTS: usize = 5;

/// The repository's `mosquitto/` folder.
pub fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("mosquitto")
}

/// Reads a file of the shipped Mosquitto setup (`mosquitto.conf` or `acl`).
pub fn shipped_file(name: &str) -> Result<String, E2eError> {
    let path = shipped_dir().join(name);
    std::fs::read_to_string(&path).map_err(E2eError::io(format!("reading {}", path.display())))
}

/// The shipped config, made runnable here: `listener 8883` becomes `listener PORT 127.0.0.1`,
/// `/mosquitto/certs/` becomes `certs_dir` and `/mosquitto/config/` becomes `config_dir`.
/// Nothing else changes, so what the tests run is what docker-compose runs.
pub fn render_config(
    shipped: &str,
    port: u16,
    certs_dir: &Path,
    config_dir: &Path,
) -> Result<String, E2eError> {
    let invalid = |message: String| E2eError::Shipped {
        path: shipped_dir().join("mosquitto.conf"),
        message,
    };
    let listeners: Vec<&str> = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("listener"))
        .collect();
    if listeners != [SHIPPED_LISTENER] {
        return Err(invalid(format!(
            "expected exactly one listener line {SHIPPED_LISTENER:?}, found {listeners:?}"
        )));
    }
    for folder in [CONTAINER_CERTS_DIR, CONTAINER_CONFIG_DIR] {
        if !shipped.contains(folder) {
            return Err(invalid(format!("no path under {folder}")));
        }
    }
    let folder = |dir: &Path| format!("{}/", dir.display());
    let rendered: Vec<String> = shipped
        .lines()
        .map(|line| {
            if line == SHIPPED_LISTENER {
                format!("listener {port} 127.0.0.1")
            } else {
                line.replace(CONTAINER_CERTS_DIR, &folder(certs_dir))
                    .replace(CONTAINER_CONFIG_DIR, &folder(config_dir))
            }
        })
        .collect();
    let mut text = rendered.join("\n");
    if shipped.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A running `mosquitto -c <rendered config>`; killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    /// Holds `mosquitto.conf`, `acl` and `mosquitto.log`; deleted on drop.
    dir: TempDir,
}

impl std::fmt::Debug for Mosquitto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mosquitto")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish()
    }
}

impl Mosquitto {
    /// Starts a broker on a free local port with the shipped config and ACL and `pki`'s
    /// certificates; returns once it accepts connections.
    pub async fn start(pki: &Pki) -> Result<Mosquitto, E2eError> {
        Mosquitto::start_with_acl(pki, "").await
    }

    /// [`Mosquitto::start`] with `extra` appended to the shipped ACL, e.g. a test-only observer
    /// (`user e2e-observer` / `topic read #`). The shipped lines stay as they are.
    pub async fn start_with_acl(pki: &Pki, extra: &str) -> Result<Mosquitto, E2eError> {
        let dir = tempfile::Builder::new()
            .prefix("e2e-mosquitto-")
            .tempdir()
            .map_err(E2eError::io("creating the broker folder"))?;
        make_traversable(dir.path())?;
        let mut acl = shipped_file("acl")?;
        if !extra.is_empty() {
            if !acl.ends_with('\n') {
                acl.push('\n');
            }
            acl.push_str(extra);
        }
        write_public(&dir.path().join("acl"), &acl)?;
        let shipped = shipped_file("mosquitto.conf")?;
        let mut mosquitto = Mosquitto {
            child: None,
            port: 0,
            dir,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            mosquitto.port = free_port()?;
            let config = render_config(&shipped, mosquitto.port, pki.dir(), mosquitto.dir.path())?;
            write_public(&mosquitto.config_path(), &config)?;
            match mosquitto.spawn().await {
                Ok(()) => return Ok(mosquitto),
                Err(e) => {
                    let taken = mosquitto.log().contains("Address already in use");
                    tracing::warn!(port = mosquitto.port, error = %e, "mosquitto did not start");
                    last_error = Some(e);
                    if !taken {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| mosquitto.failure("never started")))
    }

    /// The local port of the TLS listener (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The rendered config the broker runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// The folder holding the rendered config and the ACL.
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the broker logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills the broker (SIGKILL: no goodbye to clients, like a crash or a pulled cable).
    pub async fn stop(&mut self) -> Result<(), E2eError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // An already exited child makes kill fail; wait() below still reaps it.
        let _ = child.kill();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .map_err(|e| E2eError::Bridge(format!("waiting for mosquitto: {e}")))?
            .map_err(E2eError::io("waiting for mosquitto to exit"))?;
        Ok(())
    }

    /// Swaps the ACL file for Mosquitto's dynamic security plugin with `config` (its JSON: clients,
    /// roles, default access), from the next [`Mosquitto::restart`] on. Unlike the ACL file, the
    /// plugin refuses a subscription it does not allow in the SubAck, and its rules change at
    /// run time through `$CONTROL/dynamic-security/v1`.
    pub fn use_dynamic_security(&self, config: &str) -> Result<(), E2eError> {
        const PLUGIN: &str = "mosquitto_dynamic_security.so";
        let plugin = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib",
        ]
        .iter()
        .map(|dir| Path::new(dir).join(PLUGIN))
        .find(|p| p.exists())
        .ok_or_else(|| self.failure(format!("{PLUGIN} not found (Debian's mosquitto has it)")))?;
        let json = self.dir.path().join("dynamic-security.json");
        write_public(&json, config)?;
        let rendered = std::fs::read_to_string(self.config_path())
            .map_err(E2eError::io("reading the broker config"))?;
        let Some(acl_line) = rendered.lines().find(|l| l.starts_with("acl_file ")) else {
            return Err(self.failure("the rendered config has no acl_file line to swap"));
        };
        let plugin_lines = format!(
            "plugin {}\nplugin_opt_config_file {}",
            plugin.display(),
            json.display()
        );
        write_public(
            &self.config_path(),
            &rendered.replacen(acl_line, &plugin_lines, 1),
        )
    }

    /// Stops the broker if it runs and starts it again on the same port.
    pub async fn restart(&mut self) -> Result<(), E2eError> {
        self.stop().await?;
        self.spawn().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn failure(&self, message: impl Into<String>) -> E2eError {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        E2eError::Mosquitto {
            message: message.into(),
            log: self.log_path(),
            tail,
        }
    }

    async fn spawn(&mut self) -> Result<(), E2eError> {
        // Counted before the process starts: it may log "running" before we look.
        let runs_before = self.log().matches(RUNNING).count();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(E2eError::io("opening the mosquitto log"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                self.failure(format!(
                    "cannot run `mosquitto` (is it installed and on PATH?): {e}"
                ))
            })?;
        tracing::debug!(pid = child.id(), port = self.port, "mosquitto started");
        self.child = Some(child);
        self.wait_ready(runs_before).await
    }

    /// Ready = the process still runs, it logged that it is running, and the port accepts.
    /// The log check matters: if another process holds the port, connecting alone would succeed.
    async fn wait_ready(&mut self, runs_before: usize) -> Result<(), E2eError> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.failure(format!("exited during start-up: {status}")));
                }
            }
            let logged = self.log().matches(RUNNING).count() > runs_before;
            if logged {
                let probe = tokio::net::TcpStream::connect(addr);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(self.failure(format!(
                    "not accepting on port {} after {START_TIMEOUT:?}",
                    self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- mosquitto log (port {}) ---\n{}", self.port, self.log());
        }
    }
}

/// A port nothing listens on right now. The broker binds it a moment later; the small race with
/// other processes is handled by retrying in [`Mosquitto::start`].
fn free_port() -> Result<u16, E2eError> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(E2eError::io("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(E2eError::io("finding a free port"))?
        .port();
    Ok(port)
}

/// Writes a file the broker's unprivileged user can read (0644).
fn write_public(path: &Path, text: &str) -> Result<(), E2eError> {
    let what = || format!("writing {}", path.display());
    std::fs::write(path, text).map_err(E2eError::io(what()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::File::open(path).map_err(E2eError::io(what()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(E2eError::io(what()))?;
    }
    Ok(())
}
