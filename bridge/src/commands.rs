//! The command table: every command in flight, its requester and deadline; matching device acks.
//!
//! Life of a command: `accepted` (checked, in the table) -> `sent` (handed to the broker link)
//! -> one final status: `ok` / `rejected` (the device's ack), `timeout`, or `offline`.
//! Every final status is written to the `audit` log target with the requester's identity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::mqtt_link::LinkHandle;
use crate::outbox::{Frame, Outbox};
use crate::payload::Ack;
use crate::protocol::{CommandStatus, Presence, ServerMsg, Wire};

#[derive(Debug)]
pub struct Commands {
    inner: Mutex<HashMap<String, Pending>>,
    instance: String,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Pending {
    req: Option<Value>,
    device: String,
    action: String,
    params: Map<String, Value>,
    identity: Arc<str>,
    outbox: Arc<Outbox>,
    wire: Wire,
    started: Instant,
}

/// A command as a session hands it over, already decoded.
#[derive(Debug)]
pub struct CommandRequest {
    pub req: Option<Value>,
    pub identity: Arc<str>,
    pub device: String,
    pub action: String,
    pub params: Map<String, Value>,
    pub timeout: Duration,
    pub outbox: Arc<Outbox>,
    pub wire: Wire,
}

/// A command that never entered the table; the session answers with an `error`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("invalid device id {0:?}")]
    InvalidDevice(String),
    #[error("unknown device {0:?}")]
    UnknownDevice(String),
    #[error("invalid action {0:?}: use 1 to 64 letters, digits, '_' or '-'")]
    InvalidAction(String),
}

impl Commands {
    pub fn new(instance: &str, metrics: Arc<Metrics>) -> Arc<Commands> {
        Arc::new(Commands {
            inner: Mutex::new(HashMap::new()),
            instance: instance.to_owned(),
            next: AtomicU64::new(1),
            metrics,
        })
    }

    /// Final status: to the requester, the audit log and the latency histogram.
    fn conclude(
        &self,
        p: &Pending,
        id: &str,
        status: CommandStatus,
        result: Option<&Value>,
        error: Option<&str>,
    ) {
        push_status(p, id, status, result, error);
        audit(p, id, status, error);
        self.metrics
            .command_done(status, p.started.elapsed().as_secs_f64());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Checks a command, and either answers it at once (`offline`) or publishes it and starts
    /// its deadline. Statuses go to the requester's outbox, in order.
    pub fn start(
        self: &Arc<Self>,
        hub: &Hub,
        link: &LinkHandle,
        r: CommandRequest,
    ) -> Result<(), CommandError> {
        if !crate::topic::is_valid_device_id(&r.device) {
            return Err(CommandError::InvalidDevice(r.device));
        }
        if !crate::topic::is_valid_device_id(&r.action) {
            return Err(CommandError::InvalidAction(r.action));
        }
        let presence = hub
            .presence(&r.device)
            .ok_or_else(|| CommandError::UnknownDevice(r.device.clone()))?;
        let timeout = r.timeout;
        let (id, pending) = self.enter(r);
        let offline_reason = match presence {
            Presence::Stale => Some("the bridge's link to the broker is down"),
            Presence::Offline => Some("device is offline"),
            Presence::Online | Presence::Unknown => None,
        };
        if let Some(reason) = offline_reason {
            self.conclude(&pending, &id, CommandStatus::Offline, None, Some(reason));
            return Ok(());
        }
        push_status(&pending, &id, CommandStatus::Accepted, None, None);
        let payload = serde_json::json!({
            "id": id,
            "action": pending.action,
            "params": pending.params,
        })
        .to_string();

        // Publishing under the table lock orders `sent` before any ack can be matched.
        let mut table = self.lock();
        if let Err(e) = link.try_publish_command(&pending.device, payload) {
            drop(table);
            let reason = format!("broker link cannot take the command: {e}");
            self.conclude(&pending, &id, CommandStatus::Offline, None, Some(&reason));
            return Ok(());
        }
        push_status(&pending, &id, CommandStatus::Sent, None, None);
        table.insert(id.clone(), pending);
        drop(table);

        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let reason = format!(
                "no answer from the device within {} ms",
                timeout.as_millis()
            );
            this.finish(&id, CommandStatus::Timeout, None, Some(&reason));
        });
        Ok(())
    }

    /// Gives a request its command id (`{instance}-{n}`) and starts its clock.
    fn enter(&self, r: CommandRequest) -> (String, Pending) {
        let id = format!(
            "{}-{}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let pending = Pending {
            req: r.req,
            device: r.device,
            action: r.action,
            params: r.params,
            identity: r.identity,
            outbox: r.outbox,
            wire: r.wire,
            started: Instant::now(),
        };
        (id, pending)
    }

    /// Refuses a command the requester may not send: a final `forbidden`, audited like any other.
    pub fn forbid(&self, r: CommandRequest) {
        let (id, pending) = self.enter(r);
        let reason = "this identity may not control this device";
        self.conclude(&pending, &id, CommandStatus::Forbidden, None, Some(reason));
    }

    /// A device answered. Acks for other bridge instances or from another device are ignored.
    pub fn on_ack(&self, device: &str, ack: Ack) {
        // Checked and taken under one lock: the timeout cannot conclude it in between.
        let pending = {
            let mut table = self.lock();
            match table.get(&ack.id) {
                Some(p) if p.device == device => table.remove(&ack.id),
                Some(p) => {
                    tracing::warn!(device, expected = %p.device, id = %ack.id, "ack from the wrong device ignored");
                    return;
                }
                None => {
                    tracing::debug!(device, id = %ack.id, "ack for no command of this instance");
                    return;
                }
            }
        };
        let Some(p) = pending else { return };
        let status = if ack.ok {
            CommandStatus::Ok
        } else {
            CommandStatus::Rejected
        };
        self.conclude(
            &p,
            &ack.id,
            status,
            ack.result.as_ref(),
            ack.error.as_deref(),
        );
    }

    /// Gives a command its final status, once; later calls for the same id do nothing.
    fn finish(&self, id: &str, status: CommandStatus, result: Option<&Value>, error: Option<&str>) {
        let Some(p) = self.lock().remove(id) else {
            return;
        };
        self.conclude(&p, id, status, result, error);
    }

    /// Ends every command in flight (shutdown): the requesters get a final `offline`.
    pub fn fail_all(&self, reason: &str) {
        let all: Vec<(String, Pending)> = self.lock().drain().collect();
        for (id, p) in all {
            self.conclude(&p, &id, CommandStatus::Offline, None, Some(reason));
        }
    }
}

fn push_status(
    p: &Pending,
    id: &str,
    status: CommandStatus,
    result: Option<&Value>,
    error: Option<&str>,
) {
    let msg = ServerMsg::CommandStatus {
        req: p.req.as_ref(),
        id,
        device: &p.device,
        status,
        result,
        error,
    };
    p.outbox.push(Frame::control(&msg, p.wire));
}

fn audit(p: &Pending, id: &str, status: CommandStatus, error: Option<&str>) {
    let params = serde_json::to_string(&p.params).unwrap_or_default();
    tracing::info!(
        target: "audit",
        identity = %p.identity,
        device = %p.device,
        action = %p.action,
        params = %params,
        command = id,
        outcome = status.as_str(),
        error = error.unwrap_or(""),
        latency_ms = p.started.elapsed().as_millis() as u64,
        "command"
    );
}
