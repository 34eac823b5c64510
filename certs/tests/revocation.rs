//! Revocation as written to disk: the CRL parses, is signed by the set's CA, lists exactly the
//! revoked serial numbers with an increasing CRL number; revoking is idempotent; and the
//! `iot-certs revoke` command line says what it did.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use iot_certs::{
    ensure_dev_certs, generate_dev_certs, revocation_list, revoke, revoke_detailed, write_crl,
    CertError, CertRole, DevCertOptions, DevCertPaths, RevokeTarget,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

fn set(dir: &Path) -> DevCertPaths {
    generate_dev_certs(&opts(dir)).unwrap()
}

fn opts(dir: &Path) -> DevCertOptions {
    DevCertOptions {
        out_dir: dir.to_path_buf(),
        users: vec!["alice".into(), "bob".into()],
        devices: vec!["lamp-1".into()],
        ..DevCertOptions::default()
    }
}

fn der_of(path: &Path, label: &str) -> Vec<u8> {
    let pem = fs::read(path).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    assert_eq!(block.label, label, "{}", path.display());
    block.contents
}

/// Serial of a certificate file, as lower-case hex without leading zero bytes.
fn serial_of(cert: &Path) -> String {
    let der = der_of(cert, "CERTIFICATE");
    let (_, x509) = X509Certificate::from_der(&der).unwrap();
    hex(x509.raw_serial())
}

fn hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(0);
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

struct Crl {
    number: u64,
    serials: BTreeSet<String>,
    next_update: OffsetDateTime,
    /// The CA's notAfter.
    ca_expires: OffsetDateTime,
}

/// Parses `crl.pem`, checks it is signed by (and names) the CA, and returns what it says.
fn read_crl(paths: &DevCertPaths) -> Crl {
    let ca_der = der_of(&paths.ca_cert, "CERTIFICATE");
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let der = der_of(&paths.crl, "X509 CRL");
    let (rest, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    assert!(rest.is_empty());
    crl.verify_signature(ca.public_key())
        .expect("the CRL is signed by the CA");
    assert_eq!(crl.issuer(), ca.subject());
    let number = crl.crl_number().expect("a CRL number").to_u64_digits();
    Crl {
        number: number.first().copied().unwrap_or(0),
        serials: crl
            .iter_revoked_certificates()
            .map(|r| hex(r.raw_serial()))
            .collect(),
        next_update: crl.next_update().expect("nextUpdate").to_datetime(),
        ca_expires: ca.validity().not_after.to_datetime(),
    }
}

#[test]
fn a_new_set_has_an_empty_crl() {
    let dir = tempfile::tempdir().unwrap();
    let paths = set(dir.path());
    assert!(paths.written.contains(&paths.crl));
    assert!(paths.written.contains(&paths.revocation_list));
    let crl = read_crl(&paths);
    assert!(crl.serials.is_empty());
    assert_eq!(crl.number, 1);
    // A CRL past its nextUpdate makes Mosquitto refuse every client: it lasts as long as the CA.
    assert_eq!(crl.next_update, crl.ca_expires);
    assert!(revocation_list(&paths).unwrap().revoked.is_empty());
}

#[test]
fn crl_lists_exactly_the_revoked_serials() {
    let dir = tempfile::tempdir().unwrap();
    let paths = set(dir.path());
    let alice = serial_of(&paths.user("alice").0);
    let lamp = serial_of(&paths.device("lamp-1").0);

    let crl_path = revoke(&paths, RevokeTarget::User("alice".into())).unwrap();
    assert_eq!(crl_path, paths.crl);
    let after_one = read_crl(&paths);
    assert_eq!(after_one.serials, BTreeSet::from([alice.clone()]));

    let r = revoke_detailed(&paths, RevokeTarget::Device("lamp-1".into())).unwrap();
    assert!(!r.already_revoked);
    assert_eq!(r.cert.serial, lamp);
    assert_eq!(r.cert.name.as_deref(), Some("lamp-1"));
    assert_eq!(r.cert.role, CertRole::Device);
    assert_eq!(r.revoked_count, 2);
    let after_two = read_crl(&paths);
    assert_eq!(
        after_two.serials,
        BTreeSet::from([alice.clone(), lamp.clone()])
    );
    assert!(after_two.number > after_one.number);

    // Twice is the same as once.
    let again = revoke_detailed(&paths, RevokeTarget::User("alice".into())).unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.cert.serial, alice);
    let list = revocation_list(&paths).unwrap();
    assert_eq!(list.revoked.len(), 2, "{list:?}");
    assert_eq!(read_crl(&paths).serials, after_two.serials);

    // A refresh keeps the content and takes the next number.
    let before = read_crl(&paths).number;
    write_crl(&paths).unwrap();
    let refreshed = read_crl(&paths);
    assert_eq!(refreshed.serials, after_two.serials);
    assert_eq!(refreshed.number, before + 1);
    // Bob was never revoked.
    assert!(!refreshed.serials.contains(&serial_of(&paths.user("bob").0)));
}

#[test]
fn revoking_by_serial_finds_the_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let paths = set(dir.path());
    let bob = serial_of(&paths.user("bob").0);
    // The spelling OpenSSL prints: upper case with colons.
    let spelled = bob
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let r = revoke_detailed(&paths, RevokeTarget::Serial(spelled)).unwrap();
    assert_eq!(r.cert.serial, bob);
    assert_eq!(r.cert.name.as_deref(), Some("bob"));
    assert_eq!(r.cert.role, CertRole::User);

    // A serial with no file is still revoked (its file may be long gone).
    let r = revoke_detailed(&paths, RevokeTarget::Serial("0x1234".into())).unwrap();
    assert_eq!(r.cert.role, CertRole::Unknown);
    assert_eq!(
        read_crl(&paths).serials,
        BTreeSet::from([bob, "1234".to_owned()])
    );

    let ca = serial_of(&paths.ca_cert);
    assert!(revoke(&paths, RevokeTarget::Serial(ca)).is_err());
    assert!(revoke(&paths, RevokeTarget::Serial("xyz".into())).is_err());
}

#[test]
fn bad_targets_are_refused_without_touching_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let paths = set(dir.path());
    let crl_before = fs::read(&paths.crl).unwrap();

    match revoke(&paths, RevokeTarget::User("carol".into())) {
        Err(CertError::NotFound { path, .. }) => assert_eq!(path, paths.user("carol").0),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        revoke(&paths, RevokeTarget::Device("../x".into())),
        Err(CertError::InvalidName { .. })
    ));
    // A certificate from another CA cannot be revoked by this one.
    let other_dir = tempfile::tempdir().unwrap();
    let other = set(other_dir.path());
    fs::copy(other.user("alice").0, paths.user("mallory").0).unwrap();
    let err = revoke(&paths, RevokeTarget::User("mallory".into())).unwrap_err();
    assert!(err.to_string().contains("not issued by"), "{err}");
    assert_eq!(fs::read(&paths.crl).unwrap(), crl_before);

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        revoke(
            &DevCertPaths::new(empty.path()),
            RevokeTarget::User("alice".into())
        ),
        Err(CertError::MissingCa { .. })
    ));
}

#[test]
fn ensure_replaces_revoked_leaves_and_keeps_the_crl_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let paths = ensure_dev_certs(&opts(dir.path())).unwrap();
    let old = serial_of(&paths.user("alice").0);
    revoke(&paths, RevokeTarget::User("alice".into())).unwrap();
    let number = read_crl(&paths).number;

    let again = ensure_dev_certs(&opts(dir.path())).unwrap();
    assert!(again.written.contains(&again.user("alice").0));
    assert_ne!(serial_of(&again.user("alice").0), old, "a new certificate");
    // The CRL on disk was current: left alone, still revoking the old certificate.
    assert!(!again.written.contains(&again.crl));
    assert_eq!(read_crl(&again).number, number);
    assert_eq!(read_crl(&again).serials, BTreeSet::from([old.clone()]));

    // A missing CRL is rewritten from the list.
    fs::remove_file(&paths.crl).unwrap();
    let third = ensure_dev_certs(&opts(dir.path())).unwrap();
    assert!(third.written.contains(&third.crl));
    assert_eq!(read_crl(&third).serials, BTreeSet::from([old]));
}

#[test]
fn cli_revokes_and_explains_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let paths = set(dir.path());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_iot-certs"))
            .arg("--out")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["revoke", "--user", "alice"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Revoked the user certificate \"alice\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(&serial_of(&paths.user("alice").0)),
        "{stdout}"
    );
    assert!(stdout.contains("crl.pem"), "{stdout}");
    assert!(stdout.contains("SIGHUP"), "{stdout}");

    let out = run(&["revoke", "--user", "alice"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already revoked"));

    // Exactly one target.
    assert!(!run(&["revoke"]).status.success());
    assert!(!run(&["revoke", "--user", "bob", "--device", "lamp-1"])
        .status
        .success());
    let out = run(&["revoke", "--device", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no certificate for device"), "{stderr}");

    let out = run(&["crl"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 revoked certificate)"));
}
