//! Records the git commit the bridge is built from (for `--version` and `welcome`), and
//! rebuilds when the embedded dashboard changes.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=IOT_BRIDGE_COMMIT={commit}{suffix}");
    // Rebuild when HEAD moves; a missing .git (e.g. a source tarball) is fine.
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/index");
    // rust-embed reads the dashboard at compile time; new files must trigger a rebuild too.
    println!("cargo:rerun-if-changed=../dashboard/public");
}
