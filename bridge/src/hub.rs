//! The hub: what the bridge knows of every device, who is subscribed to what, and the fan-out.
//!
//! The MQTT link calls `on_*` with decoded device data; the hub updates the device, encodes the
//! outgoing message once per wire format in use and pushes the shared bytes into each
//! subscribed session's outbox. Subscribing builds the snapshot (and any resume replay) under
//! the same lock as the fan-out, so a client sees every message after it exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::history::{HistoryLimits, Query, Ring, Sample};
use crate::outbox::{Frame, Held, Outbox};
use crate::protocol::{DeviceView, ListEntry, Presence, SampleView, ServerMsg, Wire, WireSet};
use crate::resume::ResumePoint;
use crate::telemetry::{self, Data, View};
use crate::topic::Pattern;

pub type SessionId = u64;

/// Decides which device ids a session may read (the ACL's answer for its identity). It must give
/// the same answer for an id for as long as the session holds it (a change of permissions is a
/// new scope, through `Hub::set_readable`): the hub relies on it to know where a session is listed.
pub type ReadScope = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Per-subscription options: a projection and a rate limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubOptions {
    pub fields: Option<Arc<[String]>>,
    pub min_interval: Option<Duration>,
}

pub struct Hub {
    inner: Mutex<Inner>,
    broker_up: AtomicBool,
    epoch: String,
    history: HistoryLimits,
    json_sessions: AtomicUsize,
    cbor_sessions: AtomicUsize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    devices: BTreeMap<Arc<str>, Device>,
    sessions: HashMap<SessionId, SessionSubs>,
    next_session: SessionId,
    /// Sessions gone since device lists were last swept of their entries (see `unregister`).
    gone_since_sweep: usize,
}

struct SessionSubs {
    outbox: Arc<Outbox>,
    wire: Wire,
    scope: Scope,
}

/// What a session reads: its ACL and its subscriptions. A session is on a device's subscriber
/// list exactly when its scope has an entry for the device.
#[derive(Clone)]
struct Scope {
    readable: ReadScope,
    /// Newest first; every pattern of one subscribe shares one subscriber entry.
    subs: Vec<(Pattern, Arc<Subscriber>)>,
}

impl Scope {
    /// The entry of the first subscription matching `id`, if the session may read it.
    fn subscriber_for(&self, id: &str) -> Option<&Arc<Subscriber>> {
        if !(self.readable)(id) {
            return None;
        }
        self.subs
            .iter()
            .find(|(p, _)| p.matches(id))
            .map(|(_, sub)| sub)
    }
}

/// What the fan-out needs of one subscription. Devices hold it by `Arc` next to the session's
/// id: with thousands of sessions on thousands of devices, each pair costs 16 bytes, and finding
/// a session in a device's list reads one contiguous array.
#[derive(Debug)]
struct Subscriber {
    outbox: Arc<Outbox>,
    wire: Wire,
    opts: SubOptions,
}

struct Device {
    id: Arc<str>,
    meta: Option<Value>,
    online: Option<bool>,
    state: Option<Map<String, Value>>,
    telemetry: Option<Arc<Data>>,
    telemetry_ts: Option<i64>,
    seq: u64,
    history: Ring,
    /// Sessions whose subscriptions match this device, kept in step on (un)subscribe.
    subscribers: Vec<(SessionId, Arc<Subscriber>)>,
}

/// Why a subscribe was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubscribeError {
    #[error("invalid device pattern {0:?}: use device ids with * and ?, at most 128 characters")]
    InvalidPattern(String),
    #[error("at most {0} subscriptions per connection")]
    TooMany(usize),
}

/// A subscribe request as the session hands it over.
#[derive(Debug)]
pub struct SubscribeRequest<'a> {
    pub patterns: &'a [String],
    pub req: Option<&'a Value>,
    /// `Some(None)`: the client gave a `since` the bridge cannot read.
    pub since: Option<Option<ResumePoint>>,
    pub opts: SubOptions,
    pub max_subscriptions: usize,
    /// The most telemetry messages a resume replays; a longer gap gets a fresh snapshot.
    pub max_replay: usize,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Hub {
    pub fn new(epoch: String, history: HistoryLimits) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner::default()),
            broker_up: AtomicBool::new(false),
            epoch,
            history,
            json_sessions: AtomicUsize::new(0),
            cbor_sessions: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Acquire)
    }

    pub fn device_count(&self) -> usize {
        self.lock().devices.len()
    }

    /// How many devices are in each presence, for metrics.
    pub fn presence_counts(&self) -> Vec<(Presence, i64)> {
        let inner = self.lock();
        let mut counts = [
            (Presence::Online, 0),
            (Presence::Offline, 0),
            (Presence::Stale, 0),
            (Presence::Unknown, 0),
        ];
        for d in inner.devices.values() {
            let p = self.presence_of(d);
            if let Some(c) = counts.iter_mut().find(|(q, _)| *q == p) {
                c.1 += 1;
            }
        }
        counts.to_vec()
    }

    /// Encodings wanted for shared frames, from the sessions connected now.
    fn wires(&self) -> WireSet {
        WireSet {
            json: self.json_sessions.load(Ordering::Relaxed) > 0,
            cbor: self.cbor_sessions.load(Ordering::Relaxed) > 0,
        }
    }

    fn counter(&self, wire: Wire) -> &AtomicUsize {
        match wire {
            Wire::Json => &self.json_sessions,
            Wire::Cbor => &self.cbor_sessions,
        }
    }

    /// Records the broker link state and tells every session when it changes.
    pub fn set_broker_up(&self, up: bool) {
        let mut inner = self.lock();
        if self.broker_up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        if !up {
            // What we knew is stale; the broker's retained status (replayed after reconnect)
            // confirms each device afresh and every confirmation reaches the clients.
            for d in inner.devices.values_mut() {
                d.online = None;
            }
        }
        let status = if up { "up" } else { "down" };
        let frame = Frame::new(&ServerMsg::Broker { status }, None, self.wires());
        for s in inner.sessions.values() {
            s.outbox.push(frame.clone());
        }
    }

    /// Wakes every session once to look at shared state (shutdown, a new ACL).
    pub fn nudge_sessions(&self) {
        let inner = self.lock();
        for s in inner.sessions.values() {
            s.outbox.nudge();
        }
    }

    fn presence_of(&self, d: &Device) -> Presence {
        match d.online {
            _ if !self.broker_up() => Presence::Stale,
            Some(true) => Presence::Online,
            Some(false) => Presence::Offline,
            None => Presence::Unknown,
        }
    }

    /// The device's presence, or `None` when the bridge has never heard of it.
    pub fn presence(&self, id: &str) -> Option<Presence> {
        let inner = self.lock();
        inner.devices.get(id).map(|d| self.presence_of(d))
    }

    /// Finds or creates a device; a new device gets every session whose subscriptions match it.
    fn device<'a>(inner: &'a mut Inner, id: &str) -> &'a mut Device {
        if !inner.devices.contains_key(id) {
            let subscribers = inner
                .sessions
                .iter()
                .filter_map(|(sid, s)| Some((*sid, s.scope.subscriber_for(id)?.clone())))
                .collect();
            let key: Arc<str> = Arc::from(id);
            let device = Device {
                id: key.clone(),
                meta: None,
                online: None,
                state: None,
                telemetry: None,
                telemetry_ts: None,
                seq: 0,
                history: Ring::default(),
                subscribers,
            };
            inner.devices.insert(key, device);
        }
        inner
            .devices
            .get_mut(id)
            .expect("present: inserted above if missing")
    }

    fn fan_out(&self, d: &Device, msg: &ServerMsg<'_>) {
        if d.subscribers.is_empty() {
            return;
        }
        let frame = Frame::new(msg, None, self.wires());
        for (_, s) in &d.subscribers {
            s.outbox.push(frame.clone());
        }
    }

    /// A retained `meta` arrived; `None` (an empty retained message) removes the device.
    pub fn on_meta(&self, id: &str, meta: Option<Value>) {
        let mut inner = self.lock();
        match meta {
            Some(meta) => {
                let d = Self::device(&mut inner, id);
                if d.meta.as_ref() == Some(&meta) {
                    return;
                }
                d.meta = Some(meta);
                let msg = ServerMsg::Device {
                    device: id,
                    meta: d.meta.as_ref(),
                    removed: false,
                };
                self.fan_out(d, &msg);
            }
            None => {
                if let Some(d) = inner.devices.remove(id) {
                    let msg = ServerMsg::Device {
                        device: id,
                        meta: None,
                        removed: true,
                    };
                    self.fan_out(&d, &msg);
                }
            }
        }
    }

    pub fn on_status(&self, id: &str, online: bool) {
        let mut inner = self.lock();
        let d = Self::device(&mut inner, id);
        if d.online == Some(online) {
            return;
        }
        d.online = Some(online);
        let msg = ServerMsg::Presence {
            device: id,
            presence: self.presence_of(d),
        };
        self.fan_out(d, &msg);
    }

    pub fn on_state(&self, id: &str, state: Map<String, Value>) {
        let mut inner = self.lock();
        let d = Self::device(&mut inner, id);
        let msg = ServerMsg::State {
            device: id,
            ts: now_ms(),
            state: &state,
        };
        self.fan_out(d, &msg);
        d.state = Some(state);
    }

    /// Telemetry: bumps the device's sequence number by one, records it, and fans out. `ts` is
    /// the device's time if it gave one.
    pub fn on_telemetry(&self, id: &str, ts: Option<i64>, data: Data) {
        let now = now_ms();
        let ts = ts.unwrap_or(now);
        let data = Arc::new(data);
        let wires = self.wires();
        let limits = self.history;
        let mut inner = self.lock();
        let d = Self::device(&mut inner, id);
        d.seq += 1;
        let seq = d.seq;
        d.history.push(
            Sample {
                seq,
                ts,
                data: data.clone(),
            },
            &limits,
            now,
        );
        d.telemetry = Some(data.clone());
        d.telemetry_ts = Some(ts);
        let mut full: Option<Frame> = None;
        // Parsed once, and only if some subscriber asked for a projection.
        let mut map: Option<Map<String, Value>> = None;
        for (_, s) in &d.subscribers {
            let frame = match &s.opts.fields {
                None => full
                    .get_or_insert_with(|| {
                        let msg = ServerMsg::Telemetry {
                            device: id,
                            seq,
                            ts,
                            data: View::Whole(&data),
                        };
                        Frame::new(&msg, Some(d.id.clone()), wires)
                    })
                    .clone(),
                Some(fields) => {
                    let map = map.get_or_insert_with(|| data.map());
                    let projected = telemetry::pick(map, fields);
                    if projected.is_empty() {
                        continue;
                    }
                    let msg = ServerMsg::Telemetry {
                        device: id,
                        seq,
                        ts,
                        data: View::Fields(projected),
                    };
                    Frame::new(&msg, Some(d.id.clone()), WireSet::only(s.wire))
                }
            };
            match s.opts.min_interval {
                Some(every) => s.outbox.push_throttled(frame, every),
                None => s.outbox.push(frame),
            }
        }
    }

    /// Adds a session whose outbox first gets `welcome(broker_up)`. Both happen under the lock
    /// that broker state changes take, so the welcome comes before anything the hub sends, and
    /// the broker state it tells is the one that later `broker` messages change.
    pub fn register(
        &self,
        outbox: Arc<Outbox>,
        wire: Wire,
        readable: ReadScope,
        welcome: impl FnOnce(bool) -> Frame,
    ) -> SessionId {
        let mut inner = self.lock();
        outbox.push(welcome(self.broker_up()));
        inner.next_session += 1;
        let id = inner.next_session;
        inner.sessions.insert(
            id,
            SessionSubs {
                outbox,
                wire,
                scope: Scope {
                    readable,
                    subs: Vec::new(),
                },
            },
        );
        self.counter(wire).fetch_add(1, Ordering::Relaxed);
        id
    }

    /// Forgets a session. Its closed outbox takes no more frames at once; its entries leave the
    /// device lists in a sweep once as many sessions have gone as are connected (at least
    /// `SWEEP_AFTER`), so when thousands of clients drop together (a network blip, a proxy
    /// restart) the hub does not search every device's list once per client under its lock.
    pub fn unregister(&self, session: SessionId) {
        const SWEEP_AFTER: usize = 64;
        let mut inner = self.lock();
        let Some(s) = inner.sessions.remove(&session) else {
            return;
        };
        s.outbox.close();
        self.counter(s.wire).fetch_sub(1, Ordering::Relaxed);
        inner.gone_since_sweep += 1;
        if inner.gone_since_sweep >= inner.sessions.len().max(SWEEP_AFTER) {
            let Inner {
                devices, sessions, ..
            } = &mut *inner;
            for d in devices.values_mut() {
                d.subscribers.retain(|(sid, _)| sessions.contains_key(sid));
            }
            inner.gone_since_sweep = 0;
        }
    }

    /// Changes what a session may read (ACL reload); devices it may no longer read stop at once.
    pub fn set_readable(&self, session: SessionId, readable: ReadScope) {
        let mut inner = self.lock();
        let Inner {
            devices, sessions, ..
        } = &mut *inner;
        let Some(s) = sessions.get_mut(&session) else {
            return;
        };
        let before = s.scope.clone();
        s.scope.readable = readable;
        Self::resync(devices, session, &before, s, Held::Send);
    }

    /// Brings every device's subscriber list in line with the session's scope, which was
    /// `before` (so a session's first subscribe appends, with no search through the lists).
    /// A device whose subscription changed ends its rate limit, and the frame held back by it
    /// goes as `on_change` says.
    fn resync(
        devices: &mut BTreeMap<Arc<str>, Device>,
        session: SessionId,
        before: &Scope,
        s: &SessionSubs,
        on_change: Held,
    ) {
        for (id, d) in devices.iter_mut() {
            let wanted = s.scope.subscriber_for(id);
            let at = match before.subscriber_for(id) {
                None => None,
                Some(_) => d.subscribers.iter().position(|(sid, _)| *sid == session),
            };
            match (wanted, at) {
                (Some(sub), Some(i)) => {
                    if !Arc::ptr_eq(&d.subscribers[i].1, sub) {
                        d.subscribers[i].1 = sub.clone();
                        s.outbox.end_throttle(id, on_change);
                    }
                }
                (Some(sub), None) => d.subscribers.push((session, sub.clone())),
                (None, Some(i)) => {
                    d.subscribers.swap_remove(i);
                    s.outbox.end_throttle(id, Held::Drop);
                }
                (None, None) => {}
            }
        }
    }

    /// Adds subscriptions and pushes the snapshot of every readable device they match (and,
    /// when resuming, exactly the telemetry the client missed) into the session's outbox.
    pub fn subscribe(
        &self,
        session: SessionId,
        r: SubscribeRequest<'_>,
    ) -> Result<(), SubscribeError> {
        let parsed = r
            .patterns
            .iter()
            .map(|p| Pattern::parse(p).ok_or_else(|| SubscribeError::InvalidPattern(p.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.lock();
        let Inner {
            devices, sessions, ..
        } = &mut *inner;
        let Some(s) = sessions.get_mut(&session) else {
            return Ok(());
        };
        let added = parsed
            .iter()
            .filter(|p| !s.scope.subs.iter().any(|(q, _)| q == *p))
            .count();
        if s.scope.subs.len() + added > r.max_subscriptions {
            return Err(SubscribeError::TooMany(r.max_subscriptions));
        }
        let before = s.scope.clone();
        // The newest subscribe decides the options of the patterns it names: put them first.
        s.scope.subs.retain(|(q, _)| !parsed.contains(q));
        let entry = Arc::new(Subscriber {
            outbox: s.outbox.clone(),
            wire: s.wire,
            opts: r.opts.clone(),
        });
        let mut subs: Vec<(Pattern, Arc<Subscriber>)> =
            parsed.iter().map(|p| (p.clone(), entry.clone())).collect();
        subs.append(&mut s.scope.subs);
        s.scope.subs = subs;
        // Every device whose subscription this changes is in the snapshot queued below.
        Self::resync(devices, session, &before, s, Held::Drop);

        let readable = &s.scope.readable;
        let matched: Vec<&Device> = devices
            .values()
            .filter(|d| readable(&d.id) && parsed.iter().any(|p| p.matches(&d.id)))
            .collect();
        let point = r
            .since
            .as_ref()
            .map(|p| p.as_ref().filter(|p| p.epoch == self.epoch));
        // A gap longer than the session's queue is not replayed: it would not fit, and the
        // `seqs` of a resume point are the client's word, so they could ask for every ring.
        let mut replay = 0u64;
        let recovered = match &point {
            Some(Some(point)) => matched.iter().all(|d| match point.seqs.get(&*d.id) {
                Some(seq) => {
                    replay += d.seq.saturating_sub(*seq);
                    replay <= r.max_replay as u64 && d.history.since(*seq, d.seq).is_some()
                }
                None => true,
            }),
            _ => false,
        };
        let resume_from = |d: &Device| -> Option<u64> {
            match (&point, recovered) {
                (Some(Some(p)), true) => p.seqs.get(&*d.id).copied(),
                _ => None,
            }
        };
        let fields = r.opts.fields.as_deref();
        let views = matched
            .iter()
            .map(|d| {
                let from = resume_from(d);
                DeviceView {
                    id: &d.id,
                    meta: d.meta.as_ref(),
                    presence: self.presence_of(d),
                    state: d.state.as_ref(),
                    // A resumed device gets its missed telemetry replayed instead.
                    telemetry: match from {
                        Some(_) => None,
                        None => d
                            .telemetry
                            .as_deref()
                            .map(|t| telemetry::project(t, fields)),
                    },
                    seq: from.unwrap_or(d.seq),
                    ts: if from.is_some() { None } else { d.telemetry_ts },
                }
            })
            .collect();
        let snapshot = ServerMsg::Snapshot {
            req: r.req,
            devices: views,
            epoch: &self.epoch,
            resume: crate::resume::token(&self.epoch, matched.iter().map(|d| (&*d.id, d.seq))),
            recovered: r.since.as_ref().map(|_| recovered),
        };
        s.outbox.push(Frame::control(&snapshot, s.wire));
        for d in &matched {
            let Some(from) = resume_from(d) else { continue };
            let Some(missed) = d.history.since(from, d.seq) else {
                continue;
            };
            for sample in missed {
                let data = telemetry::project(&sample.data, fields);
                if data.is_empty() {
                    continue;
                }
                let msg = ServerMsg::Telemetry {
                    device: &d.id,
                    seq: sample.seq,
                    ts: sample.ts,
                    data,
                };
                // Replayed messages are never conflated: the client asked for exactly these.
                s.outbox.push(Frame::control(&msg, s.wire));
            }
        }
        Ok(())
    }

    /// Removes subscriptions (patterns exactly as subscribed); returns those that existed.
    pub fn unsubscribe(&self, session: SessionId, patterns: &[String]) -> Vec<String> {
        let mut inner = self.lock();
        let Inner {
            devices, sessions, ..
        } = &mut *inner;
        let Some(s) = sessions.get_mut(&session) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        let before = s.scope.clone();
        s.scope.subs.retain(|(p, _)| {
            let drop = patterns.iter().any(|q| q == p.as_str());
            if drop {
                removed.push(p.as_str().to_owned());
            }
            !drop
        });
        Self::resync(devices, session, &before, s, Held::Send);
        removed
    }

    /// The answer to `list`: every device the session may read, briefly.
    pub fn list(&self, req: Option<&Value>, readable: &ReadScope, wire: Wire) -> Frame {
        let inner = self.lock();
        fn text<'a>(d: &'a Device, k: &str) -> Option<&'a str> {
            d.meta.as_ref()?.get(k)?.as_str()
        }
        let devices = inner
            .devices
            .values()
            .filter(|d| readable(&d.id))
            .map(|d| ListEntry {
                id: &d.id,
                kind: text(d, "kind"),
                name: text(d, "name"),
                room: text(d, "room"),
                presence: self.presence_of(d),
            })
            .collect();
        Frame::control(&ServerMsg::List { req, devices }, wire)
    }

    /// The answer to `history`, or `None` when the device is unknown (or not readable).
    pub fn history(
        &self,
        req: Option<&Value>,
        device: &str,
        q: &Query,
        readable: &ReadScope,
        wire: Wire,
    ) -> Option<Frame> {
        if !readable(device) {
            return None;
        }
        let inner = self.lock();
        let d = inner.devices.get(device)?;
        let only: Option<[String; 1]> = q.field.clone().map(|f| [f]);
        let samples = d
            .history
            .query(q)
            .into_iter()
            .map(|s| SampleView {
                seq: s.seq,
                ts: s.ts,
                data: telemetry::project(&s.data, only.as_ref().map(|f| &f[..])),
            })
            .collect();
        let msg = ServerMsg::History {
            req,
            device,
            field: q.field.as_deref(),
            samples,
        };
        Some(Frame::control(&msg, wire))
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
