//! The simulator library's error type.

use std::time::Duration;

/// Everything that can go wrong when building or running a simulated fleet.
///
/// Every variant says its cause in its own message and none reports it as a `source`: a report
/// of the error chain (`{:#}`, as `device-sim` prints) would otherwise say each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A PEM input (CA, certificate or key) could not be parsed.
    #[error("invalid PEM for {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    /// The TLS client configuration could not be built from the given material.
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
    /// The broker CA bundle could not be turned into a certificate verifier.
    #[error("server certificate verifier: {0}")]
    Verifier(rustls::client::VerifierBuilderError),
    /// Minting a per-device client certificate failed.
    #[error("device certificate: {0}")]
    Cert(iot_certs::CertError),
    /// A device id does not match `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid device id '{0}': ids are 1-64 characters of A-Z a-z 0-9 _ -")]
    InvalidDeviceId(String),
    /// Two devices in one fleet share an id (the broker would kick one of them off forever).
    #[error("duplicate device id '{0}'")]
    DuplicateDeviceId(String),
    /// The fleet or device specification is unusable.
    #[error("invalid fleet specification: {0}")]
    InvalidSpec(String),
    /// A scenario file could not be read or is not valid.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    /// The observer's certificates are unusable.
    #[error("observer: {0}")]
    Observer(crate::observer::ObserverError),
    /// `wait_connected` ran out of time.
    #[error("{missing} of {total} devices not online after {waited:?} (first: {first})")]
    NotConnected {
        missing: usize,
        total: usize,
        waited: Duration,
        first: String,
    },
}

macro_rules! from {
    ($($variant:ident: $cause:ty),* $(,)?) => {$(
        impl From<$cause> for SimError {
            fn from(e: $cause) -> SimError {
                SimError::$variant(e)
            }
        }
    )*};
}

from! {
    Tls: rustls::Error,
    Verifier: rustls::client::VerifierBuilderError,
    Cert: iot_certs::CertError,
    Observer: crate::observer::ObserverError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observer::ObserverError;

    #[test]
    fn a_chain_report_says_each_cause_once() {
        let report = |e: SimError| format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            report(SimError::from(rustls::Error::HandshakeNotComplete)),
            "TLS configuration: handshake not complete"
        );
        let cert = iot_certs::CertError::Io {
            path: "ca.key".into(),
            error: std::io::Error::other("gone"),
        };
        assert_eq!(
            report(SimError::from(cert)),
            "device certificate: ca.key: gone"
        );
        let io = ObserverError::from(std::io::Error::other("refused"));
        assert_eq!(report(SimError::from(io)), "observer: refused");
        let missing = crate::Scenario::from_file("/no/such.toml".as_ref()).unwrap_err();
        let e = report(SimError::from(missing));
        assert_eq!(e.matches("No such file").count(), 1, "{e}");
    }
}
