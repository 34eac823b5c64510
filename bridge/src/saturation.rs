//! Whether the bridge is saturated: its runtime's workers have had almost no idle time lately.
//!
//! Write pacing (`session::Pacer`) must tell a bridge that cannot keep up from one that is only
//! slow to reach its last client after a long fan-out. How long a session waits for its turn
//! cannot tell them apart: on a slow host a message to a hundred clients keeps the last of them
//! waiting a millisecond at a third of the bridge's capacity. The runtime's busy time can: a
//! worker that still parks between messages has time to spare, however long each fan-out takes,
//! and a stall of the host does not make a parked worker busy.
//!
//! Sampled on demand, at most once per [`WINDOW`], by whichever session asks first: no timer,
//! so an idle bridge does no work for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use tokio::runtime::RuntimeMetrics;
use tokio::time::Instant;
use tracing::{debug, info};

/// How long one sample of the runtime's busy time spans.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Busy share of the workers' time at or above which a window counts as hot...
const HOT: f64 = 0.90;
/// ...and hot windows in a row after which the bridge is saturated: one hot window may be a
/// burst that the next one absorbs.
const HOT_WINDOWS: u8 = 2;
/// Busy share below which a saturated bridge no longer is. Well below [`HOT`]: pacing itself
/// lowers the busy share (from 1.0 to about 0.45 with a thousand clients at 450 messages a
/// second), and with 0.5 here a bridge under that load stopped and started pacing every few
/// hundred milliseconds, writing at once half of the time.
const COOL: f64 = 0.25;

pub struct Saturation {
    metrics: RuntimeMetrics,
    origin: Instant,
    /// Milliseconds from `origin` after which the next sample is due.
    next_ms: AtomicU64,
    saturated: AtomicBool,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    /// Each worker's total busy time and park count at `started`.
    workers: Vec<WorkerMark>,
    hot: u8,
}

#[derive(Clone, Copy)]
struct WorkerMark {
    busy: Duration,
    parks: u64,
}

impl Saturation {
    /// Watches the runtime this is called on.
    pub fn current() -> Saturation {
        let metrics = tokio::runtime::Handle::current().metrics();
        let workers = marks(&metrics);
        let now = Instant::now();
        Saturation {
            metrics,
            origin: now,
            next_ms: AtomicU64::new(WINDOW.as_millis() as u64),
            saturated: AtomicBool::new(false),
            window: Mutex::new(Window {
                started: now,
                workers,
                hot: 0,
            }),
        }
    }

    /// Whether the bridge is saturated, as of the last window that ended. One atomic load,
    /// and a sample of the runtime's metrics once per window.
    pub fn saturated(&self, now: Instant) -> bool {
        let at = now.saturating_duration_since(self.origin).as_millis() as u64;
        if at >= self.next_ms.load(Ordering::Relaxed) {
            // Whoever gets the lock samples; the others read the current verdict. A panic while
            // sampling leaves a window that is still whole: keep using it.
            let window = match self.window.try_lock() {
                Ok(w) => Some(w),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut w) = window {
                self.sample(&mut w, now);
            }
        }
        self.saturated.load(Ordering::Relaxed)
    }

    fn sample(&self, w: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed < WINDOW {
            return; // sampled by another caller meanwhile
        }
        let workers = marks(&self.metrics);
        let share = busy_share(&w.workers, &workers, elapsed);
        w.started = now;
        w.workers = workers;
        w.hot = if share >= HOT {
            w.hot.saturating_add(1)
        } else {
            0
        };
        let was = self.saturated.load(Ordering::Relaxed);
        let is = match was {
            false => w.hot >= HOT_WINDOWS,
            true => share >= COOL,
        };
        debug!(busy = share, saturated = is, "runtime busy share");
        if is != was {
            self.saturated.store(is, Ordering::Relaxed);
            if is {
                info!(busy = share, "bridge saturated: pacing telemetry writes");
            } else {
                info!(
                    busy = share,
                    "bridge no longer saturated: writing telemetry at once"
                );
            }
        }
        let next = now.saturating_duration_since(self.origin) + WINDOW;
        self.next_ms
            .store(next.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Every worker's busy time and park count so far.
fn marks(metrics: &RuntimeMetrics) -> Vec<WorkerMark> {
    (0..metrics.num_workers())
        .map(|w| WorkerMark {
            busy: metrics.worker_total_busy_duration(w),
            parks: metrics.worker_park_count(w),
        })
        .collect()
}

/// The share of the workers' time spent busy between two marks `elapsed` apart, 0 to 1.
///
/// A worker publishes its busy time when it parks, and while it never parks only every few
/// dozen tasks (tokio's maintenance), so a worker that is busy throughout may show a window
/// only part busy and the next one more than whole. A worker that published busy time without
/// parking once in the window was busy all of it; one that parked counts what it published.
fn busy_share(before: &[WorkerMark], after: &[WorkerMark], elapsed: Duration) -> f64 {
    if before.is_empty() || before.len() != after.len() || elapsed.is_zero() {
        return 0.0;
    }
    let busy: Duration = before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let busy = a.busy.saturating_sub(b.busy);
            if a.parks == b.parks && !busy.is_zero() {
                elapsed
            } else {
                busy.min(elapsed)
            }
        })
        .sum();
    busy.as_secs_f64() / (elapsed.as_secs_f64() * before.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn mark(busy_ms: u64, parks: u64) -> WorkerMark {
        WorkerMark {
            busy: Duration::from_millis(busy_ms),
            parks,
        }
    }

    #[test]
    fn busy_share_counts_a_worker_that_never_parked_as_busy_throughout() {
        let window = Duration::from_millis(100);
        let cases = [
            // (before, after, share)
            (mark(0, 5), mark(0, 5), 0.0),   // parked the whole window
            (mark(0, 5), mark(30, 6), 0.3),  // parked once: what it published
            (mark(0, 5), mark(40, 5), 1.0),  // never parked, published a lump: busy throughout
            (mark(0, 5), mark(160, 5), 1.0), // a late lump never counts more than the window
            (mark(0, 5), mark(160, 9), 1.0),
        ];
        for (before, after, want) in cases {
            let got = busy_share(&[before], &[after], window);
            assert!((got - want).abs() < 1e-9, "{want} != {got}");
        }
        let two = busy_share(
            &[mark(0, 1), mark(0, 1)],
            &[mark(50, 2), mark(0, 1)],
            window,
        );
        assert!((two - 0.25).abs() < 1e-9, "{two}");
        assert_eq!(busy_share(&[], &[], window), 0.0);
    }

    /// Spins for `d` of wall time without yielding: the worker is busy.
    fn spin(d: Duration) {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            std::hint::spin_loop();
        }
    }

    /// Asks for the verdict every 20 ms until it is `want`, for at most `limit`.
    async fn verdict_within(s: &Saturation, want: bool, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if s.saturated(Instant::now()) == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_that_never_park_saturate_the_runtime_and_idle_ones_do_not() {
        let s = Saturation::current();
        // A little work now and then: time to spare.
        for _ in 0..6 {
            spin(Duration::from_millis(2));
            tokio::time::sleep(Duration::from_millis(40)).await;
            assert!(!s.saturated(Instant::now()), "a runtime with time to spare");
        }
        // Two tasks that spin and yield keep both workers from ever parking.
        let on = Arc::new(AtomicBool::new(true));
        let hogs: Vec<_> = (0..2)
            .map(|_| {
                let on = on.clone();
                tokio::spawn(async move {
                    while on.load(Ordering::Relaxed) {
                        spin(Duration::from_millis(1));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let saturated = verdict_within(&s, true, Duration::from_secs(5)).await;
        on.store(false, Ordering::Relaxed);
        for hog in hogs {
            hog.await.ok();
        }
        assert!(saturated, "both workers busy for seconds");
        assert!(
            verdict_within(&s, false, Duration::from_secs(5)).await,
            "idle again"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_window_of_work_is_not_saturation() {
        let s = Saturation::current();
        // Busy for just under two windows: at most one whole window of it is hot.
        for _ in 0..3 {
            spin(WINDOW / 2);
            tokio::task::yield_now().await;
            assert!(!s.saturated(Instant::now()));
        }
    }
}
