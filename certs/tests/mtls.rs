//! Proves the dev certificates work for mutual TLS: a rustls server using server.pem that
//! requires client certificates from ca.pem accepts user and device certificates, and
//! refuses clients without one or with one from another CA, and, given the set's CRL, refuses
//! revoked certificates while still accepting the others.

use std::path::Path;
use std::sync::Arc;

use iot_certs::{generate_dev_certs, revoke, DevCertOptions, DevCertPaths, RevokeTarget};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::prelude::{FromDer, X509Certificate};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca) {
        roots.add(cert).unwrap();
    }
    Arc::new(roots)
}

fn server_config(paths: &DevCertPaths, cert: &Path, key_path: &Path) -> Arc<ServerConfig> {
    server_config_with_crl(paths, cert, key_path, None)
}

/// Like the bridge's listener: client certificates must chain to the CA and, with a CRL, must
/// not be listed in it.
fn server_config_with_crl(
    paths: &DevCertPaths,
    cert: &Path,
    key_path: &Path,
    crl: Option<&Path>,
) -> Arc<ServerConfig> {
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots(&paths.ca_cert), provider());
    if let Some(crl) = crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(crl)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(crls.len(), 1);
        builder = builder.with_crls(crls);
    }
    let verifier = builder.build().unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert), key(key_path))
        .unwrap();
    Arc::new(config)
}

fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots(ca));
    let config = match identity {
        Some((cert, key_path)) => builder
            .with_client_auth_cert(certs(cert), key(key_path))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Runs one handshake plus a ping/pong over an in-memory pipe. Returns the CN of the client
/// certificate the server saw, or both sides' errors.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Result<String, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let server_task = tokio::spawn(async move {
        let mut tls = TlsAcceptor::from(server)
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no client cert")?;
        let (_, x509) = X509Certificate::from_der(&peer[0]).map_err(|e| e.to_string())?;
        let cn = x509.subject().iter_common_name().next().ok_or("no CN")?;
        Ok::<_, String>(cn.as_str().map_err(|e| e.to_string())?.to_owned())
    });
    let client_side = async move {
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok::<_, std::io::Error>(())
    };
    // With TLS 1.3 the client may finish before the server rejects its certificate, so the
    // server's verdict is what counts.
    let client_result = client_side.await;
    let server_result = server_task.await.unwrap();
    match (server_result, client_result) {
        (Ok(cn), Ok(())) => Ok(cn),
        (server, client) => Err(format!(
            "server: {}; client: {}",
            server.err().unwrap_or_default(),
            client.err().map(|e| e.to_string()).unwrap_or_default()
        )),
    }
}

fn dev_set(dir: &Path) -> DevCertPaths {
    generate_dev_certs(&DevCertOptions {
        out_dir: dir.to_path_buf(),
        users: vec!["alice".into()],
        devices: vec!["lamp-1".into()],
        ..DevCertOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn user_and_device_certificates_pass_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dev_set(dir.path());
    let server = server_config(&paths, &paths.server_cert, &paths.server_key);

    let (cert, key, _) = paths.user("alice");
    let alice = client_config(&paths.ca_cert, Some((&cert, &key)));
    for host in ["localhost", "127.0.0.1", "::1"] {
        assert_eq!(
            handshake(server.clone(), alice.clone(), host)
                .await
                .unwrap(),
            "alice"
        );
    }

    let (cert, key) = paths.device("lamp-1");
    let lamp = client_config(&paths.ca_cert, Some((&cert, &key)));
    assert_eq!(
        handshake(server, lamp, "localhost").await.unwrap(),
        "lamp-1"
    );
}

#[tokio::test]
async fn broker_certificate_serves_the_bridge_client() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dev_set(dir.path());
    let broker = server_config(&paths, &paths.broker_cert, &paths.broker_key);
    let bridge = client_config(
        &paths.ca_cert,
        Some((&paths.bridge_client_cert, &paths.bridge_client_key)),
    );
    assert_eq!(
        handshake(broker, bridge, "mosquitto").await.unwrap(),
        "iot-bridge"
    );
}

#[tokio::test]
async fn clients_without_a_good_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = dev_set(dir.path());
    let server = server_config(&paths, &paths.server_cert, &paths.server_key);

    let anonymous = client_config(&paths.ca_cert, None);
    let err = handshake(server.clone(), anonymous, "localhost")
        .await
        .unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");

    // Same CA name, different key.
    let other_dir = tempfile::tempdir().unwrap();
    let other = dev_set(other_dir.path());
    let (cert, key, _) = other.user("alice");
    let stranger = client_config(&paths.ca_cert, Some((&cert, &key)));
    let err = handshake(server.clone(), stranger, "localhost")
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );

    // A server certificate is not a client certificate (EKU serverAuth only).
    let wrong_usage = client_config(
        &paths.ca_cert,
        Some((&paths.broker_cert, &paths.broker_key)),
    );
    let err = handshake(server.clone(), wrong_usage, "localhost")
        .await
        .unwrap_err();
    assert!(
        err.contains("ExtendedKeyUsage") || err.contains("usage"),
        "{err}"
    );

    // And the server's certificate does not cover names it was not issued for.
    let (cert, key, _) = paths.user("alice");
    let alice = client_config(&paths.ca_cert, Some((&cert, &key)));
    let err = handshake(server, alice, "mosquitto").await.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn revoked_certificates_are_refused_and_the_others_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let paths = generate_dev_certs(&DevCertOptions {
        out_dir: dir.path().to_path_buf(),
        users: vec!["alice".into(), "bob".into()],
        devices: vec!["lamp-1".into()],
        ..DevCertOptions::default()
    })
    .unwrap();
    let client = |cert: &Path, key: &Path| client_config(&paths.ca_cert, Some((cert, key)));
    let (alice_cert, alice_key, _) = paths.user("alice");
    let (bob_cert, bob_key, _) = paths.user("bob");
    let (lamp_cert, lamp_key) = paths.device("lamp-1");
    let server_now = || {
        server_config_with_crl(
            &paths,
            &paths.server_cert,
            &paths.server_key,
            Some(&paths.crl),
        )
    };

    // The empty CRL a new set starts with is authoritative for every certificate of the CA
    // (rustls refuses certificates whose status it cannot tell) and revokes nobody.
    let server = server_now();
    for (who, config) in [
        ("alice", client(&alice_cert, &alice_key)),
        ("lamp-1", client(&lamp_cert, &lamp_key)),
    ] {
        assert_eq!(
            handshake(server.clone(), config, "localhost")
                .await
                .unwrap(),
            who
        );
    }

    revoke(&paths, RevokeTarget::User("alice".into())).unwrap();
    let server = server_now();
    let err = handshake(server.clone(), client(&alice_cert, &alice_key), "localhost")
        .await
        .unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    assert_eq!(
        handshake(server.clone(), client(&bob_cert, &bob_key), "localhost")
            .await
            .unwrap(),
        "bob"
    );
    assert_eq!(
        handshake(server, client(&lamp_cert, &lamp_key), "localhost")
            .await
            .unwrap(),
        "lamp-1"
    );

    revoke(&paths, RevokeTarget::Device("lamp-1".into())).unwrap();
    let server = server_now();
    let err = handshake(server.clone(), client(&lamp_cert, &lamp_key), "localhost")
        .await
        .unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
    assert_eq!(
        handshake(server, client(&bob_cert, &bob_key), "localhost")
            .await
            .unwrap(),
        "bob"
    );
}
