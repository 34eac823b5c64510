//! The development certificate set: which files exist, and making, completing or extending it.
//!
//! Layout under the output folder:
//! `ca.pem ca.key | server.pem server.key | broker.pem broker.key |
//! bridge-client.pem bridge-client.key | crl.pem revoked.json | users/NAME.{pem,key,p12} |
//! devices/ID.{pem,key}`.

use std::path::PathBuf;

use crate::files::{self, Access};
use crate::names::{validate_device_id, validate_user_name};
use crate::pkcs12::DEFAULT_P12_PASSWORD;
use crate::reuse::LeafCheck;
use crate::revocation::{self, RevocationList};
use crate::{Ca, CertError, Issued};

/// Start of the dev CA's common name, which is what people see in their trust store. A
/// creation time follows, so two dev CAs never share a subject name: browsers choose client
/// certificates, and TLS stacks look up issuers, by that name.
pub const CA_COMMON_NAME: &str = "iot-bridge dev CA";
/// Common name of the bridge's HTTPS/WSS server certificate.
pub const SERVER_COMMON_NAME: &str = "iot-bridge server";
/// Common name of the MQTT broker's server certificate.
pub const BROKER_COMMON_NAME: &str = "iot-bridge broker";
/// Common name (and so the broker-side identity) of the bridge's MQTT client certificate.
pub const BRIDGE_CLIENT_COMMON_NAME: &str = "iot-bridge";

/// Names every server certificate answers to, so local use works out of the box.
const LOCAL_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The broker's host name inside docker-compose.
const BROKER_SERVICE_NAME: &str = "mosquitto";

/// What to put into a dev certificate set.
#[derive(Debug, Clone)]
pub struct DevCertOptions {
    pub out_dir: PathBuf,
    /// Added to both server certificates, e.g. the machine's LAN address for phones.
    pub extra_sans: Vec<String>,
    /// A client certificate and PKCS#12 bundle for each.
    pub users: Vec<String>,
    /// A client certificate for each.
    pub devices: Vec<String>,
    pub p12_password: String,
    /// Replace existing files instead of refusing.
    pub force: bool,
}

impl Default for DevCertOptions {
    fn default() -> Self {
        DevCertOptions {
            out_dir: PathBuf::from("dev-certs"),
            extra_sans: Vec::new(),
            users: Vec::new(),
            devices: Vec::new(),
            p12_password: DEFAULT_P12_PASSWORD.to_owned(),
            force: false,
        }
    }
}

/// Where the files of a dev certificate set are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
    pub bridge_client_cert: PathBuf,
    pub bridge_client_key: PathBuf,
    /// The CA's certificate revocation list (PEM), for the bridge's `tls.crl`.
    pub crl: PathBuf,
    /// The revoked serial numbers `crl.pem` is made from (`revoked.json`).
    pub revocation_list: PathBuf,
    /// Files the call that returned this value created or replaced, in writing order.
    pub written: Vec<PathBuf>,
}

impl DevCertPaths {
    /// The layout under `dir`; touches nothing on disk.
    pub fn new(dir: impl Into<PathBuf>) -> DevCertPaths {
        let dir = dir.into();
        let f = |name: &str| dir.join(name);
        DevCertPaths {
            ca_cert: f("ca.pem"),
            ca_key: f("ca.key"),
            server_cert: f("server.pem"),
            server_key: f("server.key"),
            broker_cert: f("broker.pem"),
            broker_key: f("broker.key"),
            bridge_client_cert: f("bridge-client.pem"),
            bridge_client_key: f("bridge-client.key"),
            crl: f("crl.pem"),
            revocation_list: f("revoked.json"),
            written: Vec::new(),
            dir,
        }
    }

    /// `(cert, key, p12)` of a user.
    pub fn user(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let base = self.dir.join("users");
        (
            base.join(format!("{name}.pem")),
            base.join(format!("{name}.key")),
            base.join(format!("{name}.p12")),
        )
    }

    /// `(cert, key)` of a device.
    pub fn device(&self, id: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join("devices");
        (
            base.join(format!("{id}.pem")),
            base.join(format!("{id}.key")),
        )
    }
}

/// Makes a complete new set: CA, both server certificates, the bridge's client certificate,
/// and the requested users and devices. Refuses to replace any existing file unless `force`.
pub fn generate_dev_certs(opts: &DevCertOptions) -> Result<DevCertPaths, CertError> {
    let mut paths = DevCertPaths::new(&opts.out_dir);
    validate(&paths, opts)?;
    let leaves = plan(&paths, opts, true);
    if !opts.force {
        refuse_existing(
            [&paths.ca_cert, &paths.ca_key]
                .into_iter()
                .chain(leaves.iter().flat_map(LeafPlan::files)),
        )?;
    }
    // Issue everything before writing anything: a bad SAN must not leave half a set behind.
    let ca = Ca::generate(&ca_common_name())?;
    let issued = leaves
        .iter()
        .map(|leaf| leaf.issue(&ca))
        .collect::<Result<Vec<_>, _>>()?;
    create_dirs(&paths)?;
    write_ca(&ca, &mut paths)?;
    for (leaf, issued) in leaves.iter().zip(&issued) {
        leaf.write(&ca, issued, opts, &mut paths.written)?;
    }
    // An empty CRL from the start, so the bridge can always be pointed at one.
    revocation::write_fresh(&ca, &mut paths)?;
    Ok(paths)
}

/// Makes sure a usable set exists, reusing what is there.
///
/// An existing CA is loaded and kept (it may already be trusted by browsers and phones).
/// A leaf is reused when its files load, it chains to that CA, it is valid for at least
/// another week and (for servers) covers every requested SAN; otherwise it is issued anew.
/// Without any CA files a new CA is made; with only one of `ca.pem`/`ca.key` this fails
/// rather than silently replacing a CA people may have installed. `force` is not consulted.
/// A revoked leaf is issued anew, and `crl.pem` is rewritten when it is missing, does not
/// match `revoked.json` or has a `nextUpdate` before the CA's expiry (as older versions wrote).
pub fn ensure_dev_certs(opts: &DevCertOptions) -> Result<DevCertPaths, CertError> {
    let mut paths = DevCertPaths::new(&opts.out_dir);
    validate(&paths, opts)?;
    create_dirs(&paths)?;
    let (ca, revoked) = match (paths.ca_cert.exists(), paths.ca_key.exists()) {
        (true, true) => (load_ca(&paths)?, revocation::read_list(&paths)?),
        (false, false) => {
            let ca = Ca::generate(&ca_common_name())?;
            write_ca(&ca, &mut paths)?;
            // Revocations of another CA's certificates mean nothing under this one.
            (ca, RevocationList::default())
        }
        (cert, _) => {
            let (have, missing) = if cert {
                ("ca.pem", "ca.key")
            } else {
                ("ca.key", "ca.pem")
            };
            return Err(CertError::MissingCa {
                dir: paths.dir.clone(),
                reason: format!(
                    "{have} exists but {missing} does not; remove {have} to start a new CA"
                ),
            });
        }
    };
    let check = LeafCheck::new(&ca, revoked.serials())?;
    for leaf in plan(&paths, opts, true) {
        match check.existing(&leaf.cert, &leaf.key, &leaf.kind) {
            Some(issued) => {
                if let Some(p12) = leaf.p12.as_ref().filter(|p| !p.exists()) {
                    let der = issued.to_pkcs12(&ca, leaf.kind.common_name(), &opts.p12_password)?;
                    files::write(p12, &der, Access::OwnerOnly)?;
                    paths.written.push(p12.clone());
                }
            }
            None => {
                let issued = leaf.issue(&ca)?;
                leaf.write(&ca, &issued, opts, &mut paths.written)?;
            }
        }
    }
    revocation::ensure_crl(&ca, &mut paths, revoked)?;
    Ok(paths)
}

/// Issues the requested users and devices under the CA already in `out_dir`, refusing to
/// replace their files unless `force`. Server certificates and the CA are left alone.
pub fn add_clients(opts: &DevCertOptions) -> Result<DevCertPaths, CertError> {
    let mut paths = DevCertPaths::new(&opts.out_dir);
    validate(&paths, opts)?;
    for (file, name) in [(&paths.ca_cert, "ca.pem"), (&paths.ca_key, "ca.key")] {
        if !file.exists() {
            return Err(CertError::MissingCa {
                dir: paths.dir.clone(),
                reason: format!("{name} not found"),
            });
        }
    }
    let ca = load_ca(&paths)?;
    let leaves = plan(&paths, opts, false);
    if !opts.force {
        refuse_existing(leaves.iter().flat_map(LeafPlan::files))?;
    }
    let issued = leaves
        .iter()
        .map(|leaf| leaf.issue(&ca))
        .collect::<Result<Vec<_>, _>>()?;
    create_dirs(&paths)?;
    for (leaf, issued) in leaves.iter().zip(&issued) {
        leaf.write(&ca, issued, opts, &mut paths.written)?;
    }
    Ok(paths)
}

/// Loads the CA of an existing set.
pub fn load_ca(paths: &DevCertPaths) -> Result<Ca, CertError> {
    let cert = files::read_to_string(&paths.ca_cert)?;
    let key = files::read_to_string(&paths.ca_key)?;
    Ca::from_pem(&cert, &key)
}

fn ca_common_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{CA_COMMON_NAME} {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn validate(paths: &DevCertPaths, opts: &DevCertOptions) -> Result<(), CertError> {
    opts.users.iter().try_for_each(|u| validate_user_name(u))?;
    opts.devices
        .iter()
        .try_for_each(|d| validate_device_id(d))?;
    refuse_shared_names(paths, opts)?;
    if !opts.users.is_empty() && opts.p12_password.is_empty() {
        return Err(CertError::Pkcs12(
            "the password must not be empty (iOS and macOS cannot import such bundles)".into(),
        ));
    }
    Ok(())
}

/// A certificate's name is all the broker's ACL (a device's own topics) and the bridge's ACL (a
/// person's rights) go by, so no name may be a user's and a device's, in this request or in
/// the set on disk. `force` does not change that: it replaces files, it does not merge roles.
fn refuse_shared_names(paths: &DevCertPaths, opts: &DevCertOptions) -> Result<(), CertError> {
    let taken = |name: &String, other: PathBuf| {
        Err(CertError::NameTaken {
            name: name.clone(),
            other,
        })
    };
    for user in &opts.users {
        let device = paths.device(user).0;
        if opts.devices.contains(user) || device.exists() {
            return taken(user, device);
        }
    }
    for device in &opts.devices {
        let user = paths.user(device).0;
        if user.exists() {
            return taken(device, user);
        }
    }
    Ok(())
}

fn refuse_existing<'a>(mut files: impl Iterator<Item = &'a PathBuf>) -> Result<(), CertError> {
    match files.find(|f| f.exists()) {
        Some(existing) => Err(CertError::Exists(existing.clone())),
        None => Ok(()),
    }
}

fn create_dirs(paths: &DevCertPaths) -> Result<(), CertError> {
    // Folders keep the default permissions on purpose: the broker reads broker.key as
    // another user (see `LeafPlan::write`), which needs the folder to be traversable.
    files::create_dir(&paths.dir.join("users"))?;
    files::create_dir(&paths.dir.join("devices"))
}

fn write_ca(ca: &Ca, paths: &mut DevCertPaths) -> Result<(), CertError> {
    files::write(&paths.ca_cert, ca.cert_pem().as_bytes(), Access::Public)?;
    files::write(&paths.ca_key, ca.key_pem().as_bytes(), Access::OwnerOnly)?;
    paths
        .written
        .extend([paths.ca_cert.clone(), paths.ca_key.clone()]);
    Ok(())
}

/// What kind of certificate a leaf is, with what it must contain.
#[derive(Debug, Clone)]
pub(crate) enum LeafKind {
    Server { cn: String, sans: Vec<String> },
    Client { cn: String },
}

impl LeafKind {
    pub(crate) fn common_name(&self) -> &str {
        match self {
            LeafKind::Server { cn, .. } | LeafKind::Client { cn } => cn,
        }
    }
}

/// One leaf certificate of the set and where it goes.
struct LeafPlan {
    kind: LeafKind,
    cert: PathBuf,
    key: PathBuf,
    key_access: Access,
    p12: Option<PathBuf>,
}

impl LeafPlan {
    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key].into_iter().chain(self.p12.as_ref())
    }

    fn issue(&self, ca: &Ca) -> Result<Issued, CertError> {
        match &self.kind {
            LeafKind::Server { cn, sans } => ca.issue_server(cn, sans),
            LeafKind::Client { cn } => ca.issue_client(cn),
        }
    }

    fn write(
        &self,
        ca: &Ca,
        issued: &Issued,
        opts: &DevCertOptions,
        written: &mut Vec<PathBuf>,
    ) -> Result<(), CertError> {
        files::write(&self.cert, issued.cert_pem.as_bytes(), Access::Public)?;
        files::write(&self.key, issued.key_pem.as_bytes(), self.key_access)?;
        written.extend([self.cert.clone(), self.key.clone()]);
        if let Some(p12) = &self.p12 {
            let der = issued.to_pkcs12(ca, self.kind.common_name(), &opts.p12_password)?;
            files::write(p12, &der, Access::OwnerOnly)?;
            written.push(p12.clone());
        }
        Ok(())
    }
}

fn plan(paths: &DevCertPaths, opts: &DevCertOptions, with_servers: bool) -> Vec<LeafPlan> {
    let sans = |extra: &[&str]| -> Vec<String> {
        LOCAL_SANS
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .chain(opts.extra_sans.iter().cloned())
            .collect()
    };
    let mut leaves = Vec::new();
    if with_servers {
        leaves.push(LeafPlan {
            kind: LeafKind::Server {
                cn: SERVER_COMMON_NAME.into(),
                sans: sans(&[]),
            },
            cert: paths.server_cert.clone(),
            key: paths.server_key.clone(),
            key_access: Access::OwnerOnly,
            p12: None,
        });
        leaves.push(LeafPlan {
            kind: LeafKind::Server {
                cn: BROKER_COMMON_NAME.into(),
                sans: sans(&[BROKER_SERVICE_NAME]),
            },
            cert: paths.broker_cert.clone(),
            key: paths.broker_key.clone(),
            // Mosquitto starts as root and drops to the `mosquitto` user before it reads its
            // key, so a 0600 key owned by whoever made the set is unreadable to it (notably in
            // the docker-compose setup, where the folder is bind-mounted). Dev certificates
            // only: a production broker key belongs to the broker's user with mode 0600.
            key_access: Access::SharedKey,
            p12: None,
        });
        leaves.push(LeafPlan {
            kind: LeafKind::Client {
                cn: BRIDGE_CLIENT_COMMON_NAME.into(),
            },
            cert: paths.bridge_client_cert.clone(),
            key: paths.bridge_client_key.clone(),
            key_access: Access::OwnerOnly,
            p12: None,
        });
    }
    for user in &opts.users {
        let (cert, key, p12) = paths.user(user);
        leaves.push(LeafPlan {
            kind: LeafKind::Client { cn: user.clone() },
            cert,
            key,
            key_access: Access::OwnerOnly,
            p12: Some(p12),
        });
    }
    for device in &opts.devices {
        let (cert, key) = paths.device(device);
        leaves.push(LeafPlan {
            kind: LeafKind::Client { cn: device.clone() },
            cert,
            key,
            key_access: Access::OwnerOnly,
            p12: None,
        });
    }
    leaves
}
