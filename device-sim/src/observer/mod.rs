//! The observer: a WebSocket client of the bridge (mutual TLS, `iotbridge.v1.json`) that watches
//! what a real client would see and sends commands for the expectations to judge.
//!
//! - `ws`: connecting (TLS with the observer's own certificate, the upgrade).
//! - `journal`: what was seen, recorded purely from the messages and their arrival times.
//!
//! One task owns the socket: it reads messages into the journal, sends the commands it is
//! handed through a bounded queue, and reconnects (subscribing again) if the bridge drops it.

mod journal;
mod ws;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use journal::{CommandRecord, Gap, Journal};
pub use ws::{ObserverOpts, SUBPROTOCOL};

/// Commands waiting to be written; a full queue refuses new ones (the rate is the scenario's).
const COMMAND_QUEUE: usize = 256;
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Why the observer could not talk to the bridge. Causes are in the messages, never `source`s
/// (see [`crate::SimError`]).
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebSocket: {0}")]
    WebSocket(tokio_tungstenite::tungstenite::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("timed out connecting to the bridge")]
    Timeout,
}

impl From<tokio_tungstenite::tungstenite::Error> for ObserverError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> ObserverError {
        ObserverError::WebSocket(e)
    }
}

struct Command {
    device: String,
    params: Value,
    timeout_ms: u64,
}

/// A running observer.
pub struct Observer {
    journal: Arc<Mutex<Journal>>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Observer {
    /// Starts watching; connection errors are retried and recorded in the journal. Times in the
    /// journal count from `origin`. Fails at once only on unusable certificates.
    pub fn start(opts: ObserverOpts, origin: Instant) -> Result<Observer, ObserverError> {
        let config = ws::client_config(&opts)?;
        let journal = Arc::new(Mutex::new(Journal::default()));
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(
            opts,
            config,
            origin,
            journal.clone(),
            rx,
            cancel.clone(),
        ));
        Ok(Observer {
            journal,
            commands,
            cancel,
            task,
        })
    }

    /// What was seen so far.
    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    /// Queues a `set` command; false if the queue is full or the observer has stopped.
    pub fn command(&self, device: &str, params: Value, timeout: Duration) -> bool {
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.commands
            .try_send(Command {
                device: device.to_string(),
                params,
                timeout_ms,
            })
            .is_ok()
    }

    /// Closes the connection and hands back everything that was seen.
    pub async fn stop(self) -> Journal {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
        let journal = lock(&self.journal).clone();
        journal
    }
}

fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    match journal.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn elapsed_ms(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn watch(
    opts: ObserverOpts,
    config: Arc<rustls::ClientConfig>,
    origin: Instant,
    journal: Arc<Mutex<Journal>>,
    mut commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
) {
    let mut next_req = 0u64;
    while !cancel.is_cancelled() {
        let result = tokio::select! {
            r = ws::connect(&opts, config.clone()) => r,
            _ = cancel.cancelled() => return,
        };
        match result {
            Ok(socket) => {
                let ended = session(
                    socket,
                    origin,
                    &journal,
                    &mut commands,
                    &cancel,
                    &mut next_req,
                )
                .await;
                if let Err(e) = ended {
                    warn!(error = %e, "observer connection ended; reconnecting");
                    lock(&journal).last_error = Some(e.to_string());
                }
            }
            Err(e) => {
                debug!(error = %e, "observer cannot connect yet");
                lock(&journal).last_error = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One connection: subscribe to everything, then record messages and send commands until the
/// bridge closes or the run ends.
async fn session(
    mut socket: ws::Socket,
    origin: Instant,
    journal: &Mutex<Journal>,
    commands: &mut mpsc::Receiver<Command>,
    cancel: &CancellationToken,
    next_req: &mut u64,
) -> Result<(), ObserverError> {
    let subscribe = json!({"type": "subscribe", "req": "observer-subscribe", "devices": ["*"]});
    socket.send(Message::text(subscribe.to_string())).await?;
    let mut queue_open = true;
    loop {
        tokio::select! {
            msg = socket.next() => {
                let text = match msg {
                    None => return Err(ObserverError::Protocol("the bridge closed the connection".into())),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        return Err(ObserverError::Protocol(format!("the bridge closed the connection: {frame:?}")))
                    }
                    // tungstenite answers pings by itself.
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<Value>(&text) {
                    Ok(value) => lock(journal).record(&value, elapsed_ms(origin)),
                    Err(e) => warn!(error = %e, "the bridge sent a frame that is not JSON"),
                }
            }
            cmd = commands.recv(), if queue_open => {
                let Some(cmd) = cmd else {
                    queue_open = false;
                    continue;
                };
                *next_req += 1;
                let req = format!("cmd-{next_req}");
                let msg = json!({
                    "type": "command", "req": req, "device": cmd.device, "action": "set",
                    "params": cmd.params, "timeout_ms": cmd.timeout_ms,
                });
                lock(journal).command_sent(&req, &cmd.device, elapsed_ms(origin));
                socket.send(Message::text(msg.to_string())).await?;
            }
            _ = cancel.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                return Ok(());
            }
        }
    }
}
