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

    /// A client certificate with this CN from a different, freshly made CA: well-formed, but
    /// chaining to nothing the bridge or the broker trusts.
    pub fn foreign_client(common_name: &str) -> Result<ClientCert, E2eError> {
        // Same CA name as the real one, so only the key and signature differ.
        let other = Ca::generate(iot_certs::CA_COMMON_NAME)?;
        let issued = other.issue_client(common_name)?;
        Ok(ClientCert {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
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
