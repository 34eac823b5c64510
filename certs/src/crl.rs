//! The X.509 CRL made from the revocation list: signing it with the CA, judging whether the
//! one on disk is still good, and the one spelling of serial numbers both sides use.

use std::collections::BTreeSet;
use std::path::Path;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files;
use crate::revocation::RevocationList;
use crate::{Ca, CertError};

/// `thisUpdate` is backdated like certificates: a verifier whose clock runs behind would
/// otherwise call a fresh CRL "not yet valid".
const BACKDATE: Duration = Duration::hours(1);
/// RFC 5280: serial numbers are at most 20 octets.
const MAX_SERIAL_BYTES: usize = 20;

/// The CRL for `list`, signed by the CA, as PEM (`X509 CRL`, what rustls and OpenSSL load).
///
/// Its `nextUpdate` is the CA's `notAfter`. Verifiers that enforce `nextUpdate` (OpenSSL, so
/// Mosquitto) refuse every client once it passes, and nothing re-signs a dev CRL on a schedule;
/// a revocation rewrites it at once anyway, and no certificate of this CA outlives the CA.
pub(crate) fn sign_crl(ca: &Ca, list: &RevocationList) -> Result<String, CertError> {
    let (_, ca_x509) = X509Certificate::from_der(ca.cert_der())
        .map_err(|e| CertError::invalid("CA certificate", e))?;
    let now = OffsetDateTime::now_utc();
    let revoked_certs = list
        .revoked
        .iter()
        .map(|r| {
            let bytes = hex_decode(&r.serial)
                .ok_or_else(|| CertError::invalid("revoked serial", &r.serial))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: r.revoked_at,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CertError>>()?;
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update: ca_x509.validity().not_after.to_datetime(),
        crl_number: SerialNumber::from(list.crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: ca_key_id(&ca_x509),
    };
    Ok(params.signed_by(ca.issuer())?.pem()?)
}

/// The CRL's authority key id must equal the CA's subject key id, which some verifiers use to
/// find the CRL's issuer; the CA certificate says what it is.
fn ca_key_id(ca: &X509Certificate<'_>) -> KeyIdMethod {
    ca.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
            }
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256)
}

/// Whether `crl` is signed by `ca`, lists exactly `list`'s serials and lasts as long as the CA
/// (earlier versions wrote CRLs that ended after 30 days: those are rewritten).
pub(crate) fn crl_is_current(ca: &Ca, crl: &Path, list: &RevocationList) -> bool {
    let Ok(pem) = files::read_to_string(crl) else {
        return false;
    };
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    if block.label != "X509 CRL" {
        return false;
    }
    let Ok((_, parsed)) = x509_parser::parse_x509_crl(&block.contents) else {
        return false;
    };
    let Ok((_, ca_x509)) = X509Certificate::from_der(ca.cert_der()) else {
        return false;
    };
    if parsed.verify_signature(ca_x509.public_key()).is_err() {
        return false;
    }
    let lasts = parsed
        .next_update()
        .is_some_and(|next| next.to_datetime() >= ca_x509.validity().not_after.to_datetime());
    let listed: BTreeSet<String> = parsed
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    lasts && listed == list.serials()
}

/// Canonical spelling of a serial number from its DER content octets.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    // DER adds a 0x00 in front of a positive number whose top bit is set; it is not part of
    // the number, and leaving it in would make one serial have two spellings.
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts `5f3a`, `5F:3A`, `0x5f3a`, with or without leading zeros; returns the canonical form.
pub(crate) fn parse_serial(input: &str) -> Result<String, CertError> {
    let invalid = |reason: &str| CertError::invalid(format!("serial number {input:?}"), reason);
    let trimmed = input.trim();
    let body = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let mut digits: String = body.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() {
        return Err(invalid("empty"));
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("expected hex digits, optionally separated by ':'"));
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex_decode(&digits).ok_or_else(|| invalid("not hex"))?;
    let canonical = serial_hex(&bytes);
    if canonical.len() / 2 > MAX_SERIAL_BYTES {
        return Err(invalid("longer than 20 bytes"));
    }
    Ok(canonical)
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_have_one_spelling() {
        assert_eq!(parse_serial("5F:3a").unwrap(), "5f3a");
        assert_eq!(parse_serial("0x005f3a").unwrap(), "5f3a");
        assert_eq!(parse_serial(" 00:ff ").unwrap(), "ff");
        assert_eq!(parse_serial("abc").unwrap(), "0abc");
        assert_eq!(parse_serial("0").unwrap(), "00");
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x00]), "00");
        for bad in ["", "0x", "xyz", "5f-3a", &"ab".repeat(21)] {
            assert!(parse_serial(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ensure_extends_a_crl_that_ends_before_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::DevCertOptions {
            out_dir: dir.path().to_path_buf(),
            ..crate::DevCertOptions::default()
        };
        let paths = crate::generate_dev_certs(&opts).unwrap();
        let ca = crate::load_ca(&paths).unwrap();
        let list = RevocationList::default();
        assert!(crl_is_current(&ca, &paths.crl, &list));

        // What earlier versions wrote: valid for 30 days, after which Mosquitto refuses everyone.
        let now = OffsetDateTime::now_utc();
        let month = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let pem = month.signed_by(ca.issuer()).unwrap().pem().unwrap();
        std::fs::write(&paths.crl, pem).unwrap();
        assert!(!crl_is_current(&ca, &paths.crl, &list));

        let again = crate::ensure_dev_certs(&opts).unwrap();
        assert_eq!(
            again.written,
            [again.revocation_list.clone(), again.crl.clone()]
        );
        assert!(crl_is_current(&ca, &paths.crl, &list));
    }
}
