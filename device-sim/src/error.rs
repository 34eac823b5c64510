//! The simulator library's error type.

use std::time::Duration;

/// Everything that can go wrong when building or running a simulated fleet.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A PEM input (CA, certificate or key) could not be parsed.
    #[error("invalid PEM for {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    /// The TLS client configuration could not be built from the given material.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The broker CA bundle could not be turned into a certificate verifier.
    #[error("server certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// Minting a per-device client certificate failed.
    #[error("device certificate: {0}")]
    Cert(#[from] iot_certs::CertError),
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
    Observer(#[from] crate::observer::ObserverError),
    /// `wait_connected` ran out of time.
    #[error("{missing} of {total} devices not online after {waited:?} (first: {first})")]
    NotConnected {
        missing: usize,
        total: usize,
        waited: Duration,
        first: String,
    },
}
