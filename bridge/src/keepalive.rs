//! When each session pings its client: one wheel for every session, turned by one task.
//!
//! A timer per session would wake the bridge once per ping: 50,000 idle connections pinged every
//! 30 s are 1,700 separate wake-ups a second, each waking and parking a worker thread, and the
//! context switches cost more than the pings. Here sessions sit in the slots of a wheel of
//! [`TICK`]-long slots spanning one ping interval; the keepalive task sleeps until the next slot
//! that holds a session and asks the sessions there to ping (through their outboxes, see
//! [`Outbox::ping_due`]). So the bridge wakes at most ten times a second for pings, however many
//! clients it has, each wake pinging a batch; with few clients it wakes no more often than they
//! need. Sessions joining at different times fall in different slots, so the pings spread over
//! the interval.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

/// The wheel's resolution: how far apart two batches of pings are.
pub const TICK: Duration = Duration::from_millis(100);

pub struct Keepalive {
    started: Instant,
    slots: Mutex<Vec<Slot>>,
}

/// Each session with the tick it joined at: it is first due one interval after that.
type Slot = Vec<(Weak<Outbox>, u64)>;

impl Keepalive {
    /// A wheel for pings every `interval` (rounded to whole ticks, at least one).
    pub fn new(interval: Duration) -> Arc<Keepalive> {
        let n = (interval.as_millis() / TICK.as_millis()).max(1) as usize;
        Arc::new(Keepalive {
            started: Instant::now(),
            slots: Mutex::new(vec![Vec::new(); n]),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tick `at` falls in, counted from the wheel's start.
    fn tick_at(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_millis() / TICK.as_millis()) as u64
    }

    /// Adds a session: its first ping comes about one interval from now. A session leaves the
    /// wheel by itself when its outbox is dropped.
    pub fn add(&self, outbox: &Arc<Outbox>) {
        let mut slots = self.slots();
        let n = slots.len() as u64;
        // The slot of the current tick comes round again one interval from now.
        let joined = self.tick_at(Instant::now());
        slots[(joined % n) as usize].push((Arc::downgrade(outbox), joined));
    }

    /// Asks the sessions of the slot of every tick in `ticks` to ping, those that joined at
    /// least one interval before; forgets sessions that are gone.
    fn turn(&self, ticks: std::ops::RangeInclusive<u64>) {
        let mut due = Vec::new();
        {
            let mut slots = self.slots();
            let n = slots.len() as u64;
            for tick in ticks {
                let slot = &mut slots[(tick % n) as usize];
                slot.retain(|(w, _)| w.strong_count() > 0);
                due.extend(
                    slot.iter()
                        .filter(|(_, joined)| joined + n <= tick)
                        .filter_map(|(w, _)| w.upgrade()),
                );
            }
        }
        for outbox in due {
            outbox.ping_due();
        }
    }

    /// The first tick from `from` on whose slot holds a session.
    fn next_busy(&self, from: u64) -> Option<u64> {
        let slots = self.slots();
        let n = slots.len() as u64;
        (from..from + n).find(|t| !slots[(t % n) as usize].is_empty())
    }

    /// Turns the wheel until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let interval = TICK * self.slots().len() as u32;
        let mut next = self.tick_at(Instant::now()) + 1;
        loop {
            // An empty wheel looks again one interval later: a session that joins meanwhile is
            // not due before that.
            let wake = match self.next_busy(next) {
                Some(tick) => self.started + Duration::from_millis(TICK.as_millis() as u64 * tick),
                None => Instant::now() + interval,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = self.tick_at(Instant::now());
            if next <= now {
                self.turn(next..=now);
                next = now + 1;
            }
        }
    }

    /// Sessions on the wheel, the gone ones not yet forgotten included.
    pub fn len(&self) -> usize {
        self.slots().iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_session_is_asked_once_per_interval_and_sessions_spread() {
        let wheel = Keepalive::new(Duration::from_secs(1));
        let stop = CancellationToken::new();
        tokio::spawn(wheel.clone().run(stop.clone()));
        let a = Outbox::new(16, usize::MAX);
        wheel.add(&a);
        tokio::time::sleep(Duration::from_millis(450)).await;
        let b = Outbox::new(16, usize::MAX);
        wheel.add(&b);

        let mut asked = (Vec::new(), Vec::new());
        let start = Instant::now();
        for _ in 0..30 {
            tokio::time::sleep(TICK).await;
            if a.take_ping() {
                asked.0.push(start.elapsed());
            }
            if b.take_ping() {
                asked.1.push(start.elapsed());
            }
        }
        // Three seconds: each asked three times, one interval apart, half an interval apart
        // from each other.
        assert_eq!(asked.0.len(), 3, "{asked:?}");
        assert_eq!(asked.1.len(), 3, "{asked:?}");
        for w in asked.0.windows(2).chain(asked.1.windows(2)) {
            assert_eq!(w[1] - w[0], Duration::from_secs(1), "{asked:?}");
        }
        let apart = asked.1[0].abs_diff(asked.0[0]);
        assert!(
            apart >= Duration::from_millis(400) && apart <= Duration::from_millis(600),
            "{asked:?}"
        );

        drop(b);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(wheel.len(), 1, "a session that went leaves the wheel");
        stop.cancel();
    }
}
