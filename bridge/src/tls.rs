//! TLS set-up for both sides: the server config that requires client certificates, the client
//! config for the broker link, and the identity taken from a verified client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{IdentitySource, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("CA file {path}: {message}")]
    Ca { path: String, message: String },
    #[error("CRL file {path}: {message}")]
    Crl { path: String, message: String },
    #[error("TLS config: {0}")]
    Config(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    roots_of(path, load_certs(path)?)
}

fn roots_of(
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| TlsError::Ca {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::Pem {
            path: shown,
            message: "no CRL in file".into(),
        });
    }
    Ok(crls)
}

/// Checks that every CRL is signed by one of the client CAs and that every client CA has a CRL.
/// Client certificates are refused when no CRL speaks for their issuer, so a CRL from some other
/// CA would refuse every client at the handshake; it is better refused here, with a reason,
/// where a reload keeps the files that worked.
fn check_crls(
    cas: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<(), String> {
    use x509_parser::prelude::*;
    let cas = cas
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, ca)| ca))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a client CA does not parse: {e}"))?;
    let mut covered = vec![false; cas.len()];
    for (n, der) in crls.iter().enumerate() {
        let (_, crl) =
            parse_x509_crl(der).map_err(|e| format!("CRL #{} does not parse: {e}", n + 1))?;
        let signer = cas.iter().position(|ca| {
            ca.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(ca.public_key()).is_ok()
        });
        match signer {
            Some(i) => covered[i] = true,
            None => {
                return Err(format!(
                    "CRL #{} (issuer {}) is not signed by any client CA",
                    n + 1,
                    crl.issuer()
                ))
            }
        }
    }
    match covered.iter().position(|c| !c) {
        Some(i) => Err(format!(
            "no CRL from client CA {}: every client it signed would be refused",
            cas[i].subject()
        )),
        None => Ok(()),
    }
}

/// The listener's config: our certificate, and client certificates required to chain to
/// `config.client_ca` and not be revoked by `config.crl`.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let cas = load_certs(&config.client_ca)?;
    let crls = match &config.crl {
        Some(path) => {
            let crls = load_crls(path)?;
            check_crls(&cas, &crls).map_err(|message| TlsError::Crl {
                path: path.display().to_string(),
                message: format!("{message} (client CA file {})", config.client_ca.display()),
            })?;
            crls
        }
        None => Vec::new(),
    };
    let builder =
        WebPkiClientVerifier::builder_with_provider(roots_of(&config.client_ca, cas)?, provider())
            .with_crls(crls);
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let (cert, key) = (&config.cert, &config.key);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The broker link's config: verify the broker against `ca`, present our own certificate.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    Ok(Arc::new(config))
}

/// Who a verified client certificate names: by `source`, its subject CN (else its first SAN),
/// or its first DNS, email or URI SAN.
pub fn identity(cert: &CertificateDer<'_>, source: IdentitySource) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = || {
        let san = parsed.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some((*s).to_owned())
            }
            _ => None,
        })
    };
    match source {
        IdentitySource::San => san(),
        IdentitySource::Cn => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .or_else(san),
    }
    .filter(|id| !id.is_empty() && id.len() <= 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_certs::{generate_dev_certs, DevCertOptions, DevCertPaths};

    fn dev_set(dir: &Path) -> DevCertPaths {
        let opts = DevCertOptions {
            out_dir: dir.to_owned(),
            ..DevCertOptions::default()
        };
        generate_dev_certs(&opts).expect("dev certificates")
    }

    fn concat(dir: &Path, name: &str, files: &[&Path]) -> std::path::PathBuf {
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("readable"))
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writable");
        path
    }

    fn config(set: &DevCertPaths, client_ca: &Path, crl: &Path) -> TlsConfig {
        TlsConfig {
            cert: set.server_cert.clone(),
            key: set.server_key.clone(),
            client_ca: client_ca.to_owned(),
            crl: Some(crl.to_owned()),
            identity: IdentitySource::Cn,
        }
    }

    fn crl_error(config: &TlsConfig) -> String {
        match server_config(config) {
            Err(TlsError::Crl { message, .. }) => message,
            other => panic!("expected a CRL error, got {other:?}"),
        }
    }

    #[test]
    fn a_crl_must_come_from_a_client_ca_and_every_client_ca_needs_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dev_set(&dir.path().join("a"));
        // Another dev CA: the same subject name, another key.
        let b = dev_set(&dir.path().join("b"));
        assert!(server_config(&config(&a, &a.ca_cert, &a.crl)).is_ok());

        let foreign = crl_error(&config(&a, &a.ca_cert, &b.crl));
        assert!(foreign.contains("not signed by any client CA"), "{foreign}");

        let both_cas = concat(dir.path(), "cas.pem", &[&a.ca_cert, &b.ca_cert]);
        let missing = crl_error(&config(&a, &both_cas, &a.crl));
        assert!(missing.contains("no CRL from client CA"), "{missing}");

        let both_crls = concat(dir.path(), "crls.pem", &[&a.crl, &b.crl]);
        assert!(server_config(&config(&a, &both_cas, &both_crls)).is_ok());
    }
}
