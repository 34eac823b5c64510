//! Where receiving clients record what arrives during one trial: a delivery count per client
//! (to prove every message reached every client) and latencies in HDR histograms.
//!
//! Histograms are sharded so that a thousand client tasks on a few threads rarely contend, and
//! every message carries its trial number so that stragglers from an earlier trial are not
//! counted in a later one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::telemetry::{now_ns, Sample};

const SHARDS: usize = 16;
/// Latencies are recorded in nanoseconds up to a minute, three significant digits.
const MAX_NS: u64 = 60_000_000_000;

pub fn histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram documents as valid: not input, cannot fail.
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid constant histogram bounds")
}

/// The latency at quantile `q` of a histogram of nanoseconds made by [`histogram`].
pub fn quantile(h: &Histogram<u64>, q: f64) -> Duration {
    Duration::from_nanos(h.value_at_quantile(q))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Recorder {
    trial: AtomicU32,
    counts: Box<[AtomicU64]>,
    shards: Box<[Mutex<Histogram<u64>>]>,
    stale: AtomicU64,
    lagging: AtomicU64,
}

/// What a trial delivered.
#[derive(Debug, Clone)]
pub struct Collected {
    /// Messages each client received in this trial.
    pub per_client: Vec<u64>,
    pub latency: Histogram<u64>,
    /// Messages of earlier trials that arrived during this one.
    pub stale: u64,
    /// `lagging` notices (the bridge conflated telemetry for a slow client).
    pub lagging: u64,
}

impl Collected {
    pub fn delivered(&self) -> u64 {
        self.per_client.iter().sum()
    }

    /// The client that received the fewest messages, and how many.
    pub fn fewest(&self) -> u64 {
        self.per_client.iter().copied().min().unwrap_or(0)
    }
}

impl Recorder {
    pub fn new(clients: usize) -> Recorder {
        Recorder {
            trial: AtomicU32::new(0),
            counts: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            stale: AtomicU64::new(0),
            lagging: AtomicU64::new(0),
        }
    }

    pub fn clients(&self) -> usize {
        self.counts.len()
    }

    /// Starts counting for `trial` from zero.
    pub fn begin(&self, trial: u32) {
        self.trial.store(trial, Ordering::SeqCst);
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
        for s in self.shards.iter() {
            lock(s).reset();
        }
        self.stale.store(0, Ordering::Relaxed);
        self.lagging.store(0, Ordering::Relaxed);
    }

    /// Client `client` received `sample` now.
    pub fn record(&self, client: usize, sample: Sample) {
        let now = now_ns();
        if sample.trial != self.trial.load(Ordering::Relaxed) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(c) = self.counts.get(client) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let shard = &self.shards[client % SHARDS];
        lock(shard).saturating_record(now.saturating_sub(sample.t_ns).max(1));
    }

    pub fn lagging(&self) {
        self.lagging.fetch_add(1, Ordering::Relaxed);
    }

    /// Total messages received in this trial so far.
    pub fn delivered(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn collect(&self) -> Collected {
        let mut latency = histogram();
        for s in self.shards.iter() {
            // Same bounds on both sides: adding cannot fail.
            let _ = latency.add(&*lock(s));
        }
        Collected {
            per_client: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            latency,
            stale: self.stale.load(Ordering::Relaxed),
            lagging: self.lagging.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_and_ignores_other_trials() {
        let r = Recorder::new(3);
        r.begin(2);
        let t_ns = now_ns();
        r.record(
            0,
            Sample {
                t_ns,
                trial: 2,
                seq: 0,
            },
        );
        r.record(
            0,
            Sample {
                t_ns,
                trial: 2,
                seq: 1,
            },
        );
        r.record(
            2,
            Sample {
                t_ns,
                trial: 2,
                seq: 0,
            },
        );
        r.record(
            1,
            Sample {
                t_ns,
                trial: 1,
                seq: 0,
            },
        );
        let c = r.collect();
        assert_eq!(c.per_client, vec![2, 0, 1]);
        assert_eq!((c.delivered(), c.fewest(), c.stale), (3, 0, 1));
        assert_eq!(c.latency.len(), 3);
        r.begin(3);
        assert_eq!(r.collect().delivered(), 0);
    }
}
