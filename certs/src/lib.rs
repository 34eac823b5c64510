//! Development certificate authority for iot-bridge: one CA that issues the bridge's
//! HTTPS/WSS server certificate, the MQTT broker's server certificate, the bridge's MQTT
//! client certificate, and client certificates for people (with PKCS#12 bundles for
//! browsers and phones) and devices.
//!
//! Modules and how data flows between them:
//! - [`ca`]: [`Ca`] generates or reloads the CA and issues leaves as [`Issued`] (PEM + DER).
//! - `pkcs12`: turns an [`Issued`] plus the CA into an importable `.p12`.
//! - `dev_set`: the on-disk layout ([`DevCertPaths`]) and the three ways to fill it:
//!   [`generate_dev_certs`] (new set), [`ensure_dev_certs`] (reuse or complete one) and
//!   [`add_clients`] (more users/devices under an existing CA). It asks `reuse` whether a
//!   leaf on disk can be kept and writes through `files` (atomic, exact permissions).
//! - `revocation`: [`revoke`] records a certificate's serial in `revoked.json` and has `crl`
//!   sign `crl.pem` from that list with the CA; [`write_crl`] refreshes it. Every new set starts
//!   with an empty CRL, and `ensure_dev_certs` re-issues revoked leaves.
//! - [`names`]: validation of user names and device ids, which become file names.
//!
//! Everything here is for development and demos: the CA key sits next to the certificates.

pub mod ca;
mod crl;
mod dev_set;
mod error;
mod files;
pub mod names;
mod pkcs12;
mod reuse;
mod revocation;

pub use ca::{Ca, Issued};
pub use dev_set::{
    add_clients, ensure_dev_certs, generate_dev_certs, load_ca, DevCertOptions, DevCertPaths,
    BRIDGE_CLIENT_COMMON_NAME, BROKER_COMMON_NAME, CA_COMMON_NAME, SERVER_COMMON_NAME,
};
pub use error::CertError;
pub use names::{validate_device_id, validate_user_name};
pub use pkcs12::DEFAULT_P12_PASSWORD;
pub use revocation::{
    revocation_list, revoke, revoke_detailed, write_crl, CertRole, Revocation, RevocationList,
    RevokeTarget, RevokedCert,
};
