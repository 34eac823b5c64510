//! `iot-certs`: command line front end of the development CA (create a set, add users/devices,
//! revoke certificates).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use iot_certs::{
    CertError, CertRole, DevCertOptions, DevCertPaths, Revocation, RevokeTarget,
    DEFAULT_P12_PASSWORD,
};

/// Development certificates for iot-bridge: a CA, server certificates for the bridge and the
/// MQTT broker, and client certificates for the bridge, people and devices.
#[derive(Debug, Parser)]
#[command(name = "iot-certs", version)]
struct Cli {
    /// Folder holding the certificate set.
    #[arg(long, global = true, default_value = "dev-certs", value_name = "DIR")]
    out: PathBuf,
    /// Replace existing files instead of refusing.
    #[arg(long, global = true)]
    force: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new CA and every certificate the bridge, the broker and the demo need.
    Init {
        /// Extra host name or IP address for the server certificates (e.g. the LAN address
        /// phones use). Repeatable.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Also make a client certificate and .p12 for this person. Repeatable.
        #[arg(long = "user", value_name = "NAME")]
        users: Vec<String>,
        /// Also make a client certificate for this device id. Repeatable.
        #[arg(long = "device", value_name = "ID")]
        devices: Vec<String>,
        /// Password of the .p12 bundles (must not be empty: iOS cannot import those).
        #[arg(long, value_name = "P", default_value = DEFAULT_P12_PASSWORD)]
        p12_password: String,
    },
    /// Add client certificates and .p12 bundles for people, signed by the existing CA.
    User {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Password of the .p12 bundles (must not be empty: iOS cannot import those).
        #[arg(long, value_name = "P", default_value = DEFAULT_P12_PASSWORD)]
        p12_password: String,
    },
    /// Add client certificates for devices, signed by the existing CA.
    Device {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Revoke a certificate: record its serial number in revoked.json and rewrite crl.pem.
    #[command(group(ArgGroup::new("target").required(true).args(["user", "device", "serial"])))]
    Revoke {
        /// The certificate in users/NAME.pem.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// The certificate in devices/ID.pem.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Any certificate of this CA by serial number (hex, ':' separators allowed).
        #[arg(long, value_name = "HEX")]
        serial: Option<String>,
    },
    /// Rewrite crl.pem from revoked.json (with the next CRL number, valid until the CA expires).
    Crl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-certs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let paths = DevCertPaths::new(&cli.out);
    let mut opts = DevCertOptions {
        out_dir: cli.out,
        force: cli.force,
        ..DevCertOptions::default()
    };
    let result = match cli.command {
        Command::Init {
            sans,
            users,
            devices,
            p12_password,
        } => {
            opts.extra_sans = sans;
            opts.users = users;
            opts.devices = devices;
            opts.p12_password = p12_password;
            iot_certs::generate_dev_certs(&opts)
        }
        Command::User {
            names,
            p12_password,
        } => {
            opts.users = names;
            opts.p12_password = p12_password;
            iot_certs::add_clients(&opts)
        }
        Command::Device { ids } => {
            opts.devices = ids;
            iot_certs::add_clients(&opts)
        }
        Command::Revoke {
            user,
            device,
            serial,
        } => {
            // clap's group lets exactly one of them through.
            let target = match (user, device, serial) {
                (Some(name), _, _) => RevokeTarget::User(name),
                (_, Some(id), _) => RevokeTarget::Device(id),
                (_, _, Some(hex)) => RevokeTarget::Serial(hex),
                (None, None, None) => {
                    anyhow::bail!("say what to revoke: --user, --device or --serial")
                }
            };
            let revocation = iot_certs::revoke_detailed(&paths, target).map_err(explain)?;
            report_revocation(&paths, &revocation);
            return Ok(());
        }
        Command::Crl => {
            let crl = iot_certs::write_crl(&paths).map_err(explain)?;
            let count = iot_certs::revocation_list(&paths)?.revoked.len();
            println!("Wrote {} ({}).", crl.display(), revoked_count(count));
            print_reload_hint();
            return Ok(());
        }
    };
    let paths = result.map_err(explain)?;
    report(&paths, &opts);
    Ok(())
}

/// Adds what to do next to the errors people can fix themselves.
fn explain(e: CertError) -> anyhow::Error {
    match e {
        CertError::Exists(path) => anyhow::anyhow!(
            "{} already exists; pass --force to replace it (the old certificates stop working)",
            path.display()
        ),
        CertError::MissingCa { .. } => anyhow::anyhow!("{e}; run `iot-certs init` first"),
        other => other.into(),
    }
}

fn report_revocation(paths: &DevCertPaths, r: &Revocation) {
    let who = match (&r.cert.name, r.cert.role) {
        (Some(name), role) => format!("{role} certificate {name:?}"),
        (None, CertRole::Unknown) => "certificate (no matching file in this set)".to_owned(),
        (None, role) => format!("{role} certificate"),
    };
    if r.already_revoked {
        println!(
            "The {who} with serial {} was already revoked on {}.",
            r.cert.serial, r.cert.revoked_at
        );
    } else {
        println!("Revoked the {who} with serial {}.", r.cert.serial);
    }
    println!(
        "Recorded in {}; wrote {} ({}).",
        paths.revocation_list.display(),
        r.crl.display(),
        revoked_count(r.revoked_count)
    );
    if matches!(r.cert.role, CertRole::User | CertRole::Device) {
        println!(
            "The certificate files stay in place; `iot-certs --force {} {}` issues a new one.",
            r.cert.role,
            r.cert.name.as_deref().unwrap_or("NAME")
        );
    }
    print_reload_hint();
}

fn revoked_count(n: usize) -> String {
    match n {
        1 => "1 revoked certificate".to_owned(),
        n => format!("{n} revoked certificates"),
    }
}

fn print_reload_hint() {
    println!(
        "The bridge reads the CRL named by `crl` in its [tls] config and reloads it on SIGHUP \
         (kill -HUP <pid>): new connections with a revoked certificate are refused."
    );
}

fn report(paths: &DevCertPaths, opts: &DevCertOptions) {
    println!("Wrote:");
    for file in &paths.written {
        println!("  {}", file.display());
    }
    if !opts.users.is_empty() {
        print_import_help(paths, opts);
    }
}

fn print_import_help(paths: &DevCertPaths, opts: &DevCertOptions) {
    let ca = shown(&paths.ca_cert);
    let bundles: Vec<String> = opts.users.iter().map(|u| shown(&paths.user(u).2)).collect();
    let password = &opts.p12_password;
    println!(
        "
To use the dashboard, a browser or phone needs the user bundle ({bundles}, password {password:?})
and must trust the CA ({ca}):
  Chrome/Edge: Settings > Privacy and security > Security > Manage certificates: import the .p12
               under Your certificates, and {ca} under Authorities (trust for websites).
               On macOS/Windows this opens the system store: double-click the files instead, and
               on macOS set the CA to \"Always Trust\" in Keychain Access.
  Firefox:     Settings > Privacy & Security > Certificates > View Certificates: Your Certificates >
               Import the .p12; Authorities > Import {ca}, tick \"identify websites\".
  iOS/iPadOS:  AirDrop or mail both files, install them under Settings > Profile Downloaded,
               then enable the CA in Settings > General > About > Certificate Trust Settings.
  Android:     Settings > Security > Encryption & credentials > Install a certificate:
               \"CA certificate\" for {ca}, \"VPN & app user certificate\" for the .p12.
Keep the .p12 and .key files private: they are the user's identity.",
        bundles = bundles.join(", "),
    );
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}
