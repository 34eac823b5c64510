//! The client library's error type: everything between "read the certificate files" and "the
//! bridge answered".

use std::path::PathBuf;
use std::time::Duration;

/// Why a connection could not be made, or a request not answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--url` is not a `wss://host[:port]/path` URL.
    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },

    /// A certificate or key file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A certificate or key file was read but holds nothing usable.
    #[error("invalid {what} {}: {reason}", path.display())]
    BadFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// No client certificate was named.
    #[error("{0}")]
    Usage(String),

    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// The TLS handshake failed (unknown server CA, refused client certificate, ...).
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },

    /// The HTTP upgrade to WebSocket was refused.
    #[error("the bridge refused the WebSocket upgrade: {0}")]
    Upgrade(String),

    /// Any later WebSocket failure.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),

    /// The bridge closed the connection.
    #[error("the bridge closed the connection{0}")]
    Closed(String),

    /// The bridge sent something that is not a protocol message.
    #[error("unexpected message from the bridge: {0}")]
    Protocol(String),

    /// The bridge answered a request with an `error` message.
    #[error("{code}: {message}")]
    Bridge { code: String, message: String },

    /// Writing the output failed (e.g. the reading end of a pipe went away).
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),

    /// A request this client builds was not a JSON object.
    #[error("a request must be a JSON object with a \"type\"")]
    NotAnObject,

    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
}

impl ClientError {
    pub(crate) fn timeout(what: impl Into<String>, waited: Duration) -> Self {
        ClientError::Timeout {
            what: what.into(),
            waited,
        }
    }
}
