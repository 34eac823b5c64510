//! Per-identity command rate limit: a token bucket shared by all of an identity's connections,
//! so opening more sockets does not buy more commands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Identities remembered before idle full buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate_per_sec,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `identity`; `false` when its bucket is empty.
    pub fn allow(&self, identity: &str) -> bool {
        self.allow_at(identity, Instant::now())
    }

    fn allow_at(&self, identity: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let bucket = buckets.entry(identity.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = self.rate * now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate_per_identity() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let allowed = (0..5).filter(|_| limiter.allow_at("a", t0)).count();
        assert_eq!(allowed, 3, "burst of 3");
        assert!(
            limiter.allow_at("b", t0),
            "other identities have their own bucket"
        );
        assert!(!limiter.allow_at("a", t0 + Duration::from_millis(400)));
        assert!(
            limiter.allow_at("a", t0 + Duration::from_millis(600)),
            "refilled 2/s"
        );
        assert!(!limiter.allow_at("a", t0 + Duration::from_millis(700)));
    }
}
