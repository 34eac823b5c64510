//! The binary's start-up: a config it cannot use, the files it names included, is exit 64 with
//! one line saying why, before it binds anything.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use iot_certs::{generate_dev_certs, DevCertOptions, DevCertPaths};

const EXIT_CONFIG: i32 = 64;

fn dev_set(dir: &Path) -> DevCertPaths {
    let opts = DevCertOptions {
        out_dir: dir.to_owned(),
        ..DevCertOptions::default()
    };
    generate_dev_certs(&opts).expect("dev certificates")
}

/// Runs the bridge on `args`, listening on a port this test holds: a bridge that got as far as
/// binding would fail there with another code and message.
fn start(args: &[&str]) -> Output {
    let held = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let listen = held.local_addr().expect("bound").to_string();
    Command::new(env!("CARGO_BIN_EXE_iot-bridge"))
        .args(args)
        .args(["--listen", &listen, "--broker-port", "1"])
        .output()
        .expect("the bridge runs")
}

fn refused(output: &Output, names: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("iot-bridge:"))
        .collect();
    assert_eq!(said.len(), 1, "one line: {stderr}");
    assert!(said[0].contains(names), "names {names}: {stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn unusable_files_are_a_config_error_before_binding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let set = dev_set(&dir.path().join("certs"));
    let certs = set.dir.to_str().expect("utf-8 path");

    std::fs::write(&set.server_key, "not a key").expect("writable");
    refused(&start(&["--dev-certs", certs]), "server.key");
    let fresh = dev_set(&dir.path().join("fresh"));
    std::fs::copy(&fresh.server_key, &set.server_key).expect("copied");

    std::fs::remove_file(&set.bridge_client_key).expect("removed");
    refused(&start(&["--dev-certs", certs]), "bridge-client.key");
    std::fs::copy(&fresh.bridge_client_key, &set.bridge_client_key).expect("copied");

    // A CRL from another CA would refuse every client.
    std::fs::copy(&fresh.crl, &set.crl).expect("copied");
    refused(&start(&["--dev-certs", certs]), "crl.pem");
    std::fs::copy(&fresh.crl, &set.crl).expect("copied");
    std::fs::copy(&fresh.ca_cert, &set.ca_cert).expect("copied");

    // The same set, all files good again, through a config file naming a broken ACL.
    let fresh_dir = fresh.dir.to_str().expect("utf-8 path");
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, "[[rule]\nidentity = ").expect("writable");
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{fresh_dir}/server.pem\"\nkey = \"{fresh_dir}/server.key\"\n\
             client_ca = \"{fresh_dir}/ca.pem\"\n\
             [broker]\nca = \"{fresh_dir}/ca.pem\"\ncert = \"{fresh_dir}/bridge-client.pem\"\n\
             key = \"{fresh_dir}/bridge-client.key\"\n\
             [security]\nacl = \"acl.toml\"\n"
        ),
    )
    .expect("writable");
    refused(
        &start(&["--config", config.to_str().expect("utf-8 path")]),
        "acl.toml",
    );
}
