//! The command table: every command in flight, its requester and deadline; matching device acks.
//!
//! Life of a command: `accepted` (checked, in the table) -> `sent` (handed to the broker link)
//! -> one final status: `ok` / `rejected` (the device's ack), `timeout`, or `offline`.
//! Every final status is written to the `audit` log target with the requester's identity.
//!
//! Deadlines live in the table beside the commands, in order, and one task ([`Commands::expire`])
//! sleeps until the earliest: no task or timer per command, and an answered command's deadline
//! leaves with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::mqtt_link::LinkHandle;
use crate::outbox::{Frame, Outbox};
use crate::payload::Ack;
use crate::protocol::{CommandStatus, Presence, ServerMsg, Wire};

#[derive(Debug)]
pub struct Commands {
    inner: Mutex<Table>,
    /// Wakes [`Commands::expire`] when a deadline earlier than all others enters.
    earlier: Notify,
    instance: String,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

/// The commands in flight by id, and their deadlines in order (`(deadline, n)` -> id).
#[derive(Debug, Default)]
struct Table {
    pending: HashMap<String, Pending>,
    deadlines: BTreeMap<(Instant, u64), String>,
}

impl Table {
    /// Takes a command out, with its deadline.
    fn remove(&mut self, id: &str) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        self.deadlines.remove(&p.deadline);
        Some(p)
    }

    /// Takes out every command whose deadline is `now` or earlier, earliest first.
    fn take_due(&mut self, now: Instant) -> Vec<(String, Pending)> {
        let mut due = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(p) = self.pending.remove(&id) {
                due.push((id, p));
            }
        }
        due
    }
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
    /// Its key in [`Table::deadlines`]: when it times out, and its number.
    deadline: (Instant, u64),
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
            inner: Mutex::new(Table::default()),
            earlier: Notify::new(),
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

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
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
        let table = self.lock();
        if let Err(e) = link.try_publish_command(&pending.device, payload) {
            drop(table);
            let reason = format!("broker link cannot take the command: {e}");
            self.conclude(&pending, &id, CommandStatus::Offline, None, Some(&reason));
            return Ok(());
        }
        push_status(&pending, &id, CommandStatus::Sent, None, None);
        self.track(table, id, pending);
        Ok(())
    }

    /// Enters a sent command (`table` is the lock, held since its publish) and wakes
    /// [`Commands::expire`] if its deadline comes before every other.
    fn track(&self, mut table: MutexGuard<'_, Table>, id: String, pending: Pending) {
        let key = pending.deadline;
        let earliest = table
            .deadlines
            .first_key_value()
            .is_none_or(|(k, _)| key < *k);
        table.deadlines.insert(key, id.clone());
        table.pending.insert(id, pending);
        drop(table);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Times out commands at their deadlines until `stop`: the one task that does.
    pub async fn expire(self: Arc<Self>, stop: CancellationToken) {
        loop {
            // Registered before the table is read: a deadline entering after the read still
            // wakes this loop.
            let earlier = self.earlier.notified();
            tokio::pin!(earlier);
            earlier.as_mut().enable();
            let next = self.lock().deadlines.first_key_value().map(|(k, _)| k.0);
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = earlier => continue,
                _ = sleep => {}
            }
            self.expire_due(Instant::now());
        }
    }

    /// Concludes every command whose deadline is `now` or earlier with `timeout`.
    fn expire_due(&self, now: Instant) {
        let due = self.lock().take_due(now);
        for (id, p) in due {
            let timeout = p.deadline.0 - p.started;
            let reason = format!(
                "no answer from the device within {} ms",
                timeout.as_millis()
            );
            self.conclude(&p, &id, CommandStatus::Timeout, None, Some(&reason));
        }
    }

    /// Gives a request its command id (`{instance}-{n}`) and starts its clock.
    fn enter(&self, r: CommandRequest) -> (String, Pending) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.instance);
        let started = Instant::now();
        let pending = Pending {
            req: r.req,
            device: r.device,
            action: r.action,
            params: r.params,
            identity: r.identity,
            outbox: r.outbox,
            wire: r.wire,
            started,
            deadline: (started + r.timeout, n),
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
            match table.pending.get(&ack.id) {
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

    /// Ends every command in flight (shutdown, or the broker link went down): the requesters
    /// get a final `offline` with `reason`.
    pub fn fail_all(&self, reason: &str) {
        let all: Vec<(String, Pending)> = {
            let mut table = self.lock();
            table.deadlines.clear();
            table.pending.drain().collect()
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Arc<Commands> {
        Commands::new("t", Arc::new(Metrics::new()))
    }

    /// Enters a command as `start` does once it is published, and returns its id.
    fn sent(commands: &Commands, outbox: &Arc<Outbox>, device: &str, timeout_ms: u64) -> String {
        let (id, pending) = commands.enter(CommandRequest {
            req: Some(Value::from(device)),
            identity: Arc::from("alice"),
            device: device.to_owned(),
            action: "set".to_owned(),
            params: Map::new(),
            timeout: Duration::from_millis(timeout_ms),
            outbox: outbox.clone(),
            wire: Wire::Json,
        });
        commands.track(commands.lock(), id.clone(), pending);
        id
    }

    /// `(device, status)` of every command status queued in `outbox`.
    fn statuses(outbox: &Outbox) -> Vec<(String, String)> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        outbox
            .drain_json()
            .iter()
            .map(|m| (text(&m["device"]), text(&m["status"])))
            .collect()
    }

    fn ack(id: &str) -> Ack {
        Ack {
            id: id.to_owned(),
            ok: true,
            result: None,
            error: None,
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_command_times_out_at_its_own_deadline_and_an_answered_one_never() {
        let commands = commands();
        let outbox = Outbox::new(100, usize::MAX);
        let stop = CancellationToken::new();
        let expiry = tokio::spawn(commands.clone().expire(stop.clone()));
        let t0 = Instant::now();
        // The long one first: the short one must wake the task sleeping on the long deadline.
        sent(&commands, &outbox, "slow", 5_000);
        settle().await;
        sent(&commands, &outbox, "mute", 300);
        let answered = sent(&commands, &outbox, "quick", 200);
        commands.on_ack("quick", ack(&answered));
        assert_eq!(statuses(&outbox), [("quick".into(), "ok".into())]);

        tokio::time::sleep_until(t0 + Duration::from_millis(299)).await;
        settle().await;
        assert_eq!(statuses(&outbox), []);
        tokio::time::sleep_until(t0 + Duration::from_millis(300)).await;
        settle().await;
        assert_eq!(statuses(&outbox), [("mute".into(), "timeout".into())]);
        assert_eq!(commands.in_flight(), 1);
        // The answered command's deadline left with it.
        assert_eq!(commands.lock().deadlines.len(), 1);

        tokio::time::sleep_until(t0 + Duration::from_millis(5_000)).await;
        settle().await;
        assert_eq!(statuses(&outbox), [("slow".into(), "timeout".into())]);
        assert_eq!(commands.in_flight(), 0);
        assert!(commands.lock().deadlines.is_empty());

        stop.cancel();
        expiry.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_after_the_timeout_changes_nothing() {
        let commands = commands();
        let outbox = Outbox::new(100, usize::MAX);
        let stop = CancellationToken::new();
        tokio::spawn(commands.clone().expire(stop.clone()));
        let id = sent(&commands, &outbox, "late", 100);
        tokio::time::sleep(Duration::from_millis(150)).await;
        settle().await;
        commands.on_ack("late", ack(&id));
        assert_eq!(statuses(&outbox), [("late".into(), "timeout".into())]);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_every_command_offline_and_clears_the_deadlines() {
        let commands = commands();
        let outbox = Outbox::new(100, usize::MAX);
        sent(&commands, &outbox, "a", 1_000);
        sent(&commands, &outbox, "b", 2_000);
        commands.fail_all("bridge shutting down");
        let mut got = statuses(&outbox);
        got.sort();
        assert_eq!(
            got,
            [
                ("a".into(), "offline".into()),
                ("b".into(), "offline".into())
            ]
        );
        assert!(commands.lock().deadlines.is_empty());
    }
}
