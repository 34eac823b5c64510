//! The error type shared by every part of the certificate library.

use std::path::PathBuf;

/// Everything that can go wrong while making, loading, bundling or writing certificates.
///
/// Every variant says its cause in its own message and none reports it as a `source`: a report
/// of the error chain (`{:#}`, as `iot-certs` prints) would otherwise say each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the key (bad key file, unsupported algorithm, ...).
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),

    /// A PEM or DER input could not be understood.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    /// A user name or device id that cannot be used as a certificate name and file name.
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },

    /// A subject alternative name that is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: {reason}")]
    InvalidSan { san: String, reason: String },

    /// Writing the PKCS#12 bundle failed, or its password is unusable.
    #[error("PKCS#12 bundle: {0}")]
    Pkcs12(String),

    /// A file that would be overwritten already exists and overwriting was not asked for.
    #[error("refusing to overwrite existing file {}", .0.display())]
    Exists(PathBuf),

    /// The CA files needed to issue more certificates are not there (or only half of them is).
    #[error("no usable CA in {}: {reason}", dir.display())]
    MissingCa { dir: PathBuf, reason: String },

    /// A user and a device would share a name. Their certificates carry only that name, so the
    /// broker would take the user for the device and the bridge's ACL the device for the user.
    #[error("{name:?} cannot be both a user and a device name ({})", other.display())]
    NameTaken { name: String, other: PathBuf },

    /// A certificate that was asked for by name is not in the set.
    #[error("no certificate for {what}: {} does not exist", path.display())]
    NotFound { what: String, path: PathBuf },

    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> CertError {
        CertError::Generate(e)
    }
}

impl CertError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl ToString) -> Self {
        CertError::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        CertError::Io {
            path: path.into(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_report_says_each_cause_once() {
        let io = CertError::io("ca.pem", std::io::Error::other("gone"));
        assert_eq!(format!("{:#}", anyhow::Error::from(io)), "ca.pem: gone");
        let rcgen = anyhow::Error::from(CertError::from(rcgen::Error::CouldNotParseKeyPair));
        assert_eq!(
            format!("{rcgen:#}"),
            "certificate generation failed: Could not parse key pair"
        );
    }
}
