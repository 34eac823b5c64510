//! The harness's error type: everything that can keep a test environment from starting or a
//! test client from talking to the bridge.

use std::path::PathBuf;
use std::time::Duration;

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Cert(#[from] iot_certs::CertError),
    #[error("device fleet: {0}")]
    Sim(#[from] device_sim::SimError),
    #[error("bridge config: {0}")]
    Config(#[from] iot_bridge::config::ConfigError),
    #[error("bridge: {0}")]
    Bridge(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("not JSON: {source}: {text}")]
    Json {
        text: String,
        source: serde_json::Error,
    },
    #[error("mosquitto: {message}\n--- mosquitto log ({log}) ---\n{tail}")]
    Mosquitto {
        message: String,
        log: PathBuf,
        tail: String,
    },
    #[error("shipped file {path}: {message}")]
    Shipped { path: PathBuf, message: String },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("connection closed by the bridge while waiting for {0}")]
    Closed(String),
    #[error("HTTP: {0}")]
    Http(String),
}

impl E2eError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> E2eError {
        let what = what.into();
        move |source| E2eError::Io { what, source }
    }

    pub fn timeout(what: impl Into<String>, waited: Duration) -> E2eError {
        E2eError::Timeout {
            what: what.into(),
            waited,
        }
    }

    /// True for a timeout: tests use it to tell "refused" (an error) from "hung" (a timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(self, E2eError::Timeout { .. })
    }
}
