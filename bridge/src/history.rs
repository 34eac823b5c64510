//! Per-device telemetry history: a ring bounded by count and age, holding contiguous sequence
//! numbers so a resuming client can be given exactly what it missed. Pure data, no I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::telemetry::Data;

/// One telemetry message as received (without `ts`, which is kept apart).
#[derive(Debug, Clone)]
pub struct Sample {
    pub seq: u64,
    pub ts: i64,
    pub data: Arc<Data>,
}

/// How much telemetry history each device keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_samples: usize,
    pub max_age_ms: i64,
    /// The samples' data, in bytes of JSON; the newest sample is kept whatever its size.
    pub max_bytes: usize,
}

#[derive(Debug, Default)]
pub struct Ring {
    samples: VecDeque<Sample>,
    /// The data of `samples`, in bytes of JSON.
    bytes: usize,
}

/// What a `history` request asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub field: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: usize,
}

impl Ring {
    /// Appends a sample and drops the oldest beyond the limits: count, bytes, and age before it.
    /// Age is by the device's clock, except that a `ts` ahead of the bridge's (`now_ms`) counts
    /// as now: one sample stamped years ahead must not age out everything before it.
    pub fn push(&mut self, sample: Sample, limits: &HistoryLimits, now_ms: i64) {
        let horizon = sample.ts.min(now_ms).saturating_sub(limits.max_age_ms);
        self.bytes += sample.data.len();
        self.samples.push_back(sample);
        while self.samples.len() > limits.max_samples
            || (self.bytes > limits.max_bytes && self.samples.len() > 1)
            || self.samples.front().is_some_and(|s| s.ts < horizon)
        {
            if let Some(old) = self.samples.pop_front() {
                self.bytes -= old.data.len();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples after `seq`, in order, if the ring still holds every one of them up to
    /// `latest`; `None` when part of the gap is gone.
    pub fn since(&self, seq: u64, latest: u64) -> Option<impl Iterator<Item = &Sample>> {
        if seq > latest {
            return None;
        }
        if seq == latest {
            return Some(self.samples.range(0..0));
        }
        let first = self.samples.front()?.seq;
        if first > seq + 1 {
            return None;
        }
        let start = (seq + 1 - first) as usize;
        Some(self.samples.range(start..))
    }

    /// The newest `limit` samples in `[from, to]` (and holding `field`, when given), oldest first.
    pub fn query(&self, q: &Query) -> Vec<&Sample> {
        let mut picked: Vec<&Sample> = self
            .samples
            .iter()
            .rev()
            .filter(|s| q.from.is_none_or(|f| s.ts >= f) && q.to.is_none_or(|t| s.ts <= t))
            .filter(|s| q.field.as_ref().is_none_or(|f| s.data.has_field(f)))
            .take(q.limit)
            .collect();
        picked.reverse();
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample(seq: u64, ts: i64, v: Value) -> Sample {
        Sample {
            seq,
            ts,
            data: Arc::new(Data::from_map(v.as_object().unwrap())),
        }
    }

    fn limits(max_samples: usize, max_age_ms: i64) -> HistoryLimits {
        HistoryLimits {
            max_samples,
            max_age_ms,
            max_bytes: usize::MAX,
        }
    }

    fn ring(n: u64) -> Ring {
        let mut r = Ring::default();
        for seq in 1..=n {
            r.push(
                sample(seq, seq as i64 * 1000, json!({"t": seq})),
                &limits(5, 1_000_000),
                i64::MAX,
            );
        }
        r
    }

    #[test]
    fn bounded_by_count_and_age() {
        let r = ring(8);
        assert_eq!(r.len(), 5);
        let mut r = Ring::default();
        for seq in 1..=10 {
            r.push(
                sample(seq, seq as i64 * 1000, json!({})),
                &limits(100, 3000),
                i64::MAX,
            );
        }
        let seqs: Vec<u64> = r.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [7, 8, 9, 10]);
    }

    #[test]
    fn bounded_by_bytes_but_keeps_the_newest() {
        let small = HistoryLimits {
            max_bytes: 100,
            ..limits(100, 1_000_000)
        };
        let mut r = Ring::default();
        for seq in 1..=10 {
            // {"p":"xxxxxxxxxxxxxxxxxxxx"}: 28 bytes.
            r.push(
                sample(seq, seq as i64, json!({"p": "x".repeat(20)})),
                &small,
                i64::MAX,
            );
        }
        let seqs: Vec<u64> = r.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [8, 9, 10]);
        assert_eq!(r.bytes, 84);
        r.push(
            sample(11, 11, json!({"p": "x".repeat(500)})),
            &small,
            i64::MAX,
        );
        let seqs: Vec<u64> = r.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [11], "alone over the budget, and still kept");
    }

    #[test]
    fn a_timestamp_from_the_future_ages_nothing_out() {
        let now = 1_800_000_000_000;
        let minute = limits(100, 60_000);
        let mut r = Ring::default();
        for seq in 1..=3 {
            r.push(
                sample(seq, now - 4000 + seq as i64, json!({})),
                &minute,
                now,
            );
        }
        let year_3000 = 32_503_680_000_000;
        r.push(sample(4, year_3000, json!({})), &minute, now);
        r.push(sample(5, now, json!({})), &minute, now);
        let seqs: Vec<u64> = r.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        // What is old by the bridge's clock still goes.
        r.push(sample(6, now + 61_000, json!({})), &minute, now + 61_000);
        let seqs: Vec<u64> = r.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
    }

    #[test]
    fn since_gives_exactly_the_gap_or_nothing() {
        let r = ring(8); // holds 4..=8
        let seqs = |from| {
            r.since(from, 8)
                .map(|it| it.map(|s| s.seq).collect::<Vec<_>>())
        };
        assert_eq!(seqs(8), Some(vec![]));
        assert_eq!(seqs(5), Some(vec![6, 7, 8]));
        assert_eq!(seqs(3), Some(vec![4, 5, 6, 7, 8]));
        assert_eq!(seqs(2), None, "sample 3 is gone");
        assert_eq!(seqs(9), None, "ahead of the device: another epoch");
        assert!(Ring::default().since(0, 0).is_some());
        assert!(Ring::default().since(0, 3).is_none());
    }

    #[test]
    fn query_filters_and_limits_newest_first_then_orders() {
        let mut r = Ring::default();
        for seq in 1..=6 {
            let data = if seq % 2 == 0 {
                json!({"a": seq})
            } else {
                json!({"b": seq})
            };
            r.push(sample(seq, seq as i64, data), &limits(100, 1000), i64::MAX);
        }
        let q = |field: Option<&str>, from, to, limit| {
            r.query(&Query {
                field: field.map(str::to_owned),
                from,
                to,
                limit,
            })
            .iter()
            .map(|s| s.seq)
            .collect::<Vec<_>>()
        };
        assert_eq!(q(None, None, None, 100), [1, 2, 3, 4, 5, 6]);
        assert_eq!(q(None, None, None, 2), [5, 6]);
        assert_eq!(q(Some("a"), None, None, 100), [2, 4, 6]);
        assert_eq!(q(None, Some(2), Some(4), 100), [2, 3, 4]);
        assert_eq!(q(Some("b"), Some(2), None, 1), [5]);
    }
}
