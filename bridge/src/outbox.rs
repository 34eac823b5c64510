//! A session's bounded outgoing queue. The hub only ever pushes (never waits); when the queue is
//! full, telemetry is conflated to the newest value per device while everything else is kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// One encoded message, shared by every session that receives it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// `Some(device)` for telemetry, which may be conflated; `None` for everything else.
    pub conflate_key: Option<Arc<str>>,
    pub json: Utf8Bytes,
}

impl Frame {
    pub fn control(json: String) -> Frame {
        Frame {
            conflate_key: None,
            json: json.into(),
        }
    }

    pub fn telemetry(device: Arc<str>, json: String) -> Frame {
        Frame {
            conflate_key: Some(device),
            json: json.into(),
        }
    }
}

/// What a drain found besides frames.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrainInfo {
    /// Telemetry frames replaced by newer ones since the last drain.
    pub conflated: u64,
    /// When the queue first went over capacity and has not come back under since.
    pub over_since: Option<Instant>,
}

#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Frame>,
    conflated: u64,
    over_since: Option<Instant>,
    closed: bool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves a queue of frames, still consistent: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without ever blocking. Over capacity, a telemetry frame replaces the
    /// queued telemetry of the same device (newest value wins); other frames are always kept,
    /// and the session closes a client that stays over capacity (see `DrainInfo::over_since`).
    pub fn push(&self, frame: Frame) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        if inner.queue.len() >= self.capacity {
            if inner.over_since.is_none() {
                inner.over_since = Some(Instant::now());
            }
            if let Some(key) = &frame.conflate_key {
                let same_device = inner
                    .queue
                    .iter_mut()
                    .rev()
                    .find(|f| f.conflate_key.as_ref() == Some(key));
                if let Some(slot) = same_device {
                    *slot = frame;
                    inner.conflated += 1;
                    return;
                }
            }
        }
        inner.queue.push_back(frame);
        drop(inner);
        self.notify.notify_one();
    }

    /// Moves up to `max` frames into `out`.
    pub fn drain(&self, out: &mut Vec<Frame>, max: usize) -> DrainInfo {
        let mut inner = self.lock();
        let n = inner.queue.len().min(max);
        out.extend(inner.queue.drain(..n));
        if inner.queue.len() < self.capacity {
            inner.over_since = None;
        }
        let info = DrainInfo {
            conflated: std::mem::take(&mut inner.conflated),
            over_since: inner.over_since,
        };
        if !inner.queue.is_empty() {
            // More to send: make sure the writer comes back without waiting for a new push.
            self.notify.notify_one();
        }
        info
    }

    /// Resolves when frames may be waiting.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Stops accepting frames and frees the queue.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.queue = VecDeque::new();
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tele(dev: &str, n: u32) -> Frame {
        Frame::telemetry(Arc::from(dev), format!("{dev}:{n}"))
    }

    fn texts(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.json.as_str()).collect()
    }

    #[test]
    fn under_capacity_keeps_everything_in_order() {
        let ob = Outbox::new(4);
        ob.push(tele("a", 1));
        ob.push(Frame::control("c".into()));
        ob.push(tele("a", 2));
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 10);
        assert_eq!(texts(&out), ["a:1", "c", "a:2"]);
        assert_eq!(info, DrainInfo::default());
    }

    #[test]
    fn full_queue_conflates_telemetry_per_device_and_keeps_control() {
        let ob = Outbox::new(2);
        ob.push(tele("a", 1));
        ob.push(tele("b", 1));
        ob.push(tele("a", 2)); // replaces a:1 in place
        ob.push(Frame::control("status".into())); // never dropped
        ob.push(tele("b", 2)); // replaces b:1
        ob.push(tele("c", 1)); // a device with nothing queued still gets its latest value
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 100);
        assert_eq!(texts(&out), ["a:2", "b:2", "status", "c:1"]);
        assert_eq!(info.conflated, 2);
        assert!(info.over_since.is_none(), "drained below capacity");
    }

    #[test]
    fn over_since_persists_while_over_capacity() {
        let ob = Outbox::new(2);
        for n in 0..5 {
            ob.push(Frame::control(n.to_string()));
        }
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 1);
        assert!(info.over_since.is_some());
        assert_eq!(ob.len(), 4);
    }

    #[test]
    fn closed_outbox_drops_pushes() {
        let ob = Outbox::new(2);
        ob.push(tele("a", 1));
        ob.close();
        ob.push(tele("a", 2));
        assert!(ob.is_empty());
    }
}
