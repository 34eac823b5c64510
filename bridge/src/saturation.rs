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
use std::sync::Mutex;
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
    /// `None`: a fixed verdict, for tests.
    metrics: Option<RuntimeMetrics>,
    origin: Instant,
    /// Milliseconds from `origin` after which the next sample is due.
    next_ms: AtomicU64,
    saturated: AtomicBool,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    /// The workers' total busy time at `started`.
    busy: Duration,
    hot: u8,
}

impl Saturation {
    /// Watches the runtime this is called on.
    pub fn current() -> Saturation {
        let metrics = tokio::runtime::Handle::current().metrics();
        let now = Instant::now();
        let busy = total_busy(&metrics);
        Saturation {
            metrics: Some(metrics),
            origin: now,
            next_ms: AtomicU64::new(WINDOW.as_millis() as u64),
            saturated: AtomicBool::new(false),
            window: Mutex::new(Window {
                started: now,
                busy,
                hot: 0,
            }),
        }
    }

    /// A verdict that never changes.
    #[cfg(test)]
    pub(crate) fn fixed(saturated: bool) -> Saturation {
        Saturation {
            metrics: None,
            origin: Instant::now(),
            next_ms: AtomicU64::new(u64::MAX),
            saturated: AtomicBool::new(saturated),
            window: Mutex::new(Window {
                started: Instant::now(),
                busy: Duration::ZERO,
                hot: 0,
            }),
        }
    }

    /// Whether the bridge is saturated, as of the last window that ended. One atomic load,
    /// and a sample of the runtime's metrics once per window.
    pub fn saturated(&self, now: Instant) -> bool {
        let at = now.saturating_duration_since(self.origin).as_millis() as u64;
        if at >= self.next_ms.load(Ordering::Relaxed) {
            // Whoever gets the lock samples; the others read the current verdict.
            if let Ok(mut w) = self.window.try_lock() {
                self.sample(&mut w, now);
            }
        }
        self.saturated.load(Ordering::Relaxed)
    }

    fn sample(&self, w: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(w.started);
        let Some(metrics) = self.metrics.as_ref().filter(|_| elapsed >= WINDOW) else {
            return; // sampled by another caller meanwhile
        };
        let busy = total_busy(metrics);
        let workers = metrics.num_workers().max(1) as f64;
        let share = busy.saturating_sub(w.busy).as_secs_f64() / (elapsed.as_secs_f64() * workers);
        *w = Window {
            started: now,
            busy,
            hot: if share >= HOT {
                w.hot.saturating_add(1)
            } else {
                0
            },
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

/// The time every worker has spent running tasks (not parked) since the runtime started.
fn total_busy(metrics: &RuntimeMetrics) -> Duration {
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins for `d` of wall time without yielding: the worker is busy.
    fn spin(d: Duration) {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            std::hint::spin_loop();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_that_parks_is_not_saturated_and_one_that_never_does_is() {
        let s = Saturation::current();
        // Mostly parked: a little work, then sleeping, for several windows.
        for _ in 0..6 {
            spin(Duration::from_millis(5));
            tokio::time::sleep(Duration::from_millis(45)).await;
            assert!(!s.saturated(Instant::now()), "a worker with time to spare");
        }
        // Never parked for three windows: saturated once two whole windows were hot.
        let mut verdicts = Vec::new();
        for _ in 0..8 {
            spin(WINDOW / 2);
            // Yields without parking: the task is ready again at once.
            tokio::task::yield_now().await;
            verdicts.push(s.saturated(Instant::now()));
        }
        assert!(verdicts.iter().any(|v| *v), "busy for 400 ms: {verdicts:?}");
        assert!(!verdicts[0], "not after one window: {verdicts:?}");
        // Idle again: the next window ends it.
        tokio::time::sleep(WINDOW * 2).await;
        assert!(!s.saturated(Instant::now()), "idle again");
    }
}
