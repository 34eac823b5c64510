//! The connection ramp: a fleet opens at most `rate` new connections per second, so 50,000
//! devices do not hit the broker (and this process's TLS handshakes) in the same instant.
//!
//! Devices reserve slots from one shared clock; no task runs for it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Paces connection attempts of a whole fleet.
#[derive(Debug)]
pub(crate) struct Ramp {
    /// Time between two slots; `None` = no pacing.
    gap: Option<Duration>,
    next: Mutex<Option<Instant>>,
}

impl Ramp {
    /// `rate` connections per second; `None` (or not a positive number) = as fast as possible.
    pub(crate) fn new(rate: Option<f64>) -> Ramp {
        let gap = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok());
        Ramp {
            gap,
            next: Mutex::new(None),
        }
    }

    /// Reserves the next free slot: the time the caller may connect (`None` = now, no pacing).
    /// Devices wait for it on their own timer, so a queue of 50,000 costs no extra tasks.
    pub(crate) fn reserve(&self) -> Option<Instant> {
        let gap = self.gap?;
        let mut next = match self.next.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + gap);
        Some(slot)
    }

    /// Reserves the next free slot and returns when it has come.
    #[cfg(test)]
    async fn wait(&self) {
        if let Some(slot) = self.reserve() {
            tokio::time::sleep_until(slot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate() {
        let ramp = std::sync::Arc::new(Ramp::new(Some(10.0)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let ramp = ramp.clone();
            tasks.push(tokio::spawn(async move {
                ramp.wait().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        let ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 300, 400]);
        // After a quiet spell the next device goes at once, not at a stale slot.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = Instant::now();
        ramp.wait().await;
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_means_no_wait() {
        let ramp = Ramp::new(None);
        let before = Instant::now();
        for _ in 0..100 {
            ramp.wait().await;
        }
        assert_eq!(Instant::now(), before);
        assert!(Ramp::new(Some(0.0)).gap.is_none());
        assert!(Ramp::new(Some(f64::NAN)).gap.is_none());
    }
}
