//! The hub: what the bridge knows of every device, who is subscribed to what, and the fan-out.
//!
//! The MQTT link calls `on_*` with decoded device data; the hub updates the device, encodes the
//! outgoing message once and pushes the shared bytes into each subscribed session's outbox.
//! Subscribing builds the snapshot under the same lock as the fan-out, so a client sees every
//! message after its snapshot exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::outbox::{Frame, Outbox};
use crate::protocol::{DeviceView, ListEntry, Presence, ServerMsg};
use crate::topic::Pattern;

pub type SessionId = u64;

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    broker_up: AtomicBool,
    epoch: String,
}

#[derive(Debug, Default)]
struct Inner {
    devices: BTreeMap<Arc<str>, Device>,
    sessions: HashMap<SessionId, SessionSubs>,
    next_session: SessionId,
}

#[derive(Debug)]
struct SessionSubs {
    outbox: Arc<Outbox>,
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Device {
    id: Arc<str>,
    meta: Option<Value>,
    online: Option<bool>,
    state: Option<Map<String, Value>>,
    telemetry: Option<Map<String, Value>>,
    telemetry_ts: Option<i64>,
    seq: u64,
    /// Sessions whose patterns match this device, kept in step on (un)subscribe.
    subscribers: Vec<(SessionId, Arc<Outbox>)>,
}

/// Why a subscribe was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubscribeError {
    #[error("invalid device pattern {0:?}: use device ids with * and ?, at most 128 characters")]
    InvalidPattern(String),
    #[error("at most {0} subscriptions per connection")]
    TooMany(usize),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Hub {
    pub fn new(epoch: String) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner::default()),
            broker_up: AtomicBool::new(false),
            epoch,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Acquire)
    }

    pub fn device_count(&self) -> usize {
        self.lock().devices.len()
    }

    /// Records the broker link state and tells every session when it changes.
    pub fn set_broker_up(&self, up: bool) {
        let inner = self.lock();
        if self.broker_up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        let frame = Frame::control(
            ServerMsg::Broker {
                status: if up { "up" } else { "down" },
            }
            .to_json(),
        );
        for s in inner.sessions.values() {
            s.outbox.push(frame.clone());
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

    /// Finds or creates a device; a new device gets every session whose patterns match it.
    fn device<'a>(inner: &'a mut Inner, id: &str) -> (&'a mut Device, bool) {
        if !inner.devices.contains_key(id) {
            let subscribers = inner
                .sessions
                .iter()
                .filter(|(_, s)| s.patterns.iter().any(|p| p.matches(id)))
                .map(|(sid, s)| (*sid, s.outbox.clone()))
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
                subscribers,
            };
            inner.devices.insert(key, device);
            return (inner.devices.get_mut(id).expect("inserted above"), true);
        }
        (inner.devices.get_mut(id).expect("checked above"), false)
    }

    fn fan_out(d: &Device, frame: Frame) {
        for (_, outbox) in &d.subscribers {
            outbox.push(frame.clone());
        }
    }

    /// A retained `meta` arrived; `None` (an empty retained message) removes the device.
    pub fn on_meta(&self, id: &str, meta: Option<Value>) {
        let mut inner = self.lock();
        match meta {
            Some(meta) => {
                let (d, _) = Self::device(&mut inner, id);
                if d.meta.as_ref() == Some(&meta) {
                    return;
                }
                d.meta = Some(meta);
                let frame = ServerMsg::Device {
                    device: id,
                    meta: d.meta.as_ref(),
                    removed: false,
                };
                Self::fan_out(d, Frame::control(frame.to_json()));
            }
            None => {
                if let Some(d) = inner.devices.remove(id) {
                    let frame = ServerMsg::Device {
                        device: id,
                        meta: None,
                        removed: true,
                    };
                    Self::fan_out(&d, Frame::control(frame.to_json()));
                }
            }
        }
    }

    pub fn on_status(&self, id: &str, online: bool) {
        let mut inner = self.lock();
        let (d, _) = Self::device(&mut inner, id);
        if d.online == Some(online) {
            return;
        }
        d.online = Some(online);
        let presence = self.presence_of(d);
        let frame = ServerMsg::Presence {
            device: id,
            presence,
        };
        Self::fan_out(d, Frame::control(frame.to_json()));
    }

    pub fn on_state(&self, id: &str, state: Map<String, Value>) {
        let mut inner = self.lock();
        let (d, _) = Self::device(&mut inner, id);
        let frame = ServerMsg::State {
            device: id,
            ts: now_ms(),
            state: &state,
        };
        let frame = Frame::control(frame.to_json());
        d.state = Some(state);
        Self::fan_out(d, frame);
    }

    /// Telemetry: bumps the device's sequence number by one and fans out.
    pub fn on_telemetry(&self, id: &str, mut data: Map<String, Value>) {
        let ts = crate::payload::timestamp(&data).unwrap_or_else(now_ms);
        data.remove("ts");
        let mut inner = self.lock();
        let (d, _) = Self::device(&mut inner, id);
        d.seq += 1;
        let json = ServerMsg::Telemetry {
            device: id,
            seq: d.seq,
            ts,
            data: &data,
        }
        .to_json();
        d.telemetry = Some(data);
        d.telemetry_ts = Some(ts);
        Self::fan_out(d, Frame::telemetry(d.id.clone(), json));
    }

    pub fn register(&self, outbox: Arc<Outbox>) -> SessionId {
        let mut inner = self.lock();
        inner.next_session += 1;
        let id = inner.next_session;
        inner.sessions.insert(
            id,
            SessionSubs {
                outbox,
                patterns: Vec::new(),
            },
        );
        id
    }

    pub fn unregister(&self, session: SessionId) {
        let mut inner = self.lock();
        if let Some(s) = inner.sessions.remove(&session) {
            for d in inner.devices.values_mut() {
                d.subscribers.retain(|(sid, _)| *sid != session);
            }
            s.outbox.close();
        }
    }

    /// Adds patterns and pushes the snapshot of every device they match into the session's
    /// outbox, atomically with respect to fan-out.
    pub fn subscribe(
        &self,
        session: SessionId,
        patterns: &[String],
        req: Option<&Value>,
        since: Option<&str>,
        max_subscriptions: usize,
    ) -> Result<(), SubscribeError> {
        let parsed = patterns
            .iter()
            .map(|p| Pattern::parse(p).ok_or_else(|| SubscribeError::InvalidPattern(p.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.lock();
        let broker_up = self.broker_up();
        let Inner {
            devices, sessions, ..
        } = &mut *inner;
        let Some(subs) = sessions.get_mut(&session) else {
            return Ok(());
        };
        let fresh: Vec<Pattern> = parsed
            .iter()
            .filter(|p| !subs.patterns.contains(p))
            .cloned()
            .collect();
        if subs.patterns.len() + fresh.len() > max_subscriptions {
            return Err(SubscribeError::TooMany(max_subscriptions));
        }
        subs.patterns.extend(fresh);
        let mut views = Vec::new();
        for (id, d) in devices.iter_mut() {
            if !parsed.iter().any(|p| p.matches(id)) {
                continue;
            }
            if !d.subscribers.iter().any(|(sid, _)| *sid == session) {
                d.subscribers.push((session, subs.outbox.clone()));
            }
            views.push((id.clone(), &*d));
        }
        let device_views = views
            .iter()
            .map(|(id, d)| DeviceView {
                id,
                meta: d.meta.as_ref(),
                presence: match d.online {
                    _ if !broker_up => Presence::Stale,
                    Some(true) => Presence::Online,
                    Some(false) => Presence::Offline,
                    None => Presence::Unknown,
                },
                state: d.state.as_ref(),
                telemetry: d.telemetry.as_ref(),
                seq: d.seq,
                ts: d.telemetry_ts,
            })
            .collect();
        let resume = crate::resume::token(
            &self.epoch,
            views.iter().map(|(id, d)| (id.as_ref(), d.seq)),
        );
        let snapshot = ServerMsg::Snapshot {
            req,
            devices: device_views,
            resume,
            // Without a history ring nothing can be replayed: a resume always gets a fresh snapshot.
            recovered: since.map(|_| false),
        };
        subs.outbox.push(Frame::control(snapshot.to_json()));
        Ok(())
    }

    /// Removes patterns (exactly as subscribed); returns those that were subscribed.
    pub fn unsubscribe(&self, session: SessionId, patterns: &[String]) -> Vec<String> {
        let mut inner = self.lock();
        let Inner {
            devices, sessions, ..
        } = &mut *inner;
        let Some(subs) = sessions.get_mut(&session) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        subs.patterns.retain(|p| {
            let drop = patterns.iter().any(|q| q == p.as_str());
            if drop {
                removed.push(p.as_str().to_owned());
            }
            !drop
        });
        for (id, d) in devices.iter_mut() {
            if !subs.patterns.iter().any(|p| p.matches(id)) {
                d.subscribers.retain(|(sid, _)| *sid != session);
            }
        }
        removed
    }

    /// The answer to `list`: every known device, briefly.
    pub fn list(&self, req: Option<&Value>) -> String {
        let inner = self.lock();
        let field = |d: &Device, k: &str| -> Option<String> {
            d.meta
                .as_ref()
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let rows: Vec<(Arc<str>, [Option<String>; 3], Presence)> = inner
            .devices
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    [field(d, "kind"), field(d, "name"), field(d, "room")],
                    self.presence_of(d),
                )
            })
            .collect();
        drop(inner);
        let devices = rows
            .iter()
            .map(|(id, [kind, name, room], presence)| ListEntry {
                id,
                kind: kind.as_deref(),
                name: name.as_deref(),
                room: room.as_deref(),
                presence: *presence,
            })
            .collect();
        ServerMsg::List { req, devices }.to_json()
    }
}
