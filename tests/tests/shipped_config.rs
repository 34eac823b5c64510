//! The broker config and ACL the end-to-end tests run are the files that ship in `mosquitto/`,
//! and docker-compose mounts those same files where the config expects them.

use std::collections::BTreeSet;
use std::path::Path;

use e2e::mosquitto::{
    render_config, shipped_dir, shipped_file, CONTAINER_CERTS_DIR, CONTAINER_CONFIG_DIR,
    SHIPPED_LISTENER,
};
use e2e::{E2eError, Mosquitto, Pki};
use yaml_rust2::{Yaml, YamlLoader};

/// The first word of a config line (its directive), or `None` for comments and blank lines.
fn directive(line: &str) -> Option<&str> {
    let line = line.trim();
    (!line.is_empty() && !line.starts_with('#')).then(|| line.split_whitespace().next())?
}

#[test]
fn rendering_changes_only_the_listener_port_and_the_two_folders() -> Result<(), E2eError> {
    let shipped = shipped_file("mosquitto.conf")?;
    let (certs, config) = (Path::new("/tmp/e2e-certs"), Path::new("/tmp/e2e-config"));
    let rendered = render_config(&shipped, 41234, certs, config)?;

    let (before, after): (Vec<&str>, Vec<&str>) =
        (shipped.lines().collect(), rendered.lines().collect());
    assert_eq!(
        before.len(),
        after.len(),
        "rendering must not add or drop lines"
    );
    let mut changed = BTreeSet::new();
    for (s, r) in before.iter().zip(&after) {
        if s == r {
            continue;
        }
        match directive(s) {
            // Comments may mention the folders; they are substituted like everything else.
            None => {}
            Some("listener") => {
                assert_eq!(*s, SHIPPED_LISTENER);
                assert_eq!(*r, "listener 41234 127.0.0.1");
            }
            Some(name) => {
                let expected = s
                    .replace(CONTAINER_CERTS_DIR, "/tmp/e2e-certs/")
                    .replace(CONTAINER_CONFIG_DIR, "/tmp/e2e-config/");
                assert_eq!(
                    *r, expected,
                    "{name} changed beyond the folder substitution"
                );
            }
        }
        if let Some(name) = directive(s) {
            changed.insert(name.to_owned());
        }
    }
    let expected: BTreeSet<String> = [
        "listener", "cafile", "certfile", "keyfile", "crlfile", "acl_file",
    ]
    .map(String::from)
    .into();
    assert_eq!(changed, expected);
    assert!(
        !rendered.contains("/mosquitto/"),
        "a container path was left:\n{rendered}"
    );
    assert_eq!(rendered.ends_with('\n'), shipped.ends_with('\n'));
    Ok(())
}

#[test]
fn rendering_refuses_a_config_without_the_expected_anchors() {
    let dir = Path::new("/tmp");
    for bad in [
        "listener 1883\ncafile /mosquitto/certs/ca.pem\nacl_file /mosquitto/config/acl\n",
        "listener 8883\nlistener 9001\ncafile /mosquitto/certs/ca.pem\nacl_file /mosquitto/config/acl\n",
        "listener 8883\ncafile /etc/ca.pem\nacl_file /mosquitto/config/acl\n",
    ] {
        assert!(render_config(bad, 1, dir, dir).is_err(), "{bad}");
    }
}

#[test]
fn shipped_config_requires_client_certificates_and_uses_the_acl() -> Result<(), E2eError> {
    let shipped = shipped_file("mosquitto.conf")?;
    let settings: Vec<(&str, &str)> = shipped
        .lines()
        .filter(|l| directive(l).is_some())
        .filter_map(|l| l.trim().split_once(' '))
        .collect();
    for want in [
        ("listener", "8883"),
        ("require_certificate", "true"),
        ("use_identity_as_username", "true"),
        ("allow_anonymous", "false"),
        ("tls_version", "tlsv1.2"),
        ("acl_file", "/mosquitto/config/acl"),
        ("cafile", "/mosquitto/certs/ca.pem"),
        ("certfile", "/mosquitto/certs/broker.pem"),
        ("keyfile", "/mosquitto/certs/broker.key"),
        ("crlfile", "/mosquitto/certs/crl.pem"),
        ("log_dest", "stderr"),
    ] {
        assert!(settings.contains(&want), "missing `{} {}`", want.0, want.1);
    }
    Ok(())
}

#[tokio::test]
async fn the_test_broker_runs_the_rendered_shipped_files() -> Result<(), E2eError> {
    e2e::init_tracing();
    let pki = Pki::new()?;
    let mut broker = Mosquitto::start(&pki).await?;
    let running = std::fs::read_to_string(broker.config_path()).map_err(|e| E2eError::Io {
        what: "reading the rendered config".into(),
        source: e,
    })?;
    let expected = render_config(
        &shipped_file("mosquitto.conf")?,
        broker.port(),
        pki.dir(),
        broker.config_dir(),
    )?;
    assert_eq!(running, expected);
    let acl =
        std::fs::read_to_string(broker.config_dir().join("acl")).map_err(|e| E2eError::Io {
            what: "reading the ACL copy".into(),
            source: e,
        })?;
    assert_eq!(acl, shipped_file("acl")?);
    assert!(broker.is_running());
    assert!(
        broker
            .log()
            .contains(&format!("listen socket on port {}", broker.port())),
        "{}",
        broker.log()
    );
    broker.stop().await
}

fn compose() -> Yaml {
    let path = shipped_dir().join("..").join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml is readable");
    let mut docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn strings(list: &Yaml) -> Vec<&str> {
    list.as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

/// `host:container[:mode]` volume entries as (host, container).
fn mounts(service: &Yaml) -> Vec<(&str, &str)> {
    strings(&service["volumes"])
        .into_iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?, parts.next()?))
        })
        .collect()
}

#[test]
fn docker_compose_mounts_the_shipped_mosquitto_files() -> Result<(), E2eError> {
    let compose = compose();
    let mosquitto = &compose["services"]["mosquitto"];
    let image = mosquitto["image"].as_str().unwrap_or_default();
    assert!(image.starts_with("eclipse-mosquitto:2"), "image {image}");
    let mounts = mounts(mosquitto);
    for want in [
        (
            "./mosquitto/mosquitto.conf",
            "/mosquitto/config/mosquitto.conf",
        ),
        ("./mosquitto/acl", "/mosquitto/config/acl"),
        ("./dev-certs", "/mosquitto/certs"),
    ] {
        assert!(
            mounts.contains(&want),
            "mosquitto must mount {want:?}, has {mounts:?}"
        );
    }
    // Every file the shipped config names under the container folders is provided by a mount:
    // config files from the repository, certificates from the certs tool's layout.
    let shipped = shipped_file("mosquitto.conf")?;
    let dev_certs = iot_certs::DevCertPaths::new("dev-certs");
    for path in shipped
        .lines()
        .filter(|l| directive(l).is_some())
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with("/mosquitto/"))
    {
        if let Some(name) = path.strip_prefix(CONTAINER_CONFIG_DIR) {
            assert!(
                shipped_dir().join(name).is_file(),
                "{path}: no mosquitto/{name} in the repository"
            );
        } else if let Some(name) = path.strip_prefix(CONTAINER_CERTS_DIR) {
            let made = [
                &dev_certs.ca_cert,
                &dev_certs.broker_cert,
                &dev_certs.broker_key,
                &dev_certs.crl,
            ]
            .iter()
            .any(|p| p.file_name().and_then(|f| f.to_str()) == Some(name));
            assert!(made, "{path}: the certs tool makes no {name}");
        }
    }
    Ok(())
}

#[test]
fn docker_compose_runs_bridge_and_fleet_against_the_broker() {
    let compose = compose();
    let services = &compose["services"];
    let bridge = &services["bridge"];
    let command = strings(&bridge["command"]).join(" ");
    assert!(command.starts_with("iot-bridge "), "{command}");
    for part in [
        "--dev-certs /certs",
        "--broker-host mosquitto",
        "--listen 0.0.0.0:8443",
    ] {
        assert!(
            command.contains(part),
            "bridge command lacks {part}: {command}"
        );
    }
    assert!(mounts(bridge).contains(&("./dev-certs", "/certs")));
    assert!(strings(&bridge["ports"]).contains(&"8443:8443"));

    let sim = &services["device-sim"];
    let command = strings(&sim["command"]).join(" ");
    for part in [
        "device-sim fleet",
        "--broker mosquitto:8883",
        "--ca /certs/ca.pem",
        "--ca-key /certs/ca.key",
        "--count 12",
    ] {
        assert!(
            command.contains(part),
            "device-sim command lacks {part}: {command}"
        );
    }
    assert!(mounts(sim).contains(&("./dev-certs", "/certs")));
    for name in ["bridge", "device-sim"] {
        assert!(
            strings(&services[name]["depends_on"]).contains(&"mosquitto"),
            "{name}"
        );
    }
}

#[test]
fn the_image_holds_every_binary_compose_runs_and_no_keys() {
    let root = shipped_dir().join("..");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    let compose = compose();
    let services = compose["services"].as_hash().expect("services is a map");
    for (name, service) in services {
        if service["build"].is_badvalue() {
            continue;
        }
        let binary = strings(&service["command"])[0];
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "{name:?} runs {binary}, which the Dockerfile does not copy into the image"
        );
        assert!(
            dockerfile.contains(&format!("-p {binary}")),
            "the Dockerfile does not build {binary}"
        );
    }
    for kept_out in ["dev-certs/", "target/", "*.key"] {
        assert!(
            ignore.lines().any(|l| l.trim() == kept_out),
            ".dockerignore must keep {kept_out} out of the build context"
        );
    }
}
