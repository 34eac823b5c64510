//! Per-test certificates: a fresh dev CA and full certificate set in a temporary folder, client
//! certificates issued on demand, and certificates from a CA nobody trusts.

use std::path::Path;

use iot_certs::{Ca, DevCertOptions, DevCertPaths};
use tempfile::TempDir;

use crate::E2eError;

/// A client certificate and its key, both PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCert {
    // Keys stay out of test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").finish_non_exhaustive()
    }
}

/// A complete dev certificate set (the certs tool's layout) under a fresh CA.
pub struct Pki {
    paths: DevCertPaths,
    ca: Ca,
    ca_pem: String,
    ca_key_pem: String,
    /// Deleted when the `Pki` is dropped.
    dir: TempDir,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Makes a new CA and every certificate the bridge and the broker need.
    ///
    /// The folder is world-readable and -traversable: Mosquitto started as root switches to the
    /// `mosquitto` user before it reads its certificates (`broker.key` is already 0644 in the
    /// dev set for the same reason; the other keys stay 0600, only this process reads them).
    pub fn new() -> Result<Pki, E2eError> {
        let dir = tempfile::Builder::new()
            .prefix("e2e-pki-")
            .tempdir()
            .map_err(E2eError::io("creating the certificate folder"))?;
        make_traversable(dir.path())?;
        let opts = DevCertOptions {
            out_dir: dir.path().to_owned(),
            ..DevCertOptions::default()
        };
        let paths = iot_certs::generate_dev_certs(&opts)?;
        for sub in ["users", "devices"] {
            make_traversable(&dir.path().join(sub))?;
        }
        let ca = iot_certs::load_ca(&paths)?;
        Ok(Pki {
            ca_pem: ca.cert_pem().to_owned(),
            ca_key_pem: ca.key_pem().to_owned(),
            ca,
            paths,
            dir,
        })
    }

    /// The folder, laid out like `dev-certs/` (what `Config::for_dev_certs` expects).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn paths(&self) -> &DevCertPaths {
        &self.paths
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// A client certificate with this CN (the identity the bridge and the broker see), signed by
    /// this set's CA.
    pub fn client(&self, common_name: &str) -> Result<ClientCert, E2eError> {
        let issued = self.ca.issue_client(common_name)?;
        Ok(ClientCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }

    /// A client certificate with this CN from an impostor CA: a fresh key under exactly the same
    /// name as this set's CA, so a verifier finds the trusted CA by name and must reject the
    /// signature.
    pub fn foreign_client(&self, common_name: &str) -> Result<ClientCert, E2eError> {
        let impostor = Ca::generate(&self.ca_common_name()?)?;
        let issued = impostor.issue_client(common_name)?;
        Ok(ClientCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }

    /// The CN of this set's CA (it carries the creation time, so it differs per set).
    fn ca_common_name(&self) -> Result<String, E2eError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let bad =
            |e: &dyn std::fmt::Display| E2eError::Tls(format!("reading the CA certificate: {e}"));
        let (_, cert) = X509Certificate::from_der(self.ca.cert_der()).map_err(|e| bad(&e))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| bad(&"no CN"))?;
        Ok(cn.to_owned())
    }
}

/// Opens a folder to other local users (read and traverse), for the broker's unprivileged user.
pub(crate) fn make_traversable(dir: &Path) -> Result<(), E2eError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(E2eError::io(format!("chmod 755 {}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn issuer_and_subject(pem: &str) -> (String, String) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        (cert.issuer().to_string(), cert.subject().to_string())
    }

    #[test]
    fn impostor_ca_has_the_real_name_but_not_the_key() {
        let pki = Pki::new().unwrap();
        let real = pki.client("alice").unwrap();
        let fake = pki.foreign_client("alice").unwrap();
        let (real_issuer, real_subject) = issuer_and_subject(&real.cert_pem);
        let (fake_issuer, fake_subject) = issuer_and_subject(&fake.cert_pem);
        assert_eq!(real_issuer, fake_issuer);
        assert_eq!(real_subject, fake_subject);
        assert_ne!(real.cert_pem, fake.cert_pem);
        // The set's own files are in the certs tool's layout, and the folder is traversable.
        assert!(pki.paths().broker_key.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pki.dir()).unwrap().permissions().mode();
            assert_eq!(mode & 0o755, 0o755);
        }
    }
}
