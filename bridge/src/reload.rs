//! Reloading the ACL and the TLS files (certificate, key, client CA, CRL) without a restart:
//! on a signal from the binary (SIGHUP) or when a file's modification time changes. A file that
//! does not load leaves the previous version in force and is logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::acl::Acl;
use crate::Shared;

/// Loads the ACL named by the config, or full access when there is none.
pub fn load_acl(shared_config: &crate::Config) -> Result<Acl, crate::acl::AclError> {
    match &shared_config.security.acl {
        Some(path) => Acl::load(path),
        None => Ok(Acl::allow_all()),
    }
}

fn watched(config: &crate::Config) -> Vec<PathBuf> {
    let mut files = vec![
        config.tls.cert.clone(),
        config.tls.key.clone(),
        config.tls.client_ca.clone(),
    ];
    files.extend(config.tls.crl.clone());
    files.extend(config.security.acl.clone());
    files
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Runs until shutdown, reloading when `trigger` fires or a watched file changes.
pub async fn watch(shared: Arc<Shared>, trigger: Arc<Notify>) {
    let files = watched(&shared.config);
    let mut last = stamps(&files);
    let poll = shared.config.security.reload_poll_secs;
    let mut tick = tokio::time::interval(Duration::from_secs(poll.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = trigger.notified() => {}
            _ = tick.tick(), if poll > 0 => {
                let now = stamps(&files);
                if now == last {
                    continue;
                }
                // Give writers a moment to finish (editors write, then rename).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        last = stamps(&files);
        reload(&shared);
    }
}

/// Loads everything again; what fails to load keeps its previous version.
pub fn reload(shared: &Shared) {
    match load_acl(&shared.config) {
        Ok(acl) => {
            shared.set_acl(acl);
            info!("ACL reloaded");
        }
        Err(e) => error!(error = %e, "ACL reload failed, keeping the previous one"),
    }
    match crate::tls::server_config(&shared.config.tls) {
        Ok(tls) => {
            shared.set_tls(tls);
            info!("TLS certificates reloaded");
        }
        Err(e) => warn!(error = %e, "TLS reload failed, keeping the previous certificates"),
    }
}
