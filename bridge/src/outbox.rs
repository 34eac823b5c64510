//! A session's bounded outgoing queue. The hub only ever pushes (never waits); when the queue is
//! full, telemetry is conflated to the newest value per device while everything else is kept.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::{self, ServerMsg, Wire, WireSet};

/// One encoded message, shared by every session that receives it. It carries the encodings
/// that some session wanted when it was made; a session converts from the other if needed.
///
/// One `Arc` around all of it: handing a frame to a thousand sessions and dropping it after
/// the write costs one reference count each, not one per field.
#[derive(Debug, Clone)]
pub struct Frame(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    /// `Some(device)` for telemetry, which may be conflated; `None` for everything else.
    conflate_key: Option<Arc<str>>,
    /// The message's [`ServerMsg::type_index`], for metrics.
    type_index: usize,
    json: Option<Utf8Bytes>,
    cbor: Option<Bytes>,
}

impl Frame {
    /// Encodes `msg` once in each wanted format (at least one).
    pub fn new(msg: &ServerMsg<'_>, conflate_key: Option<Arc<str>>, wire: WireSet) -> Frame {
        Frame(Arc::new(Encoded {
            conflate_key,
            type_index: msg.type_index(),
            json: (wire.json || !wire.cbor).then(|| msg.to_json().into()),
            cbor: wire.cbor.then(|| Bytes::from(msg.to_cbor())),
        }))
    }

    /// `Some(device)` for telemetry, which may be conflated; `None` for everything else.
    pub fn conflate_key(&self) -> Option<&Arc<str>> {
        self.0.conflate_key.as_ref()
    }

    /// The message's [`ServerMsg::type_index`], for metrics.
    pub fn type_index(&self) -> usize {
        self.0.type_index
    }

    /// A message for one session only, in its format.
    pub fn control(msg: &ServerMsg<'_>, wire: Wire) -> Frame {
        Frame::new(msg, None, WireSet::only(wire))
    }

    /// The WebSocket message for a session speaking `wire`.
    pub fn message(&self, wire: Wire) -> Message {
        match (wire, &self.0.json, &self.0.cbor) {
            (Wire::Json, Some(json), _) => Message::Text(json.clone()),
            (Wire::Cbor, _, Some(cbor)) => Message::Binary(cbor.clone()),
            (Wire::Json, None, Some(cbor)) => Message::Text(protocol::cbor_to_json(cbor).into()),
            (Wire::Cbor, Some(json), None) => {
                Message::Binary(protocol::json_to_cbor(json.as_str()).into())
            }
            (_, None, None) => Message::Text(Utf8Bytes::from_static("{}")),
        }
    }

    /// Encoded size, for the queue's byte budget.
    pub fn len(&self) -> usize {
        match (&self.0.json, &self.0.cbor) {
            (Some(j), _) => j.len(),
            (None, Some(c)) => c.len(),
            (None, None) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The JSON text, for tests and logs.
    pub fn json(&self) -> String {
        match self.message(Wire::Json) {
            Message::Text(t) => t.as_str().to_owned(),
            _ => String::new(),
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

/// Queue slots an empty outbox keeps (a frame slot is about 90 bytes).
const KEEP_QUEUE_CAPACITY: usize = 32;

/// One producer side (the hub, command results, the session itself) and one consumer, the
/// session's task. Readiness is level-triggered: the session is ready while frames are queued,
/// and it is woken only when a push finds the queue empty and the session waiting.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Frame>,
    /// Encoded size of everything in `queue`: frames are bounded in count and in bytes.
    bytes: usize,
    conflated: u64,
    over_since: Option<Instant>,
    closed: bool,
    /// The session's task, while it waits for an empty queue to fill.
    waker: Option<Waker>,
    /// The session should look at its state again: a held frame's due time changed (its
    /// timer needs re-arming), or shared state did (shutdown, permissions).
    attention: bool,
    /// The keepalive wheel asked the session to ping its client.
    ping: bool,
    /// While set, queued frames make the session ready only once they reach this many frames
    /// or bytes, or a frame other than telemetry is queued (see [`Outbox::hold`]).
    hold: Option<Hold>,
    /// A frame that must not wait (a reply, a status, a notice) is queued.
    urgent: bool,
    /// Per-device rate limits asked for with `max_rate_hz`: newest value wins while held.
    throttle: HashMap<Arc<str>, Throttle>,
}

/// Thresholds of [`Outbox::hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub frames: usize,
    pub bytes: usize,
}

impl Inner {
    /// Whether the queued frames are for the session to write now.
    fn has_work(&self) -> bool {
        !self.queue.is_empty()
            && match self.hold {
                None => true,
                Some(h) => self.urgent || self.queue.len() >= h.frames || self.bytes >= h.bytes,
            }
    }
}

/// What becomes of a frame held back by a rate limit that ends (see [`Outbox::end_throttle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Nobody wants it any more, or a snapshot about to be queued carries it.
    Drop,
    /// Still wanted, and due before anything newer.
    Send,
}

#[derive(Debug)]
struct Throttle {
    next_allowed: Instant,
    interval: Duration,
    held: Option<Frame>,
}

/// Wakes the session if it is waiting, once the lock is let go.
fn wake_session(mut inner: MutexGuard<'_, Inner>) {
    let waker = inner.waker.take();
    drop(inner);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Outbox {
    /// A queue of at most `capacity` frames or `max_bytes` (beyond which telemetry conflates).
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            inner: Mutex::new(Inner::default()),
            capacity,
            max_bytes,
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
        if self.push_locked(&mut inner, frame) {
            wake_session(inner);
        }
    }

    /// [`Outbox::push`] under a lock the caller holds (so that what it decided under that lock,
    /// such as the order of two frames, holds in the queue); returns whether to wake the session.
    fn push_locked(&self, inner: &mut Inner, frame: Frame) -> bool {
        if inner.closed {
            return false;
        }
        if inner.queue.len() >= self.capacity || inner.bytes >= self.max_bytes {
            if inner.over_since.is_none() {
                inner.over_since = Some(Instant::now());
            }
            if let Some(key) = frame.conflate_key() {
                let same_device = inner
                    .queue
                    .iter_mut()
                    .rev()
                    .find(|f| f.conflate_key() == Some(key));
                if let Some(slot) = same_device {
                    let old = std::mem::replace(slot, frame);
                    let new_len = slot.len();
                    inner.bytes = inner.bytes - old.len() + new_len;
                    inner.conflated += 1;
                    return false;
                }
            }
        }
        inner.urgent |= frame.conflate_key().is_none();
        inner.bytes += frame.len();
        inner.queue.push_back(frame);
        // Only the first frame (or, while held, the one that makes the queue worth a write)
        // finds the session waiting: it drains everything queued behind it.
        inner.has_work()
    }

    /// Queues telemetry at most once per `interval` per device; in between, the newest frame is
    /// held and released by [`Outbox::release_due`] when its time comes.
    pub fn push_throttled(&self, frame: Frame, interval: Duration) {
        let Some(key) = frame.conflate_key().cloned() else {
            return self.push(frame);
        };
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let slot = inner.throttle.entry(key).or_insert(Throttle {
            next_allowed: now,
            interval,
            held: None,
        });
        slot.interval = interval;
        if now < slot.next_allowed {
            if slot.held.replace(frame).is_some() {
                inner.conflated += 1;
                return;
            }
            // A newly held frame may be due before the session's timer: it re-arms.
            drop(inner);
            return self.nudge();
        }
        slot.next_allowed = now + interval;
        // A frame still held here was due but not yet released (the session's timer fires
        // late on a busy runtime). This newer one goes instead: released later, the older
        // one would arrive after it.
        if slot.held.take().is_some() {
            inner.conflated += 1;
        }
        if self.push_locked(&mut inner, frame) {
            wake_session(inner);
        }
    }

    /// When the earliest held frame may be sent.
    pub fn next_due(&self) -> Option<Instant> {
        let inner = self.lock();
        inner
            .throttle
            .values()
            .filter(|t| t.held.is_some())
            .map(|t| t.next_allowed)
            .min()
    }

    /// Queues every held frame whose time has come. Under one lock with taking them: a newer
    /// frame of the same device, finding its slot open right after, must queue behind them.
    pub fn release_due(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut due = Vec::new();
        for t in inner.throttle.values_mut() {
            if t.next_allowed <= now {
                if let Some(frame) = t.held.take() {
                    t.next_allowed = now + t.interval;
                    due.push(frame);
                }
            }
        }
        let mut wake = false;
        for frame in due {
            wake |= self.push_locked(&mut inner, frame);
        }
        if wake {
            wake_session(inner);
        }
    }

    /// Ends the rate limit of `device`, whose subscription changed or ended. A frame it held
    /// back is dropped or queued now, as `held` says: left in place, it would come after newer
    /// telemetry, or after a snapshot that already carries it.
    pub fn end_throttle(&self, device: &str, held: Held) {
        let mut inner = self.lock();
        let frame = inner.throttle.remove(device).and_then(|t| t.held);
        if let (Some(frame), Held::Send) = (frame, held) {
            if self.push_locked(&mut inner, frame) {
                wake_session(inner);
            }
        }
    }

    /// Moves up to `max` frames, and about `max_bytes` (at least one frame), into `out`.
    pub fn drain(&self, out: &mut Vec<Frame>, max: usize, max_bytes: usize) -> DrainInfo {
        let mut inner = self.lock();
        let mut taken = 0;
        while out.len() < max && (taken < max_bytes || out.is_empty()) {
            let Some(frame) = inner.queue.pop_front() else {
                break;
            };
            taken += frame.len();
            out.push(frame);
        }
        inner.bytes -= taken;
        // Hysteresis: a client is only back in good standing once it has worked its queue
        // down to half, not after every batch that dips below the limit.
        if inner.queue.len() <= self.capacity / 2 && inner.bytes <= self.max_bytes / 2 {
            inner.over_since = None;
        }
        let info = DrainInfo {
            conflated: std::mem::take(&mut inner.conflated),
            over_since: inner.over_since,
        };
        if inner.queue.is_empty() {
            inner.urgent = false;
            if inner.queue.capacity() > KEEP_QUEUE_CAPACITY {
                // A burst is over: an idle session does not keep room for the next one.
                inner.queue = VecDeque::new();
            }
        }
        info
    }

    /// Holds queued telemetry back until it reaches `hold`'s frames or bytes, or until
    /// [`Outbox::release`]: the session's write pacing under load (`session::Pacer`). Frames of
    /// other kinds are never held. Returns whether it holds: when what is queued is already
    /// worth a write, it does not.
    pub fn hold(&self, hold: Hold) -> bool {
        let mut inner = self.lock();
        inner.hold = Some(hold);
        if inner.has_work() {
            inner.hold = None;
            return false;
        }
        true
    }

    /// Ends a hold. Returns whether frames are queued.
    pub fn release(&self) -> bool {
        let mut inner = self.lock();
        inner.hold = None;
        inner.has_work()
    }

    /// Wakes the session once to look at its state (see [`Outbox::poll_ready`]).
    pub fn nudge(&self) {
        let mut inner = self.lock();
        inner.attention = true;
        wake_session(inner);
    }

    /// Asks the session to ping its client (see `keepalive`); it is ready until it takes it.
    pub fn ping_due(&self) {
        let mut inner = self.lock();
        inner.ping = true;
        wake_session(inner);
    }

    /// Whether a ping is due, clearing the request.
    pub fn take_ping(&self) -> bool {
        std::mem::take(&mut self.lock().ping)
    }

    /// Ready while frames are queued (and not held, see [`Outbox::hold`]) or a ping is due,
    /// and once after each [`Outbox::nudge`].
    /// Polling it costs one uncontended lock: the session polls it on every turn of its loop.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if inner.has_work() || inner.ping || std::mem::take(&mut inner.attention) {
            return Poll::Ready(());
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Resolves when [`Outbox::poll_ready`] is ready.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + '_ {
        poll_fn(|cx| self.poll_ready(cx))
    }

    /// Stops accepting frames and frees the queue.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waker = None;
        inner.queue = VecDeque::new();
        inner.bytes = 0;
        inner.throttle = HashMap::new();
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
impl Outbox {
    /// Takes every queued frame, as JSON: what a JSON client would be sent.
    pub(crate) fn drain_json(&self) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        self.drain(&mut frames, usize::MAX, usize::MAX);
        frames
            .iter()
            .map(|f| serde_json::from_str(&f.json()).expect("frames are JSON"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(key: Option<&str>, s: &str) -> Frame {
        Frame(Arc::new(Encoded {
            conflate_key: key.map(Arc::from),
            type_index: 0,
            json: Some(s.into()),
            cbor: None,
        }))
    }

    fn text(s: &str) -> Frame {
        frame(None, s)
    }

    fn tele(dev: &str, n: u32) -> Frame {
        frame(Some(dev), &format!("{dev}:{n}"))
    }

    fn texts(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(Frame::json).collect()
    }

    #[test]
    fn under_capacity_keeps_everything_in_order() {
        let ob = Outbox::new(4, usize::MAX);
        ob.push(tele("a", 1));
        ob.push(text("c"));
        ob.push(tele("a", 2));
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 10, usize::MAX);
        assert_eq!(texts(&out), ["a:1", "c", "a:2"]);
        assert_eq!(info, DrainInfo::default());
    }

    /// Counts the wake-ups it is given.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_frame_wakes_the_writer_and_the_rest_ride_along() {
        let ob = Outbox::new(100, usize::MAX);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let count = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(ob.poll_ready(&mut cx).is_pending(), "nothing queued yet");
        ob.push(text("1"));
        ob.push(text("2"));
        assert_eq!(count(), 1, "one wake for both frames");
        assert!(ob.poll_ready(&mut cx).is_ready(), "ready while frames wait");
        let mut out = Vec::new();
        ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["1", "2"]);
        assert!(ob.poll_ready(&mut cx).is_pending(), "drained");
        assert!(
            ob.poll_ready(&mut cx).is_pending(),
            "polling again is no wake"
        );
        assert_eq!(count(), 1);
        ob.push(text("3"));
        assert_eq!(count(), 2, "an emptied queue wakes again");
        ob.push(text("4"));
        assert_eq!(count(), 2, "the session was woken already");
    }

    #[test]
    fn held_telemetry_wakes_the_writer_only_when_worth_a_write() {
        let ob = Outbox::new(100, usize::MAX);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let count = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        let hold = Hold {
            frames: 3,
            bytes: usize::MAX,
        };
        assert!(ob.hold(hold), "nothing queued: held");
        assert!(ob.poll_ready(&mut cx).is_pending());
        ob.push(tele("a", 1));
        ob.push(tele("b", 1));
        assert_eq!(count(), 0, "two held frames are not a write yet");
        assert!(ob.poll_ready(&mut cx).is_pending(), "held, not ready");
        ob.push(tele("a", 2));
        assert_eq!(count(), 1, "the third makes a batch");
        assert!(ob.poll_ready(&mut cx).is_ready(), "ready");
        assert!(!ob.hold(hold), "worth a write: not held");
        let mut out = Vec::new();
        ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["a:1", "b:1", "a:2"]);
        assert!(ob.hold(hold), "emptied: held again");

        // Anything but telemetry goes at once, and takes the held telemetry with it.
        assert!(ob.poll_ready(&mut cx).is_pending());
        ob.push(tele("a", 3));
        assert_eq!(count(), 1);
        ob.push(text("reply"));
        assert_eq!(count(), 2, "a reply does not wait");
        out.clear();
        ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["a:3", "reply"]);

        // Draining clears the urgency; ending the hold releases what waits.
        assert!(ob.poll_ready(&mut cx).is_pending());
        ob.push(tele("b", 2));
        assert_eq!(count(), 2, "held again");
        assert!(ob.poll_ready(&mut cx).is_pending());
        assert!(ob.release(), "released");
        assert!(ob.poll_ready(&mut cx).is_ready(), "ready without a wake-up");
    }

    #[test]
    fn held_telemetry_is_worth_a_write_at_the_byte_threshold_too() {
        let ob = Outbox::new(100, usize::MAX);
        let hold = Hold {
            frames: 100,
            bytes: 2 * tele("a", 1).len(),
        };
        assert!(ob.hold(hold));
        ob.push(tele("a", 1));
        assert!(ob.hold(hold), "one frame's bytes: held");
        ob.push(tele("a", 2));
        assert!(!ob.hold(hold), "two frames' bytes: worth a write");
    }

    #[tokio::test(start_paused = true)]
    async fn a_newly_held_frame_makes_the_session_rearm_once() {
        let ob = Outbox::new(16, usize::MAX);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let every = Duration::from_millis(100);
        ob.push_throttled(tele("a", 1), every);
        let mut out = Vec::new();
        ob.drain(&mut out, 100, usize::MAX);
        assert!(ob.poll_ready(&mut cx).is_pending());
        ob.push_throttled(tele("a", 2), every); // held: due time is new
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(ob.poll_ready(&mut cx).is_ready(), "re-arm");
        assert!(ob.poll_ready(&mut cx).is_pending(), "once");
        ob.push_throttled(tele("a", 3), every); // replaces the held one: same due time
        assert!(ob.poll_ready(&mut cx).is_pending());
    }

    #[test]
    fn an_emptied_queue_gives_back_the_room_of_a_burst() {
        let ob = Outbox::new(1000, usize::MAX);
        for i in 0..500 {
            ob.push(text(&i.to_string()));
        }
        let mut out = Vec::new();
        ob.drain(&mut out, 100, usize::MAX);
        assert!(
            ob.lock().queue.capacity() >= 400,
            "still working through the burst"
        );
        ob.drain(&mut out, 1000, usize::MAX);
        assert_eq!(out.len(), 500);
        assert!(ob.lock().queue.capacity() <= KEEP_QUEUE_CAPACITY);
    }

    #[test]
    fn full_queue_conflates_telemetry_per_device_and_keeps_control() {
        let ob = Outbox::new(2, usize::MAX);
        ob.push(tele("a", 1));
        ob.push(tele("b", 1));
        ob.push(tele("a", 2)); // replaces a:1 in place
        ob.push(text("status")); // never dropped
        ob.push(tele("b", 2)); // replaces b:1
        ob.push(tele("c", 1)); // a device with nothing queued still gets its latest value
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["a:2", "b:2", "status", "c:1"]);
        assert_eq!(info.conflated, 2);
        assert!(info.over_since.is_none(), "drained below capacity");
    }

    #[test]
    fn over_since_persists_while_over_capacity() {
        let ob = Outbox::new(2, usize::MAX);
        for n in 0..5 {
            ob.push(text(&n.to_string()));
        }
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 1, usize::MAX);
        assert!(info.over_since.is_some());
        assert_eq!(ob.len(), 4);
    }

    #[test]
    fn closed_outbox_drops_pushes() {
        let ob = Outbox::new(2, usize::MAX);
        ob.push(tele("a", 1));
        ob.close();
        ob.push(tele("a", 2));
        assert!(ob.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_holds_newest_and_releases_on_time() {
        let ob = Outbox::new(16, usize::MAX);
        let every = Duration::from_millis(100);
        ob.push_throttled(tele("a", 1), every); // first one goes at once
        ob.push_throttled(tele("a", 2), every); // held
        ob.push_throttled(tele("a", 3), every); // replaces the held one
        ob.push_throttled(tele("b", 1), every); // other device: own budget
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["a:1", "b:1"]);
        assert_eq!(info.conflated, 1, "a:2 was replaced while held");
        assert!(ob.next_due().is_some());
        ob.release_due();
        assert!(ob.is_empty(), "not due yet");
        tokio::time::advance(every).await;
        ob.release_due();
        out.clear();
        let info = ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["a:3"]);
        assert_eq!(info.conflated, 0);
        assert!(ob.next_due().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_finds_its_slot_open_supersedes_the_held_one() {
        // The session's timer can fire late (a busy runtime): a newer frame arrives after the
        // held one is due but before release_due runs. It goes at once, and the older one must
        // not follow it later, out of order.
        let ob = Outbox::new(16, usize::MAX);
        let every = Duration::from_millis(100);
        ob.push_throttled(tele("a", 1), every);
        ob.push_throttled(tele("a", 2), every); // held
        tokio::time::advance(every).await; // a:2 is due, but nobody released it yet
        ob.push_throttled(tele("a", 3), every); // newer: goes now
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 100, usize::MAX);
        assert_eq!(texts(&out), ["a:1", "a:3"]);
        assert_eq!(info.conflated, 1, "a:2 was superseded");
        assert!(ob.next_due().is_none(), "nothing left held");
        tokio::time::advance(every).await;
        ob.release_due();
        assert!(ob.is_empty(), "a:2 never comes after a:3");
    }

    #[test]
    fn frames_convert_between_wire_formats() {
        let msg = ServerMsg::Broker { status: "up" };
        let json_only = Frame::new(&msg, None, WireSet::only(Wire::Json));
        let cbor_only = Frame::new(&msg, None, WireSet::only(Wire::Cbor));
        let as_json = |m: Message| match m {
            Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap(),
            Message::Binary(b) => ciborium::from_reader(&b[..]).unwrap(),
            other => panic!("{other:?}"),
        };
        for f in [&json_only, &cbor_only] {
            assert_eq!(
                as_json(f.message(Wire::Json)),
                as_json(f.message(Wire::Cbor))
            );
            assert!(matches!(f.message(Wire::Cbor), Message::Binary(_)));
        }
    }

    #[test]
    fn bytes_bound_the_queue_and_the_batches() {
        let big = |dev: &str, n: u32| frame(Some(dev), &format!("{dev}:{n}:{}", "x".repeat(1000)));
        let ob = Outbox::new(1000, 3000);
        for n in 0..3 {
            ob.push(big("a", n)); // three frames of ~1 KB reach the byte budget
        }
        ob.push(big("a", 3)); // over budget: replaces a:2
        assert_eq!(ob.len(), 3);
        let mut out = Vec::new();
        let info = ob.drain(&mut out, 100, 1500);
        assert_eq!(out.len(), 2, "a batch stops once it has its bytes");
        assert_eq!(info.conflated, 1);
        out.clear();
        ob.drain(&mut out, 100, 1);
        assert_eq!(texts(&out)[0][..4], *"a:3:", "the newest value survived");
    }
}
