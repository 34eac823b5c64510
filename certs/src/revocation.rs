//! Certificate revocation: the list of revoked serial numbers kept next to the CA
//! (`revoked.json`) and the CRL signed from it (`crl.pem`), which the bridge loads to refuse
//! revoked clients.
//!
//! The JSON list is the source of truth; `crl.pem` is derived from it (by `crl`) and can be
//! rewritten at any time. Every rewrite takes the next CRL number, so a verifier holding two
//! CRLs can tell which one is newer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::crl::{crl_is_current, parse_serial, serial_hex, sign_crl};
use crate::files::{self, Access};
use crate::names::{validate_device_id, validate_user_name};
use crate::{Ca, CertError, DevCertPaths};

/// Which certificate to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// The certificate in `users/NAME.pem`.
    User(String),
    /// The certificate in `devices/ID.pem`.
    Device(String),
    /// A serial number in hex (`5f3a...`, `5F:3A:...` or `0x5f3a...`), e.g. of a certificate
    /// whose file is gone.
    Serial(String),
}

/// What a revoked certificate was for, as far as the set's files tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertRole {
    User,
    Device,
    Server,
    Broker,
    BridgeClient,
    /// Revoked by serial number with no matching file in the set.
    Unknown,
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertRole::User => "user",
            CertRole::Device => "device",
            CertRole::Server => "server",
            CertRole::Broker => "broker",
            CertRole::BridgeClient => "bridge client",
            CertRole::Unknown => "unknown",
        })
    }
}

/// One entry of `revoked.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedCert {
    /// Lower-case hex of the serial number, no separators, no leading zero bytes.
    pub serial: String,
    /// The certificate's common name, when its file was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: CertRole,
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
}

/// The content of `revoked.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// Number of the newest CRL written from this list.
    pub crl_number: u64,
    pub revoked: Vec<RevokedCert>,
}

impl RevocationList {
    /// The revoked serial numbers (canonical hex).
    pub fn serials(&self) -> BTreeSet<String> {
        self.revoked.iter().map(|r| r.serial.clone()).collect()
    }
}

/// The outcome of [`revoke_detailed`].
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The list entry: new, or the existing one when the certificate was already revoked.
    pub cert: RevokedCert,
    /// True when the certificate was revoked before this call (nothing was added).
    pub already_revoked: bool,
    /// The rewritten CRL.
    pub crl: PathBuf,
    /// How many certificates the CRL lists.
    pub revoked_count: usize,
}

/// Revokes a certificate of the set and rewrites `crl.pem`; returns the CRL's path.
/// Revoking the same certificate again changes nothing but the CRL's number and dates.
pub fn revoke(paths: &DevCertPaths, target: RevokeTarget) -> Result<PathBuf, CertError> {
    revoke_detailed(paths, target).map(|r| r.crl)
}

/// [`revoke`], also telling what was revoked.
pub fn revoke_detailed(
    paths: &DevCertPaths,
    target: RevokeTarget,
) -> Result<Revocation, CertError> {
    let ca = existing_ca(paths)?;
    let (_, ca_x509) = X509Certificate::from_der(ca.cert_der())
        .map_err(|e| CertError::invalid("CA certificate", e))?;
    let found = match target {
        RevokeTarget::User(name) => {
            validate_user_name(&name)?;
            let path = paths.user(&name).0;
            require_file(&path, format!("user {name:?}"))?;
            inspect(&ca_x509, &path, CertRole::User)?
        }
        RevokeTarget::Device(id) => {
            validate_device_id(&id)?;
            let path = paths.device(&id).0;
            require_file(&path, format!("device {id:?}"))?;
            inspect(&ca_x509, &path, CertRole::Device)?
        }
        RevokeTarget::Serial(hex) => {
            let serial = parse_serial(&hex)?;
            if serial == serial_hex(ca_x509.raw_serial()) {
                return Err(CertError::invalid(
                    "serial number",
                    "that is the CA itself; make a new set with `iot-certs --force init` instead",
                ));
            }
            find_by_serial(paths, &ca_x509, &serial).unwrap_or(RevokedCert {
                serial,
                name: None,
                role: CertRole::Unknown,
                revoked_at: OffsetDateTime::UNIX_EPOCH,
            })
        }
    };

    let mut list = read_list(paths)?;
    let existing = list.revoked.iter().find(|r| r.serial == found.serial);
    let (cert, already_revoked) = match existing {
        Some(entry) => (entry.clone(), true),
        None => {
            let now = OffsetDateTime::now_utc();
            let entry = RevokedCert {
                // Whole seconds: that is all a CRL holds, and the JSON stays readable.
                revoked_at: now.replace_nanosecond(0).unwrap_or(now),
                ..found
            };
            list.revoked.push(entry.clone());
            (entry, false)
        }
    };
    let crl = write_list_and_crl(&ca, paths, &mut list)?;
    Ok(Revocation {
        cert,
        already_revoked,
        crl,
        revoked_count: list.revoked.len(),
    })
}

/// Rewrites `crl.pem` from `revoked.json` (an empty CRL when nothing is revoked) with the next
/// CRL number, valid until the CA expires; returns the CRL's path.
pub fn write_crl(paths: &DevCertPaths) -> Result<PathBuf, CertError> {
    let ca = existing_ca(paths)?;
    let mut list = read_list(paths)?;
    write_list_and_crl(&ca, paths, &mut list)
}

/// Reads `revoked.json`; a missing file is an empty list.
pub fn revocation_list(paths: &DevCertPaths) -> Result<RevocationList, CertError> {
    read_list(paths)
}

/// A new CA starts with an empty list: revocations of an older CA's certificates mean nothing.
pub(crate) fn write_fresh(ca: &Ca, paths: &mut DevCertPaths) -> Result<(), CertError> {
    let mut list = RevocationList::default();
    write_list_and_crl(ca, paths, &mut list)?;
    paths
        .written
        .extend([paths.revocation_list.clone(), paths.crl.clone()]);
    Ok(())
}

/// Rewrites the CRL unless the one on disk is signed by `ca`, lists exactly `list`'s serials
/// and stays valid as long as the CA.
pub(crate) fn ensure_crl(
    ca: &Ca,
    paths: &mut DevCertPaths,
    mut list: RevocationList,
) -> Result<(), CertError> {
    if crl_is_current(ca, &paths.crl, &list) {
        return Ok(());
    }
    write_list_and_crl(ca, paths, &mut list)?;
    paths
        .written
        .extend([paths.revocation_list.clone(), paths.crl.clone()]);
    Ok(())
}

pub(crate) fn read_list(paths: &DevCertPaths) -> Result<RevocationList, CertError> {
    let path = &paths.revocation_list;
    if !path.exists() {
        return Ok(RevocationList::default());
    }
    let text = files::read_to_string(path)?;
    let list: RevocationList = serde_json::from_str(&text)
        .map_err(|e| CertError::invalid(path.display().to_string(), e))?;
    for entry in &list.revoked {
        // Hand edits happen; a bad serial must fail here, not produce a CRL missing it.
        if parse_serial(&entry.serial)? != entry.serial {
            return Err(CertError::invalid(
                path.display().to_string(),
                format!(
                    "serial {:?} is not lower-case hex without separators and leading zeros",
                    entry.serial
                ),
            ));
        }
    }
    Ok(list)
}

fn existing_ca(paths: &DevCertPaths) -> Result<Ca, CertError> {
    for (file, name) in [(&paths.ca_cert, "ca.pem"), (&paths.ca_key, "ca.key")] {
        if !file.exists() {
            return Err(CertError::MissingCa {
                dir: paths.dir.clone(),
                reason: format!("{name} not found"),
            });
        }
    }
    crate::load_ca(paths)
}

fn require_file(path: &Path, what: String) -> Result<(), CertError> {
    if path.exists() {
        Ok(())
    } else {
        Err(CertError::NotFound {
            what,
            path: path.to_owned(),
        })
    }
}

/// Reads a certificate of the set and checks that this CA issued it (revoking anything else
/// in this CA's CRL would do nothing).
fn inspect(
    ca: &X509Certificate<'_>,
    path: &Path,
    role: CertRole,
) -> Result<RevokedCert, CertError> {
    let shown = path.display().to_string();
    let pem = files::read_to_string(path)?;
    let der = crate::ca::pem_to_der(&pem, &shown)?;
    let (_, x509) = X509Certificate::from_der(&der).map_err(|e| CertError::invalid(&shown, e))?;
    if x509.verify_signature(Some(ca.public_key())).is_err() {
        return Err(CertError::invalid(
            &shown,
            "it was not issued by this set's CA, so this CA cannot revoke it",
        ));
    }
    let name = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(RevokedCert {
        serial: serial_hex(x509.raw_serial()),
        name,
        role,
        revoked_at: OffsetDateTime::UNIX_EPOCH,
    })
}

/// Looks through the set's certificate files for one with this serial.
fn find_by_serial(
    paths: &DevCertPaths,
    ca: &X509Certificate<'_>,
    serial: &str,
) -> Option<RevokedCert> {
    let mut candidates = vec![
        (paths.server_cert.clone(), CertRole::Server),
        (paths.broker_cert.clone(), CertRole::Broker),
        (paths.bridge_client_cert.clone(), CertRole::BridgeClient),
    ];
    for (folder, role) in [("users", CertRole::User), ("devices", CertRole::Device)] {
        let Ok(entries) = std::fs::read_dir(paths.dir.join(folder)) else {
            continue;
        };
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|ext| ext == "pem"))
                .map(|p| (p, role)),
        );
    }
    // Unreadable or foreign files are simply not the one we look for.
    candidates
        .iter()
        .filter_map(|(path, role)| inspect(ca, path, *role).ok())
        .find(|found| found.serial == serial)
}

/// Takes the next CRL number, saves the list, then signs and writes the CRL. The list goes
/// first so a crash in between can only skip a number, never reuse one.
fn write_list_and_crl(
    ca: &Ca,
    paths: &DevCertPaths,
    list: &mut RevocationList,
) -> Result<PathBuf, CertError> {
    list.crl_number += 1;
    let pem = sign_crl(ca, list)?;
    let json =
        serde_json::to_string_pretty(list).map_err(|e| CertError::invalid("revocation list", e))?;
    files::write(
        &paths.revocation_list,
        format!("{json}\n").as_bytes(),
        Access::Public,
    )?;
    files::write(&paths.crl, pem.as_bytes(), Access::Public)?;
    Ok(paths.crl.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trips_through_json() {
        let list = RevocationList {
            crl_number: 3,
            revoked: vec![RevokedCert {
                serial: "5f3a".into(),
                name: Some("alice".into()),
                role: CertRole::User,
                revoked_at: OffsetDateTime::from_unix_timestamp(1_763_750_000).unwrap(),
            }],
        };
        let json = serde_json::to_string(&list).unwrap();
        assert!(json.contains(r#""revoked_at":"2025-11-21T"#), "{json}");
        assert!(json.contains(r#""role":"user""#), "{json}");
        assert_eq!(serde_json::from_str::<RevocationList>(&json).unwrap(), list);
    }
}
