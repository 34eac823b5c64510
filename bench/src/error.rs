//! The benchmark's one error type: what failed while setting up or driving a measurement.

use std::io;

/// Every variant says its cause in its own message and none reports it as a `source`: a report
/// of the error chain (`{:#}`) would otherwise say each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("certificate files: {0}")]
    Pem(String),
    #[error("certificates: {0}")]
    Certs(iot_certs::CertError),
    #[error("WebSocket: {0}")]
    Ws(tokio_tungstenite::tungstenite::Error),
    #[error("MQTT: {0}")]
    Mqtt(crate::mqtt::MqttError),
    #[error("bridge config: {0}")]
    Config(iot_bridge::config::ConfigError),
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

macro_rules! from {
    ($($variant:ident: $cause:ty),* $(,)?) => {$(
        impl From<$cause> for BenchError {
            fn from(e: $cause) -> BenchError {
                BenchError::$variant(e)
            }
        }
    )*};
}

from! {
    Tls: rustls::Error,
    Certs: iot_certs::CertError,
    Ws: tokio_tungstenite::tungstenite::Error,
    Mqtt: crate::mqtt::MqttError,
    Config: iot_bridge::config::ConfigError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_report_says_each_cause_once() {
        let e = anyhow::Error::from(BenchError::from(rustls::Error::HandshakeNotComplete))
            .context("connecting");
        let report = format!("{e:#}");
        assert_eq!(
            report.matches("handshake not complete").count(),
            1,
            "{report}"
        );
        let io = BenchError::io("reading x")(std::io::Error::other("gone"));
        assert_eq!(format!("{:#}", anyhow::Error::from(io)), "reading x: gone");
    }
}
