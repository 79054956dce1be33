//! Counters of a running indexer, as plain atomics: for `STATUS=`, logs,
//! tests and (later) a metrics endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of the whole indexer.
#[derive(Debug, Default)]
pub struct IndexerStats {
    /// Results and notices accepted.
    pub received: AtomicU64,
    /// Duplicates skipped (same result through several brokers).
    pub duplicates: AtomicU64,
    /// Payloads that were not valid results or notices.
    pub malformed: AtomicU64,
    /// Payloads over the size limit.
    pub oversized: AtomicU64,
    /// Results refused for a timestamp outside the accepted window (see
    /// `docs/protocol.md`); also counted in `malformed`.
    pub out_of_window: AtomicU64,
    /// Agent notices of earlier connections (late wills), recorded as stale.
    pub stale_notices: AtomicU64,
    /// Agents forgotten because the map of agents reached its bound.
    pub agents_evicted: AtomicU64,
    /// Documents stored in Elasticsearch (new ones).
    pub indexed: AtomicU64,
    /// Documents Elasticsearch already had (409).
    pub already_stored: AtomicU64,
    /// Bulk attempts after the first (items or whole requests retried).
    pub retried: AtomicU64,
    /// Documents refused for good (dead-letter file).
    pub dead: AtomicU64,
    /// Documents made durable (spool and/or file output), duplicates not
    /// counted.
    pub written: AtomicU64,
    /// Failed durable writes (each retried with backoff, nothing acked).
    pub write_errors: AtomicU64,
    /// Failed spool commits (the drain backs off).
    pub commit_errors: AtomicU64,
    /// Failed spool reads (the drain backs off and reads again).
    pub read_errors: AtomicU64,
    /// Brokers currently connected.
    pub brokers_up: AtomicUsize,
    /// Documents waiting in the spool for Elasticsearch.
    pub spool_pending: AtomicU64,
    /// Bytes of spool segments on disk.
    pub spool_bytes: AtomicU64,
    /// Records the spool dropped for its budget.
    pub spool_dropped: AtomicU64,
    /// Unix time (seconds) at which the oldest record still in the spool
    /// was appended, as far as this process knows; 0 when empty.
    pub spool_oldest_unix: AtomicU64,
    /// Per broker counters, by `host:port`.
    pub brokers: Mutex<BTreeMap<String, Arc<BrokerStats>>>,
}

impl IndexerStats {
    /// The counters of `broker` (created on first use).
    pub fn broker(&self, broker: &str) -> Arc<BrokerStats> {
        let mut map = self.brokers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(broker.to_owned())
            .or_insert_with(|| Arc::new(BrokerStats::default()))
            .clone()
    }

    /// Messages skipped as bad (malformed, oversized, out of window).
    pub fn bad(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed) + self.oversized.load(Ordering::Relaxed)
    }

    /// Documents in the spool not yet in Elasticsearch (the drain's lag).
    pub fn es_lag(&self) -> u64 {
        self.spool_pending.load(Ordering::Relaxed)
    }
}

/// Counters of one broker session.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Session up (connected and subscribed requested).
    pub connected: AtomicBool,
    /// Results and notices accepted from this broker.
    pub received: AtomicU64,
    /// Of those, already stored from another broker (or redelivered).
    pub duplicates: AtomicU64,
    /// Payloads skipped (malformed, oversized, out of window).
    pub malformed: AtomicU64,
    /// Connections made.
    pub connects: AtomicU64,
}

/// Logs at most one line per period for a noisy condition, with the count
/// of what it did not log.
pub struct Throttled {
    period: Duration,
    last: Mutex<Option<(Instant, u64)>>,
}

impl Throttled {
    pub fn new(period: Duration) -> Self {
        Throttled {
            period,
            last: Mutex::new(None),
        }
    }

    /// Returns the number of suppressed events to report, or None to stay
    /// quiet this time.
    pub fn hit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match &mut *last {
            Some((at, suppressed)) if now.duration_since(*at) < self.period => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let s = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(s)
            }
            None => {
                *last = Some((now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_once_per_period_and_counts_the_rest() {
        let t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        let t = Throttled::new(Duration::ZERO);
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), Some(0));
    }

    #[test]
    fn broker_counters_are_shared_per_broker() {
        let s = IndexerStats::default();
        s.broker("a:1").received.fetch_add(2, Ordering::Relaxed);
        assert_eq!(s.broker("a:1").received.load(Ordering::Relaxed), 2);
        assert_eq!(s.broker("b:1").received.load(Ordering::Relaxed), 0);
    }
}
