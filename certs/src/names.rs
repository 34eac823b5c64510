//! Validation of the names that end up both in certificate subjects and in file names.

use crate::CertError;

/// Longest common name X.520 allows (`ub-common-name`), and the limit for ids and user names.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a device id against the MQTT contract: `[A-Za-z0-9_-]{1,64}`.
///
/// The id is also a topic level and a file name, so nothing outside that set is let through.
pub fn validate_device_id(id: &str) -> Result<(), CertError> {
    let fail = |reason| {
        Err(CertError::InvalidName {
            kind: "device id",
            name: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return fail("must not be empty");
    }
    if id.len() > MAX_NAME_LEN {
        return fail("must be at most 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return fail("may only contain letters, digits, '_' and '-'");
    }
    if id == crate::BRIDGE_CLIENT_COMMON_NAME {
        return fail("is the bridge's own identity at the broker");
    }
    Ok(())
}

/// Checks a user name: printable, 1..=64 characters, usable as a single file name.
///
/// User names are people's identities in the ACL, so spaces and non-ASCII letters are
/// fine; path separators and a leading dot are not, because the name becomes
/// `users/NAME.pem` and must never escape that folder or hide in it.
pub fn validate_user_name(name: &str) -> Result<(), CertError> {
    let fail = |reason| {
        Err(CertError::InvalidName {
            kind: "user name",
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.chars().count() > MAX_NAME_LEN {
        return fail("must be at most 64 characters");
    }
    if name.chars().any(char::is_control) {
        return fail("must only contain printable characters");
    }
    if name.contains(['/', '\\']) {
        return fail("must not contain '/' or '\\'");
    }
    if name.starts_with('.') {
        return fail("must not start with '.'");
    }
    if name.trim() != name {
        return fail("must not start or end with whitespace");
    }
    // The broker's ACL gives this name the right to command every device.
    if name == crate::BRIDGE_CLIENT_COMMON_NAME {
        return fail("is the bridge's own identity at the broker");
    }
    Ok(())
}

/// Checks a certificate common name: 1..=64 characters, no control characters.
pub(crate) fn validate_common_name(cn: &str) -> Result<(), CertError> {
    let fail = |reason| {
        Err(CertError::InvalidName {
            kind: "common name",
            name: cn.to_owned(),
            reason,
        })
    };
    if cn.is_empty() {
        return fail("must not be empty");
    }
    if cn.chars().count() > MAX_NAME_LEN {
        return fail("must be at most 64 characters");
    }
    if cn.chars().any(char::is_control) {
        return fail("must only contain printable characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        let long = "a".repeat(64);
        for ok in ["lamp-1", "A_b-9", "x", long.as_str()] {
            assert!(validate_device_id(ok).is_ok(), "{ok:?} should be accepted");
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "a/b",
            "a b",
            "lamp.1",
            "ümlaut",
            "+",
            "#",
            too_long.as_str(),
        ] {
            assert!(
                validate_device_id(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn user_names() {
        let long = "é".repeat(64);
        for ok in [
            "alice",
            "Alice Smith",
            "jürgen",
            "bob@example.org",
            long.as_str(),
        ] {
            assert!(validate_user_name(ok).is_ok(), "{ok:?} should be accepted");
        }
        let too_long = "é".repeat(65);
        for bad in [
            "",
            "a/b",
            "a\\b",
            "..",
            ".hidden",
            "tab\there",
            "new\nline",
            " padded",
            too_long.as_str(),
        ] {
            assert!(
                validate_user_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn error_names_the_problem() {
        let err = validate_device_id("a/b").unwrap_err().to_string();
        assert!(err.contains("device id") && err.contains("a/b"), "{err}");
    }
}

#[cfg(test)]
mod reserved {
    use super::*;

    #[test]
    fn the_bridge_identity_is_reserved() {
        assert!(validate_device_id("iot-bridge").is_err());
        assert!(validate_user_name("iot-bridge").is_err());
        assert!(validate_device_id("iot-bridge-2").is_ok());
    }
}
