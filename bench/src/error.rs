//! The benchmark's one error type: what failed while setting up or driving a measurement.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The cause is part of the message, not a `source`: a report of the error chain would
    /// otherwise say it twice.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate files: {0}")]
    Pem(String),
    #[error("certificates: {0}")]
    Certs(#[from] iot_certs::CertError),
    #[error("WebSocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("MQTT: {0}")]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error("bridge config: {0}")]
    Config(#[from] iot_bridge::config::ConfigError),
    #[error("{0}")]
    Setup(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl BenchError {
    /// A closure for `map_err` that keeps what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let context = context.into();
        move |error| BenchError::Io { context, error }
    }
}
