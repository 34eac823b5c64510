//! Firing faults at a running fleet: choose the devices, tell each what to do, and end the fault
//! (reconnect, restore, back to normal) when its time is up, on a task the fleet tracks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::device::{Control, Shared};
use crate::fault::{AckMode, Fault, FaultAction, ModeChange};
use crate::fleet::Fleet;

/// A fault as fired: which devices it hit and when it started and ends.
#[derive(Debug, Clone)]
pub struct FiredFault {
    pub name: String,
    /// The fault's `type` (`disconnect`, `garbage`, ...).
    pub kind: &'static str,
    pub devices: Vec<String>,
    pub started: Instant,
    /// `None`: it does not end by itself (or was instantaneous).
    pub ends: Option<Instant>,
}

/// A device as the injector sees it: its shared counters and its control channel.
#[derive(Clone)]
struct Target {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
}

impl Target {
    /// Queues a request that has a reply, without waiting for the reply: a device busy writing
    /// to a slow broker must not hold up the timeline (or the other devices of the fault).
    async fn ask(&self, make: impl FnOnce(oneshot::Sender<()>) -> Control) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.control.send(make(tx)).await;
    }

    async fn tell(&self, msg: Control) {
        // A device that has stopped has nothing left to be told.
        let _ = self.control.send(msg).await;
    }
}

/// Sends one request to every target concurrently and waits for all of them.
async fn each<F, Fut>(targets: &[Target], f: F)
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    join_all(targets.iter().cloned().map(f)).await;
}

async fn kill_all(targets: &[Target]) {
    each(targets, |t| async move { t.ask(Control::Kill).await }).await;
}

async fn revive_all(targets: &[Target], immediate: bool) {
    each(targets, |t| async move {
        t.ask(|reply| Control::Revive { immediate, reply }).await
    })
    .await;
}

async fn mode_all(targets: &[Target], change: ModeChange) {
    let change = &change;
    each(targets, |t| async move {
        t.tell(Control::Mode(Box::new(change.clone()))).await
    })
    .await;
}

fn disturb(targets: &[Target], on: bool) {
    for t in targets {
        if on {
            t.shared.disturbed.fetch_add(1, Ordering::Relaxed);
        } else {
            // Never below zero, even if a fault ends twice.
            let _ = t
                .shared
                .disturbed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

/// Everything a fault does when it ends, run after `for` (or never, without one).
async fn end(action: FaultAction, targets: Vec<Target>) {
    match action {
        FaultAction::Disconnect { .. } => revive_all(&targets, false).await,
        FaultAction::ReconnectStorm | FaultAction::Flap { .. } => revive_all(&targets, true).await,
        FaultAction::Duplicate => mode_all(&targets, ModeChange::Duplicate(false)).await,
        FaultAction::Reorder => mode_all(&targets, ModeChange::Reorder(false)).await,
        FaultAction::ClockSkew { .. } => mode_all(&targets, ModeChange::Skew(0)).await,
        FaultAction::StopAcking | FaultAction::SlowAck { .. } => {
            mode_all(&targets, ModeChange::Acks(AckMode::Normal)).await
        }
        FaultAction::RetainedJunk { topic, .. } => {
            each(&targets, |t| async move {
                t.tell(Control::Restore(topic)).await
            })
            .await
        }
        FaultAction::Garbage { .. } => {}
    }
    if action.disturbs_commands() {
        disturb(&targets, false);
    }
}

/// Down for `period`, up for `period`, until `until`.
async fn flap(targets: &[Target], period: Duration, until: Instant, shutdown: &CancellationToken) {
    loop {
        kill_all(targets).await;
        if sleep_or_stop(period, until, shutdown).await {
            return;
        }
        revive_all(targets, true).await;
        if sleep_or_stop(period, until, shutdown).await {
            return;
        }
    }
}

/// Sleeps `d` (cut short at `until`); true when the fault is over or the fleet is stopping.
async fn sleep_or_stop(d: Duration, until: Instant, shutdown: &CancellationToken) -> bool {
    let wake = (Instant::now() + d).min(until);
    tokio::select! {
        _ = tokio::time::sleep_until(wake) => Instant::now() >= until,
        _ = shutdown.cancelled() => true,
    }
}

impl Fleet {
    /// Fires `fault` now: picks its devices (deterministically from its seed), tells each what to
    /// do, and schedules the fault's end after its duration on a task the fleet tracks. Returns
    /// once every chosen device has the request queued; each acts on it at its next turn.
    pub async fn fire(&self, fault: &Fault) -> FiredFault {
        let pairs: Vec<(&str, &str)> = self
            .devices
            .iter()
            .map(|d| (d.id(), d.shared.profile.kind.as_str()))
            .collect();
        let chosen = fault.choose(&pairs);
        let targets: Vec<Target> = chosen
            .iter()
            .map(|&i| Target {
                shared: self.devices[i].shared.clone(),
                control: self.devices[i].control.clone(),
            })
            .collect();
        let started = Instant::now();
        let ends = fault.duration.map(|d| started + d);
        info!(fault = %fault.name, kind = fault.action.type_name(), devices = targets.len(), "fault fired");
        if fault.action.disturbs_commands() {
            disturb(&targets, true);
        }
        match &fault.action {
            FaultAction::Disconnect { graceful: false } | FaultAction::ReconnectStorm => {
                kill_all(&targets).await
            }
            FaultAction::Disconnect { graceful: true } => {
                each(&targets, |t| async move { t.ask(Control::Stop).await }).await
            }
            FaultAction::Flap { .. } => {}
            FaultAction::Garbage { payload, messages } => {
                let (payload, messages) = (*payload, *messages);
                each(&targets, |t| async move {
                    t.tell(Control::Garbage { payload, messages }).await
                })
                .await
            }
            FaultAction::Duplicate => mode_all(&targets, ModeChange::Duplicate(true)).await,
            FaultAction::Reorder => mode_all(&targets, ModeChange::Reorder(true)).await,
            FaultAction::ClockSkew { offset_ms } => {
                mode_all(&targets, ModeChange::Skew(*offset_ms)).await
            }
            FaultAction::StopAcking => mode_all(&targets, ModeChange::Acks(AckMode::Stop)).await,
            FaultAction::SlowAck { latency } => {
                mode_all(&targets, ModeChange::Acks(AckMode::Slow(latency.clone()))).await
            }
            FaultAction::RetainedJunk { topic, payload } => {
                let (topic, payload) = (*topic, *payload);
                each(&targets, |t| async move {
                    t.tell(Control::Junk { topic, payload }).await
                })
                .await
            }
        }
        let fired = FiredFault {
            name: fault.name.clone(),
            kind: fault.action.type_name(),
            devices: targets.iter().map(|t| t.shared.id.clone()).collect(),
            started,
            ends,
        };
        let action = fault.action.clone();
        let shutdown = self.shutdown.clone();
        let name = fault.name.clone();
        match (ends, &action) {
            (Some(until), FaultAction::Flap { period }) => {
                let period = *period;
                self.tasks.spawn(async move {
                    flap(&targets, period, until, &shutdown).await;
                    if !shutdown.is_cancelled() {
                        end(action, targets).await;
                        info!(fault = %name, "fault ended");
                    }
                });
            }
            (Some(until), _) => {
                self.tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {
                            end(action, targets).await;
                            info!(fault = %name, "fault ended");
                        }
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
            (None, _) => {}
        }
        fired
    }
}
