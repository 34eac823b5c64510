//! Writing certificate files with the right permissions, atomically.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::CertError;

/// Who may read a file once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Certificates: anyone (0644).
    Public,
    /// Private keys and PKCS#12 bundles: the owner only (0600).
    OwnerOnly,
    /// A private key that another local account must read (0644). Only for the broker key,
    /// see `dev_set` for why.
    SharedKey,
}

impl Access {
    #[cfg(unix)]
    fn mode(self) -> u32 {
        match self {
            Access::Public | Access::SharedKey => 0o644,
            Access::OwnerOnly => 0o600,
        }
    }
}

/// Writes `data` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a crash) never sees half a key, and the final mode never depends on the umask
/// or on the permissions of a file being replaced.
pub(crate) fn write(path: &Path, data: &[u8], access: Access) -> Result<(), CertError> {
    let file_name = path.file_name().ok_or_else(|| {
        CertError::invalid(
            "output path",
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);

    let result = write_tmp(&tmp, data, access).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        // Best effort: a leftover temporary key file must not linger.
        let _ = fs::remove_file(&tmp);
        return Err(CertError::io(path, e));
    }
    Ok(())
}

fn write_tmp(tmp: &Path, data: &[u8], access: Access) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Created with the final mode so the key is never readable by others, even briefly.
        options.mode(access.mode());
    }
    let mut file = options.open(tmp)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The umask may have removed bits a shared key needs; a reused temp file may have more.
        file.set_permissions(fs::Permissions::from_mode(access.mode()))?;
    }
    #[cfg(not(unix))]
    let _ = access;
    file.write_all(data)?;
    file.sync_all()
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|e| CertError::io(path, e))
}

pub(crate) fn create_dir(path: &Path) -> Result<(), CertError> {
    fs::create_dir_all(path).map_err(|e| CertError::io(path, e))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_are_exact_and_replace_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("x.key");
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o666)).unwrap();
        write(&key, b"new", Access::OwnerOnly).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(fs::read(&key).unwrap(), b"new");

        let shared = dir.path().join("broker.key");
        write(&shared, b"k", Access::SharedKey).unwrap();
        assert_eq!(mode(&shared), 0o644);

        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
