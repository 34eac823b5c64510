//! The certificate authority: generate or reload a CA, and issue server and client certificates.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::names::validate_common_name;
use crate::CertError;

/// How long the CA is valid. Long, because re-importing a CA on every phone is a chore.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Apple platforms reject TLS server certificates valid for more than 825 days, even from a
/// user-installed CA; clients get the same lifetime so one rule covers every leaf.
const LEAF_VALIDITY: Duration = Duration::days(824);
/// Backdate `not_before` so a phone or VM whose clock runs a little behind still accepts a
/// freshly issued certificate.
const BACKDATE: Duration = Duration::hours(1);

/// A CA certificate and its private key, able to sign leaf certificates.
pub struct Ca {
    // Boxed: the issuer is large and `Ca` gets moved around and stored in enums.
    issuer: Box<Issuer<'static, KeyPair>>,
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// A freshly issued (or reloaded) leaf certificate and its private key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new self-signed CA: ECDSA P-256, 10 years, CA:true, keyCertSign + cRLSign.
    pub fn generate(common_name: &str) -> Result<Ca, CertError> {
        validate_common_name(common_name)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_distinguished_name(common_name);
        // Path length 0: this CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            issuer: Box::new(Issuer::new(params, key)),
        })
    }

    /// Reloads a CA written earlier, so more certificates can be issued under it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let cert_der = pem_to_der(cert_pem, "CA certificate")?;
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| CertError::invalid("CA private key", e))?;
        {
            let (_, cert) = X509Certificate::from_der(&cert_der)
                .map_err(|e| CertError::invalid("CA certificate", e))?;
            if !cert.is_ca() {
                return Err(CertError::invalid(
                    "CA certificate",
                    "it is not a CA (basicConstraints CA:true is missing)",
                ));
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(CertError::invalid(
                    "CA private key",
                    "it does not belong to the CA certificate",
                ));
            }
        }
        let issuer = Box::new(
            Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
                .map_err(|e| CertError::invalid("CA certificate", e))?,
        );
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The signer, for the CRL (`revocation`), which needs the same name and key as leaves.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Issues a TLS server certificate (EKU serverAuth). Each SAN entry that parses as an IP
    /// address becomes an IP SAN, anything else a DNS SAN.
    pub fn issue_server(&self, common_name: &str, sans: &[String]) -> Result<Issued, CertError> {
        if sans.is_empty() {
            return Err(CertError::InvalidSan {
                san: String::new(),
                reason: "a server certificate needs at least one subject alternative name".into(),
            });
        }
        let mut params = leaf_params(common_name)?;
        for san in sans {
            let san = parse_san(san)?;
            // Duplicates are harmless to TLS but look like a mistake in the certificate.
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues a TLS client certificate (EKU clientAuth) whose CN is the identity: a user name
    /// or a device id.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued, CertError> {
        let mut params = leaf_params(common_name)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

impl Issued {
    /// Reloads a certificate and its PKCS#8 key from PEM text, checking that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Issued, CertError> {
        let cert_der = pem_to_der(cert_pem, "certificate")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::invalid("private key", e))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| CertError::invalid("certificate", e))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::invalid(
                "private key",
                "it does not belong to the certificate",
            ));
        }
        Ok(Issued {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            key_der: key.serialize_der(),
        })
    }
}

/// The CA's subject names the project, so people recognise it in their trust store.
fn ca_distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "iot-bridge dev");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Leaves carry only a CN, on purpose: rumqttd (the demo broker) takes a client
/// certificate's O as a tenant id, refuses the connection unless it is alphanumeric, and
/// otherwise rewrites the client id to `O.client_id`.
fn leaf_distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn leaf_params(common_name: &str) -> Result<CertificateParams, CertError> {
    validate_common_name(common_name)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_distinguished_name(common_name);
    // An explicit CA:false, so no verifier can mistake a leaf for a CA.
    params.is_ca = IsCa::ExplicitNoCa;
    // ECDHE suites only need signatures from the leaf key.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // macOS and Windows build chains faster (and some only succeed) with an AKI present.
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    Ok(params)
}

pub(crate) fn parse_san(san: &str) -> Result<SanType, CertError> {
    let trimmed = san.trim();
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| CertError::InvalidSan {
        san: san.to_owned(),
        reason: reason.to_owned(),
    };
    if trimmed.is_empty() {
        return Err(invalid("empty name"));
    }
    if trimmed.len() > 253 {
        return Err(invalid("a DNS name is at most 253 characters"));
    }
    // Browsers accept a single leading wildcard label and otherwise LDH labels only;
    // checking here turns a confusing handshake failure later into a clear error now.
    let body = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    let labels_ok = body.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(invalid(
            "not an IP address and not a DNS name (letters, digits, '-', dot-separated labels)",
        ));
    }
    let name = trimmed
        .to_ascii_lowercase()
        .try_into()
        .map_err(|e: rcgen::Error| invalid(&e.to_string()))?;
    Ok(SanType::DnsName(name))
}

/// A comparable spelling of a SAN: lower-case DNS name or canonical IP address.
pub(crate) fn san_key(san: &SanType) -> Option<String> {
    match san {
        SanType::DnsName(name) => Some(name.as_str().to_ascii_lowercase()),
        SanType::IpAddress(ip) => Some(ip.to_string()),
        _ => None,
    }
}

/// Decodes the first PEM block of `pem` into DER.
pub(crate) fn pem_to_der(pem: &str, what: &str) -> Result<Vec<u8>, CertError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CertError::invalid(what, format!("not PEM ({e})")))?;
    if block.label != "CERTIFICATE" {
        return Err(CertError::invalid(
            what,
            format!("expected a CERTIFICATE PEM block, found {}", block.label),
        ));
    }
    Ok(block.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_classified() {
        assert_eq!(
            parse_san("127.0.0.1").unwrap(),
            SanType::IpAddress("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_san("::1").unwrap(),
            SanType::IpAddress("::1".parse().unwrap())
        );
        assert!(
            matches!(parse_san("Mosquitto").unwrap(), SanType::DnsName(n) if n.as_str() == "mosquitto")
        );
        assert!(matches!(parse_san("*.lan").unwrap(), SanType::DnsName(_)));
        for bad in ["", "a b", "-x.lan", "a..b", "ümlaut.de", "a/b", "host:8443"] {
            assert!(parse_san(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = Ca::generate("test CA").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        // The reloaded CA signs certificates that carry the original CA's key id.
        let leaf = again.issue_client("dev-1").unwrap();
        let (_, ca_x509) = X509Certificate::from_der(ca.cert_der()).unwrap();
        let (_, leaf_x509) = X509Certificate::from_der(&leaf.cert_der).unwrap();
        leaf_x509
            .verify_signature(Some(ca_x509.public_key()))
            .unwrap();
    }

    #[test]
    fn mismatched_ca_key_is_refused() {
        let a = Ca::generate("a").unwrap();
        let b = Ca::generate("b").unwrap();
        let err = Ca::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn leaf_is_not_a_ca() {
        let ca = Ca::generate("a").unwrap();
        let leaf = ca.issue_client("alice").unwrap();
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[test]
    fn leaf_subject_is_only_the_common_name() {
        let ca = Ca::generate("a").unwrap();
        let leaf = ca.issue_client("lamp-1").unwrap();
        let (_, x509) = X509Certificate::from_der(&leaf.cert_der).unwrap();
        assert_eq!(x509.subject().to_string(), "CN=lamp-1");
        assert_eq!(x509.issuer().to_string(), "O=iot-bridge dev, CN=a");
    }

    #[test]
    fn server_needs_a_san() {
        let ca = Ca::generate("a").unwrap();
        assert!(matches!(
            ca.issue_server("srv", &[]),
            Err(CertError::InvalidSan { .. })
        ));
    }

    #[test]
    fn issued_reloads_and_checks_key() {
        let ca = Ca::generate("a").unwrap();
        let one = ca.issue_client("one").unwrap();
        let two = ca.issue_client("two").unwrap();
        let back = Issued::from_pem(&one.cert_pem, &one.key_pem).unwrap();
        assert_eq!(back.cert_der, one.cert_der);
        assert_eq!(back.key_der, one.key_der);
        assert!(Issued::from_pem(&one.cert_pem, &two.key_pem).is_err());
    }
}
