//! Typed configuration: parsed from TOML, overridden by CLI flags, validated before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the bridge needs to run. Every field has a default except the certificate paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the one TLS port (dashboard, `/ws`, health).
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// A name for this bridge instance; command ids carry it so each instance only handles its own acks.
    #[serde(default)]
    pub instance_id: Option<String>,
    pub tls: TlsConfig,
    pub broker: BrokerConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    #[serde(default)]
    pub commands: CommandConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

/// The bridge's own server certificate and the CA its clients' certificates must chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Certificate revocation list(s) for client certificates, PEM.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Where a client's identity comes from: its subject CN, or its first SAN.
    #[serde(default)]
    pub identity: IdentitySource,
}

/// Which part of a client certificate names the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Subject common name (falls back to the first SAN when there is no CN).
    #[default]
    Cn,
    /// First DNS, email or URI subject alternative name.
    San,
}

/// Who may do what, and which web pages may open a socket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// ACL file (TOML rules); without one, every client certificate grants full access.
    pub acl: Option<PathBuf>,
    /// Origins allowed to open `/ws` from a browser, e.g. "https://iot.example.com".
    /// Empty: only the bridge's own origin. Clients that send no Origin are always allowed.
    pub allowed_origins: Vec<String>,
    /// How often to look for changed ACL, certificate and CRL files (0: only on SIGHUP).
    pub reload_poll_secs: u64,
}

/// How to reach the MQTT broker, with the bridge's own client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default = "defaults::broker_host")]
    pub host: String,
    #[serde(default = "defaults::broker_port")]
    pub port: u16,
    /// CA that signed the broker's server certificate.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "defaults::topic_prefix")]
    pub topic_prefix: String,
    /// MQTT client id; defaults to `iot-bridge-{instance_id}`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// Bounds on what any one client can cost the bridge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    /// Largest WebSocket message (and frame) a client may send.
    pub max_frame_bytes: usize,
    /// Largest device payload accepted from the broker.
    pub max_payload_bytes: usize,
    pub max_subscriptions: usize,
    /// TLS handshake plus HTTP request plus WebSocket upgrade must finish within this.
    pub handshake_timeout_ms: u64,
    pub ping_interval_secs: u64,
    /// A client that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_secs: u64,
    /// Frames a session may have queued before telemetry is conflated...
    pub session_queue: usize,
    /// ...or bytes, whichever comes first.
    pub session_queue_bytes: usize,
    /// While the bridge is saturated, a session writes telemetry to its client at most once
    /// per this interval (fewer, larger writes; see `saturation`); 0 writes as often as it can.
    pub busy_write_interval_ms: u64,
    /// Commands per second one identity may send (across its connections), on average...
    pub command_rate: f64,
    /// ...and in a burst.
    pub command_burst: u32,
}

/// Telemetry kept per device, for resuming clients and `history` requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub max_samples: usize,
    pub max_age_secs: u64,
    /// Per device, in bytes of JSON data: what one chatty device with large payloads may hold.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_samples: 512,
            max_age_secs: 3600,
            max_bytes: 1024 * 1024,
        }
    }
}

/// Command handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub grace_ms: u64,
}

mod defaults {
    use std::net::SocketAddr;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8443))
    }
    pub fn broker_host() -> String {
        "localhost".into()
    }
    pub fn broker_port() -> u16 {
        8883
    }
    pub fn topic_prefix() -> String {
        "iot".into()
    }
    pub fn keep_alive_secs() -> u64 {
        30
    }
    pub fn reconnect_min_ms() -> u64 {
        200
    }
    pub fn reconnect_max_ms() -> u64 {
        10_000
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_bytes: 64 * 1024,
            max_payload_bytes: 256 * 1024,
            max_subscriptions: 256,
            handshake_timeout_ms: 10_000,
            ping_interval_secs: 30,
            idle_timeout_secs: 75,
            session_queue: 8192,
            session_queue_bytes: 4 * 1024 * 1024,
            busy_write_interval_ms: 40,
            command_rate: 10.0,
            command_burst: 20,
        }
    }
}

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig {
            default_timeout_ms: 10_000,
            max_timeout_ms: 120_000,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_ms: 5_000 }
    }
}

/// Why a configuration cannot be used. Each variant says its cause in its own message and none
/// reports it as a `source`, so a report of the error chain says each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and parses a TOML file; relative certificate paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        if let Some(base) = path.parent() {
            config.resolve_paths(base);
        }
        Ok(config)
    }

    /// Parses TOML text without touching the file system.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            // toml's Display is multi-line with a caret diagram; one line is what operators grep.
            message: e.message().to_owned() + &span_hint(text, e.span()),
        })
    }

    /// A config for the given certificate directory laid out by the certs tool (`ca.pem`, `server.pem`...).
    pub fn for_dev_certs(dir: &Path, broker_host: &str, broker_port: u16) -> Config {
        Config {
            listen: defaults::listen(),
            instance_id: None,
            tls: TlsConfig {
                cert: dir.join("server.pem"),
                key: dir.join("server.key"),
                client_ca: dir.join("ca.pem"),
                // The certs tool keeps a CRL beside the CA; use it when it is there.
                crl: Some(dir.join("crl.pem")).filter(|p| p.is_file()),
                identity: IdentitySource::Cn,
            },
            broker: BrokerConfig {
                host: broker_host.to_owned(),
                port: broker_port,
                ca: dir.join("ca.pem"),
                cert: dir.join("bridge-client.pem"),
                key: dir.join("bridge-client.key"),
                topic_prefix: defaults::topic_prefix(),
                client_id: None,
                keep_alive_secs: defaults::keep_alive_secs(),
                reconnect_min_ms: defaults::reconnect_min_ms(),
                reconnect_max_ms: defaults::reconnect_max_ms(),
            },
            limits: Limits::default(),
            security: SecurityConfig::default(),
            history: HistoryConfig::default(),
            commands: CommandConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.tls.crl, &mut self.security.acl]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.tls.client_ca,
            &mut self.broker.ca,
            &mut self.broker.cert,
            &mut self.broker.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks what serde cannot: ranges, relations between fields, the topic prefix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let prefix = &self.broker.topic_prefix;
        // Levels that are empty, wildcards or control characters would make filters that match
        // other topics than ours, or that the broker refuses; `$` is the broker's own namespace.
        let level_ok = |level: &str| {
            !level.is_empty() && !level.contains(['+', '#']) && !level.contains(char::is_control)
        };
        if prefix.len() > 1024 || prefix.starts_with('$') || !prefix.split('/').all(level_ok) {
            return bad(format!(
                "broker.topic_prefix {prefix:?} must be up to 1024 bytes of '/'-separated levels, \
                 each non-empty, without wildcards or control characters, not starting with '$'"
            ));
        }
        if self.broker.host.is_empty() {
            return bad("broker.host is empty".into());
        }
        if self.broker.port == 0 {
            return bad("broker.port must not be 0".into());
        }
        if let Some(id) = &self.instance_id {
            if !crate::topic::is_valid_device_id(id) {
                return bad(format!(
                    "instance_id {id:?} must match [A-Za-z0-9_-]{{1,64}}"
                ));
            }
        }
        if self.broker.reconnect_min_ms == 0
            || self.broker.reconnect_min_ms > self.broker.reconnect_max_ms
        {
            return bad("broker.reconnect_min_ms must be > 0 and <= reconnect_max_ms".into());
        }
        // MQTT carries the keep-alive in 16 bits.
        if !(5..=u64::from(u16::MAX)).contains(&self.broker.keep_alive_secs) {
            return bad("broker.keep_alive_secs must be from 5 to 65535".into());
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return bad("limits.max_connections must be at least 1".into());
        }
        if l.max_frame_bytes < 1024 {
            return bad("limits.max_frame_bytes must be at least 1024".into());
        }
        if l.max_payload_bytes < 256 {
            return bad("limits.max_payload_bytes must be at least 256".into());
        }
        if l.session_queue < 16 {
            return bad("limits.session_queue must be at least 16".into());
        }
        if l.session_queue_bytes < 64 * 1024 {
            return bad("limits.session_queue_bytes must be at least 65536".into());
        }
        if l.busy_write_interval_ms > 1000 {
            return bad("limits.busy_write_interval_ms must be at most 1000".into());
        }
        if l.max_subscriptions == 0 {
            return bad("limits.max_subscriptions must be at least 1".into());
        }
        if l.handshake_timeout_ms == 0 {
            return bad("limits.handshake_timeout_ms must be > 0".into());
        }
        if l.ping_interval_secs == 0 || l.idle_timeout_secs <= l.ping_interval_secs {
            return bad(
                "limits.ping_interval_secs must be > 0 and less than limits.idle_timeout_secs"
                    .into(),
            );
        }
        if !(l.command_rate.is_finite() && l.command_rate > 0.0) || l.command_burst == 0 {
            return bad(
                "limits.command_rate must be > 0 and limits.command_burst at least 1".into(),
            );
        }
        for origin in &self.security.allowed_origins {
            if !(origin.starts_with("https://") || origin.starts_with("http://"))
                || origin.ends_with('/')
            {
                return bad(format!(
                    "security.allowed_origins: {origin:?} must look like https://host[:port]"
                ));
            }
        }
        for (name, path) in [
            ("tls.crl", &self.tls.crl),
            ("security.acl", &self.security.acl),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return bad(format!("{name}: no such file {}", path.display()));
                }
            }
        }
        if self.history.max_samples > 1_000_000 {
            return bad("history.max_samples must be at most 1000000".into());
        }
        let c = &self.commands;
        if c.default_timeout_ms == 0 || c.default_timeout_ms > c.max_timeout_ms {
            return bad(
                "commands.default_timeout_ms must be > 0 and <= commands.max_timeout_ms".into(),
            );
        }
        for (name, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
            ("broker.ca", &self.broker.ca),
            ("broker.cert", &self.broker.cert),
            ("broker.key", &self.broker.key),
        ] {
            if !path.is_file() {
                return bad(format!("{name}: no such file {}", path.display()));
            }
        }
        Ok(())
    }

    /// The instance id: configured, or random per process start.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            use rand::Rng;
            let n: u32 = rand::rng().random();
            format!("{n:08x}")
        })
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.handshake_timeout_ms)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown.grace_ms)
    }
}

/// " (line L, column C)" for an error span, so a parse error stays on one line.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_that_cannot_be_read_names_its_cause_once() {
        let err = Config::load(Path::new("no/such/bridge.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read config file no/such/bridge.toml: "),
            "{text}"
        );
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        // The cause is in the message, so it is not also reported as a source.
        assert!(std::error::Error::source(&err).is_none());
    }

    const MINIMAL: &str = r#"
        [tls]
        cert = "server.pem"
        key = "server.key"
        client_ca = "ca.pem"
        [broker]
        ca = "ca.pem"
        cert = "bridge-client.pem"
        key = "bridge-client.key"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.broker.port, 8883);
        assert_eq!(c.broker.topic_prefix, "iot");
        assert_eq!(c.limits.max_frame_bytes, 64 * 1024);
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../bridge.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.broker.topic_prefix, "iot");
    }

    #[test]
    fn unknown_field_is_one_line_error() {
        let text = format!("{MINIMAL}\nbogus = 1\n");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let err = Config::from_toml("listen = 5\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn validation_rejects_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "server.pem",
            "server.key",
            "ca.pem",
            "bridge-client.pem",
            "bridge-client.key",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let good = Config::for_dev_certs(dir.path(), "localhost", 8883);
        good.validate().unwrap();
        let mut nested = good.clone();
        nested.broker.topic_prefix = "site-1/iot".into();
        nested.broker.keep_alive_secs = 65_535;
        nested.validate().unwrap();

        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "topic_prefix",
                Box::new(|c| c.broker.topic_prefix = "iot/#".into()),
            ),
            (
                "topic_prefix",
                Box::new(|c| c.broker.topic_prefix = "".into()),
            ),
            (
                "topic_prefix",
                Box::new(|c| c.broker.topic_prefix = "iot//home".into()),
            ),
            (
                "topic_prefix",
                Box::new(|c| c.broker.topic_prefix = "iot/\u{0}x".into()),
            ),
            (
                "topic_prefix",
                Box::new(|c| c.broker.topic_prefix = "$SYS".into()),
            ),
            (
                "topic_prefix",
                Box::new(|c| c.broker.topic_prefix = "iot/".into()),
            ),
            (
                "keep_alive_secs",
                Box::new(|c| c.broker.keep_alive_secs = 65_536),
            ),
            ("broker.port", Box::new(|c| c.broker.port = 0)),
            (
                "max_frame_bytes",
                Box::new(|c| c.limits.max_frame_bytes = 10),
            ),
            (
                "ping_interval",
                Box::new(|c| c.limits.idle_timeout_secs = 1),
            ),
            (
                "busy_write_interval_ms",
                Box::new(|c| c.limits.busy_write_interval_ms = 5000),
            ),
            (
                "reconnect_min_ms",
                Box::new(|c| c.broker.reconnect_min_ms = 0),
            ),
            (
                "instance_id",
                Box::new(|c| c.instance_id = Some("a/b".into())),
            ),
            (
                "tls.key",
                Box::new(|c| c.tls.key = "/nonexistent/key".into()),
            ),
        ];
        for (needle, mutate) in cases {
            let mut c = good.clone();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
