//! Deciding whether a leaf certificate already on disk can be kept.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::Path;

use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{parse_san, san_key};
use crate::crl::serial_hex;
use crate::dev_set::LeafKind;
use crate::{files, Ca, CertError, Issued};

/// A certificate this close to expiry is replaced rather than kept.
const MIN_REMAINING: Duration = Duration::days(7);

/// Checks existing leaf files against one CA.
pub(crate) struct LeafCheck<'a> {
    ca: X509Certificate<'a>,
    /// Serial numbers (canonical hex) in the CA's revocation list.
    revoked: BTreeSet<String>,
}

impl<'a> LeafCheck<'a> {
    pub(crate) fn new(ca: &'a Ca, revoked: BTreeSet<String>) -> Result<Self, CertError> {
        let (_, ca) = X509Certificate::from_der(ca.cert_der())
            .map_err(|e| CertError::invalid("CA certificate", e))?;
        Ok(LeafCheck { ca, revoked })
    }

    /// The certificate at `cert`/`key` if it is still good for `kind`; `None` means replace it.
    /// Unreadable or broken files count as missing: they are derived data, the CA is not.
    pub(crate) fn existing(&self, cert: &Path, key: &Path, kind: &LeafKind) -> Option<Issued> {
        let cert_pem = files::read_to_string(cert).ok()?;
        let key_pem = files::read_to_string(key).ok()?;
        let issued = Issued::from_pem(&cert_pem, &key_pem).ok()?;
        self.is_current(&issued.cert_der, kind).then_some(issued)
    }

    fn is_current(&self, der: &[u8], kind: &LeafKind) -> bool {
        let Ok((_, x509)) = X509Certificate::from_der(der) else {
            return false;
        };
        if x509.verify_signature(Some(self.ca.public_key())).is_err() {
            return false;
        }
        // Keeping a revoked certificate would leave its owner locked out for good.
        if self.revoked.contains(&serial_hex(x509.raw_serial())) {
            return false;
        }
        let expires = x509.validity().not_after.to_datetime();
        if expires - OffsetDateTime::now_utc() < MIN_REMAINING {
            return false;
        }
        let cn_matches = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            == Some(kind.common_name());
        if !cn_matches {
            return false;
        }
        let Ok(Some(eku)) = x509.extended_key_usage() else {
            return false;
        };
        match kind {
            LeafKind::Client { .. } => eku.value.client_auth,
            LeafKind::Server { sans, .. } => eku.value.server_auth && covers(&x509, sans),
        }
    }
}

/// Whether the certificate names every requested SAN.
fn covers(x509: &X509Certificate<'_>, wanted: &[String]) -> bool {
    let Ok(Some(ext)) = x509.subject_alternative_name() else {
        return false;
    };
    let have: HashSet<String> = ext
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect();
    wanted.iter().all(|san| {
        parse_san(san)
            .ok()
            .and_then(|san| san_key(&san))
            .is_some_and(|key| have.contains(&key))
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(sans: &[&str]) -> LeafKind {
        LeafKind::Server {
            cn: "srv".into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn judges_leaves() {
        let ca = Ca::generate("ca").unwrap();
        let other = Ca::generate("ca").unwrap();
        let check = LeafCheck::new(&ca, BTreeSet::new()).unwrap();
        let srv = ca
            .issue_server("srv", &["localhost".into(), "10.0.0.2".into()])
            .unwrap();

        assert!(check.is_current(&srv.cert_der, &server(&["LOCALHOST", "10.0.0.2"])));
        assert!(check.is_current(&srv.cert_der, &server(&["localhost"])));
        // A newly requested SAN forces a new certificate.
        assert!(!check.is_current(&srv.cert_der, &server(&["localhost", "10.0.0.3"])));
        // Right names, wrong usage.
        assert!(!check.is_current(&srv.cert_der, &LeafKind::Client { cn: "srv".into() }));

        let alice = ca.issue_client("alice").unwrap();
        assert!(check.is_current(&alice.cert_der, &LeafKind::Client { cn: "alice".into() }));
        assert!(!check.is_current(&alice.cert_der, &LeafKind::Client { cn: "bob".into() }));

        // Same CA name, different key: must not be kept.
        let stranger = other.issue_client("alice").unwrap();
        assert!(!check.is_current(&stranger.cert_der, &LeafKind::Client { cn: "alice".into() }));

        // A revoked certificate is replaced.
        let (_, x509) = X509Certificate::from_der(&alice.cert_der).unwrap();
        let revoked = BTreeSet::from([serial_hex(x509.raw_serial())]);
        let check = LeafCheck::new(&ca, revoked).unwrap();
        assert!(!check.is_current(&alice.cert_der, &LeafKind::Client { cn: "alice".into() }));
    }
}
