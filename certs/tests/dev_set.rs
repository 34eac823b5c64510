//! End-to-end checks of the dev certificate set as written to disk: chains, names, usages,
//! overwrite protection, reuse, and the PKCS#12 bundles.

use std::fs;
use std::path::Path;

use iot_certs::{
    add_clients, ensure_dev_certs, generate_dev_certs, CertError, DevCertOptions, DevCertPaths,
};
use p12_keystore::{KeyStore, Pkcs12ImportPolicy};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn opts(dir: &Path) -> DevCertOptions {
    DevCertOptions {
        out_dir: dir.to_path_buf(),
        extra_sans: vec!["192.168.1.20".into(), "iot.lan".into()],
        users: vec!["alice".into(), "Bob Smith".into()],
        devices: vec!["lamp-1".into()],
        ..DevCertOptions::default()
    }
}

fn der_of(path: &Path) -> Vec<u8> {
    let pem = fs::read(path).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    assert_eq!(block.label, "CERTIFICATE");
    block.contents
}

fn cn(x509: &X509Certificate<'_>) -> String {
    x509.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn sans(x509: &X509Certificate<'_>) -> Vec<String> {
    x509.subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(d) => d.to_string(),
                    GeneralName::IPAddress(b) if b.len() == 4 => {
                        std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                    }
                    GeneralName::IPAddress(b) => {
                        std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
                    }
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

enum Usage {
    Server,
    Client,
}

/// Verifies `cert` is signed by the CA, names the CA as issuer, and has the expected CN,
/// usage and SANs; returns nothing, panics with a message on the first mismatch.
fn check_leaf(ca_der: &[u8], cert: &Path, want_cn: &str, usage: Usage, want_sans: &[&str]) {
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    let der = der_of(cert);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .unwrap_or_else(|e| panic!("{} not signed by the CA: {e}", cert.display()));
    assert_eq!(leaf.issuer(), ca.subject(), "{}", cert.display());
    assert_eq!(cn(&leaf), want_cn);
    assert!(!leaf.is_ca(), "{} must not be a CA", cert.display());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    match usage {
        Usage::Server => assert!(eku.server_auth && !eku.client_auth),
        Usage::Client => assert!(eku.client_auth && !eku.server_auth),
    }
    assert_eq!(sans(&leaf), want_sans, "{}", cert.display());
    let days = (leaf.validity().not_after.to_datetime() - leaf.validity().not_before.to_datetime())
        .whole_days();
    assert!(
        days <= 825,
        "Apple rejects server certificates valid for {days} days"
    );
}

#[test]
fn every_certificate_chains_to_the_ca_with_the_right_names() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_certs(&opts(dir.path())).unwrap();

    let ca_der = der_of(&paths.ca_cert);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert!(cn(&ca).starts_with("iot-bridge dev CA 2"), "{}", cn(&ca));
    ca.verify_signature(None).unwrap();
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    let local = ["localhost", "127.0.0.1", "::1"];
    let server_sans: Vec<&str> = local
        .iter()
        .copied()
        .chain(["192.168.1.20", "iot.lan"])
        .collect();
    check_leaf(
        &ca_der,
        &paths.server_cert,
        "iot-bridge server",
        Usage::Server,
        &server_sans,
    );
    let broker_sans: Vec<&str> = local
        .iter()
        .copied()
        .chain(["mosquitto", "192.168.1.20", "iot.lan"])
        .collect();
    check_leaf(
        &ca_der,
        &paths.broker_cert,
        "iot-bridge broker",
        Usage::Server,
        &broker_sans,
    );
    check_leaf(
        &ca_der,
        &paths.bridge_client_cert,
        "iot-bridge",
        Usage::Client,
        &[],
    );
    for user in ["alice", "Bob Smith"] {
        check_leaf(&ca_der, &paths.user(user).0, user, Usage::Client, &[]);
    }
    check_leaf(
        &ca_der,
        &paths.device("lamp-1").0,
        "lamp-1",
        Usage::Client,
        &[],
    );

    // CA, three server-side leaves, two users with bundles, a device, CRL and its list.
    let expected_files = 2 + 3 * 2 + 2 * 3 + 2 + 2;
    assert_eq!(paths.written.len(), expected_files, "{:?}", paths.written);
    assert!(paths.written.iter().all(|p| p.exists()));
}

#[cfg(unix)]
#[test]
fn private_files_are_private_except_the_broker_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_certs(&opts(dir.path())).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for private in [
        &paths.ca_key,
        &paths.server_key,
        &paths.bridge_client_key,
        &paths.user("alice").1,
        &paths.user("alice").2,
        &paths.device("lamp-1").1,
    ] {
        assert_eq!(mode(private), 0o600, "{}", private.display());
    }
    assert_eq!(mode(&paths.broker_key), 0o644);
    assert_eq!(mode(&paths.ca_cert), 0o644);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_dev_certs(&opts(dir.path())).unwrap();
    let ca_before = fs::read(&first.ca_cert).unwrap();

    match generate_dev_certs(&opts(dir.path())) {
        Err(CertError::Exists(path)) => assert_eq!(path, first.ca_cert),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(
        fs::read(&first.ca_cert).unwrap(),
        ca_before,
        "CA was touched"
    );

    // A lone leftover leaf file is enough to refuse, and the error names it.
    let other = tempfile::tempdir().unwrap();
    let lone = DevCertPaths::new(other.path()).device("lamp-1").1;
    fs::create_dir_all(lone.parent().unwrap()).unwrap();
    fs::write(&lone, "x").unwrap();
    match generate_dev_certs(&opts(other.path())) {
        Err(CertError::Exists(path)) => assert_eq!(path, lone),
        other => panic!("expected Exists, got {other:?}"),
    }
    assert!(
        !DevCertPaths::new(other.path()).ca_cert.exists(),
        "nothing may be written"
    );

    let forced = DevCertOptions {
        force: true,
        ..opts(dir.path())
    };
    generate_dev_certs(&forced).unwrap();
    assert_ne!(
        fs::read(&first.ca_cert).unwrap(),
        ca_before,
        "force makes a new CA"
    );
}

#[test]
fn ensure_reuses_an_existing_set() {
    let dir = tempfile::tempdir().unwrap();
    let first = ensure_dev_certs(&opts(dir.path())).unwrap();
    let ca_pem = fs::read(&first.ca_cert).unwrap();
    let server_pem = fs::read(&first.server_cert).unwrap();
    assert!(first.written.contains(&first.ca_key));

    let second = ensure_dev_certs(&opts(dir.path())).unwrap();
    assert!(second.written.is_empty(), "rewrote {:?}", second.written);
    assert_eq!(fs::read(&second.ca_cert).unwrap(), ca_pem);
    assert_eq!(fs::read(&second.server_cert).unwrap(), server_pem);

    // Missing pieces are filled in under the same CA; a new SAN re-issues the servers only.
    fs::remove_file(first.user("alice").2).unwrap();
    fs::remove_file(first.device("lamp-1").1).unwrap();
    let mut more = opts(dir.path());
    more.extra_sans.push("10.1.2.3".into());
    more.devices.push("thermo-2".into());
    let third = ensure_dev_certs(&more).unwrap();
    assert_eq!(fs::read(&third.ca_cert).unwrap(), ca_pem, "CA must be kept");
    for expected in [
        third.user("alice").2,
        third.device("lamp-1").1,
        third.device("thermo-2").0,
        third.server_cert.clone(),
        third.broker_cert.clone(),
    ] {
        assert!(
            third.written.contains(&expected),
            "{} not written",
            expected.display()
        );
    }
    assert!(!third.written.contains(&third.bridge_client_cert));
    assert!(!third.written.contains(&third.user("Bob Smith").0));
    let ca_der = der_of(&third.ca_cert);
    let sans_now: Vec<&str> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "192.168.1.20",
        "iot.lan",
        "10.1.2.3",
    ]
    .to_vec();
    check_leaf(
        &ca_der,
        &third.server_cert,
        "iot-bridge server",
        Usage::Server,
        &sans_now,
    );
    check_leaf(
        &ca_der,
        &third.device("lamp-1").0,
        "lamp-1",
        Usage::Client,
        &[],
    );
}

#[test]
fn ensure_refuses_half_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let paths = ensure_dev_certs(&opts(dir.path())).unwrap();
    fs::remove_file(&paths.ca_key).unwrap();
    match ensure_dev_certs(&opts(dir.path())) {
        Err(CertError::MissingCa { reason, .. }) => assert!(reason.contains("ca.key"), "{reason}"),
        other => panic!("expected MissingCa, got {other:?}"),
    }
}

#[test]
fn add_clients_uses_the_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let none = DevCertOptions {
        out_dir: dir.path().join("empty"),
        devices: vec!["d1".into()],
        ..DevCertOptions::default()
    };
    assert!(matches!(
        add_clients(&none),
        Err(CertError::MissingCa { .. })
    ));

    let base = DevCertOptions {
        out_dir: dir.path().to_path_buf(),
        ..DevCertOptions::default()
    };
    let paths = generate_dev_certs(&base).unwrap();
    let more = DevCertOptions {
        users: vec!["carol".into()],
        devices: vec!["d1".into()],
        ..base.clone()
    };
    let added = add_clients(&more).unwrap();
    assert_eq!(added.written.len(), 5, "{:?}", added.written);
    let ca_der = der_of(&paths.ca_cert);
    check_leaf(&ca_der, &added.user("carol").0, "carol", Usage::Client, &[]);
    check_leaf(&ca_der, &added.device("d1").0, "d1", Usage::Client, &[]);

    assert!(matches!(add_clients(&more), Err(CertError::Exists(_))));
    add_clients(&DevCertOptions {
        force: true,
        ..more
    })
    .unwrap();

    let bad = DevCertOptions {
        devices: vec!["../x".into()],
        ..base
    };
    assert!(matches!(
        add_clients(&bad),
        Err(CertError::InvalidName { .. })
    ));
}

#[test]
fn a_name_is_a_user_or_a_device_never_both() {
    let dir = tempfile::tempdir().unwrap();
    let base = DevCertOptions {
        out_dir: dir.path().to_path_buf(),
        ..DevCertOptions::default()
    };
    let paths = generate_dev_certs(&DevCertOptions {
        users: vec!["alice".into()],
        devices: vec!["lamp-1".into()],
        ..base.clone()
    })
    .unwrap();
    let taken = |result: Result<DevCertPaths, CertError>| match result {
        Err(CertError::NameTaken { name, other }) => (name, other),
        other => panic!("expected NameTaken, got {other:?}"),
    };
    let user = |name: &str| DevCertOptions {
        users: vec![name.into()],
        ..base.clone()
    };
    let device = |id: &str| DevCertOptions {
        devices: vec![id.into()],
        ..base.clone()
    };

    let lamp = ("lamp-1".to_owned(), paths.device("lamp-1").0);
    assert_eq!(taken(add_clients(&user("lamp-1"))), lamp);
    assert_eq!(taken(ensure_dev_certs(&user("lamp-1"))), lamp);
    let forced = DevCertOptions {
        force: true,
        ..user("lamp-1")
    };
    assert_eq!(taken(add_clients(&forced)), lamp);
    assert!(!paths.user("lamp-1").0.exists());

    let alice = ("alice".to_owned(), paths.user("alice").0);
    assert_eq!(taken(add_clients(&device("alice"))), alice);
    assert_eq!(taken(ensure_dev_certs(&device("alice"))), alice);
    assert!(!paths.device("alice").0.exists());

    // Both in one request.
    let other = tempfile::tempdir().unwrap();
    let both = DevCertOptions {
        out_dir: other.path().to_path_buf(),
        users: vec!["x".into()],
        devices: vec!["x".into()],
        ..DevCertOptions::default()
    };
    let (name, _) = taken(generate_dev_certs(&both));
    assert_eq!(name, "x");
    assert!(!DevCertPaths::new(other.path()).ca_cert.exists());
}

#[test]
fn user_bundle_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.p12_password = "s3cret".into();
    let paths = generate_dev_certs(&o).unwrap();
    let (cert, key, p12) = paths.user("alice");
    let store = KeyStore::from_pkcs12(
        &fs::read(p12).unwrap(),
        "s3cret",
        Pkcs12ImportPolicy::Strict,
    )
    .unwrap();
    let (alias, chain) = store.private_key_chain().unwrap();
    assert_eq!(alias, "alice");
    let certs: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
    assert_eq!(certs, vec![der_of(&cert), der_of(&paths.ca_cert)]);
    let reloaded = iot_certs::Issued::from_pem(
        &fs::read_to_string(&cert).unwrap(),
        &fs::read_to_string(&key).unwrap(),
    )
    .unwrap();
    assert_eq!(chain.key().as_der(), reloaded.key_der.as_slice());
}
