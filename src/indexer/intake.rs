//! Intake and validation: every message a broker delivers passes through
//! [`Intake::intake`], which turns it into a document or counts and skips
//! it. Nothing here blocks, allocates without bound or panics on any input.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::Broker;
use crate::document::{self, DocumentError};
use crate::elasticsearch::BulkDoc;
use crate::insight::verdict::Notice;
use crate::protocol::{self, PingResult, Rip, RipReason};

use super::agents::{AgentSeen, Agents, NoticeKind, MAX_AGENTS};
use super::stats::{BrokerStats, IndexerStats, Throttled};

/// Oldest result timestamp accepted, relative to the indexer's clock:
/// results may wait in an agent's outbox or a broker's persistent session,
/// but a month is beyond any outage we keep data for.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Furthest a result timestamp may be ahead of the indexer's clock (clock
/// skew between hosts).
pub const MAX_AHEAD: Duration = Duration::from_secs(3600);

/// How long a will waits before it counts as the agent's loss: an agent
/// that failed over announces its new connection on another broker, and
/// that announcement may reach us after the old connection's will (a
/// frozen broker coming back right then). Within this time the will is
/// judged again, and found stale.
pub const WILL_GRACE: Duration = Duration::from_secs(5);

/// A will that its broker published within this time before dropping its
/// connection with us is the broker going down (mosquitto publishes the
/// wills of all its clients when it is stopped), not its agent's loss.
pub const WILL_BEFORE_BROKER_DOWN: Duration = Duration::from_secs(2);

/// A will waiting out [`WILL_GRACE`].
struct PendingWill {
    rip: Rip,
    since_ms: Option<i64>,
    broker: Broker,
    arrived: SystemTime,
}

/// Why a message was skipped.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0} bytes, over the {max}-byte limit", max = protocol::MAX_RESULT_BYTES)]
    Oversized(usize),
    #[error("not a result: {0}")]
    Json(#[from] serde_json::Error),
    #[error("target field differs from the topic")]
    TargetMismatch,
    #[error("agent name {name:?}: {why}")]
    AgentName { name: String, why: String },
    #[error("notice field {0} over 256 bytes")]
    FieldTooLong(&'static str),
    #[error("received {received} > sent {sent}")]
    MoreReceivedThanSent { sent: u32, received: u32 },
    #[error("timestamp {0} is outside the accepted window (30 days back, 1 hour ahead)")]
    OutOfWindow(String),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// State shared by the broker sessions.
pub struct Intake {
    pub stats: Arc<IndexerStats>,
    agents: Mutex<Agents>,
    /// Wills waiting out their grace, oldest first (bounded by MAX_AGENTS).
    wills: Mutex<std::collections::VecDeque<PendingWill>>,
    /// When each broker last dropped its connection with us.
    broker_down: Mutex<std::collections::HashMap<Broker, SystemTime>>,
    bad_log: Throttled,
    news_log: Throttled,
    notice_log: Throttled,
    stale_log: Throttled,
    /// Shapes check documents for the configured Kibana app (fixed until restart).
    shaper: document::CheckShaper,
    /// What the HTTP page and metrics show. http: hook
    pub swarm: Arc<crate::swarm_state::SwarmState>,
    /// Judges each result and feeds the verdicts.
    pub insight: Arc<super::insight::Insight>,
}

impl Intake {
    pub fn new(
        stats: Arc<IndexerStats>,
        shaper: document::CheckShaper,
        insight: Arc<super::insight::Insight>,
    ) -> Self {
        Intake {
            shaper,
            insight,
            swarm: Arc::new(crate::swarm_state::SwarmState::new()),
            stats,
            agents: Mutex::new(Agents::new(MAX_AGENTS)),
            wills: Mutex::new(std::collections::VecDeque::new()),
            broker_down: Mutex::new(std::collections::HashMap::new()),
            bad_log: Throttled::new(Duration::from_secs(10)),
            news_log: Throttled::new(Duration::from_secs(1)),
            notice_log: Throttled::new(Duration::from_secs(1)),
            stale_log: Throttled::new(Duration::from_secs(1)),
        }
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, Agents> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the indexer knows of each agent.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, AgentSeen> {
        self.agents().snapshot()
    }

    /// Agents alive now.
    pub fn alive(&self) -> usize {
        self.agents().alive(SystemTime::now())
    }

    /// The one entry point of accepted messages: a document to make
    /// durable, or `None` (counted, logged at a bounded rate) for a message
    /// to acknowledge and forget. `broker` names the source for logs.
    pub fn intake(
        &self,
        broker: &Broker,
        counters: &BrokerStats,
        topic: &str,
        payload: &[u8],
    ) -> Option<BulkDoc> {
        let now = SystemTime::now();
        let verdict = if payload.len() > protocol::MAX_RESULT_BYTES {
            Err(Refusal::Oversized(payload.len()))
        } else if let Some(target) = topic.strip_prefix(protocol::PING_PREFIX) {
            self.result(broker, target, payload, now).map(Some)
        } else if topic.starts_with(protocol::RIP_AGENT_PREFIX) {
            self.notice(broker, payload, now)
        } else {
            Ok(None)
        };
        match verdict {
            Ok(Some(doc)) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                counters.received.fetch_add(1, Ordering::Relaxed);
                Some(doc)
            }
            Ok(None) => None,
            Err(why) => {
                let counter: &AtomicU64 = match why {
                    Refusal::Oversized(_) => &self.stats.oversized,
                    Refusal::OutOfWindow(_) => {
                        self.stats.out_of_window.fetch_add(1, Ordering::Relaxed);
                        &self.stats.malformed
                    }
                    _ => &self.stats.malformed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.bad_log.hit() {
                    tracing::warn!(broker = %broker, topic = %topic.escape_debug(), reason = %why,
                        total_bad = self.stats.bad(), suppressed, "message skipped");
                }
                None
            }
        }
    }

    fn result(
        &self,
        broker: &Broker,
        target: &str,
        payload: &[u8],
        now: SystemTime,
    ) -> Result<BulkDoc, Refusal> {
        let mut r: PingResult = serde_json::from_slice(payload)?;
        if r.target != target {
            return Err(Refusal::TargetMismatch);
        }
        check_agent(&r.agent)?;
        if r.received > r.sent {
            return Err(Refusal::MoreReceivedThanSent {
                sent: r.sent,
                received: r.received,
            });
        }
        let (at, canonical) = document::canonical_timestamp(&r.timestamp)?;
        if !in_window(at, now) {
            return Err(Refusal::OutOfWindow(canonical));
        }
        r.timestamp = canonical;
        let judged = self.insight.observe(&r, at);
        let doc = BulkDoc::check(&r, at, &self.shaper, judged.as_ref())?;
        self.swarm.record_result(&r, broker, now); // http: hook
        let touched = self.agents().result(&r.agent, r.interval, broker, now);
        if touched.evicted {
            self.stats.agents_evicted.fetch_add(1, Ordering::Relaxed);
        }
        if touched.resumed {
            // First result, or first since a notice: said once, not per
            // result, and at a bounded rate (names come from the network).
            if let Some(suppressed) = self.news_log.hit() {
                tracing::info!(agent = %r.agent, broker = %broker, suppressed, "agent is sending results");
            }
        }
        Ok(doc)
    }

    /// A notice on `rip/agent/...`: a document, or `None` for a repeat of
    /// what is known (a retained copy delivered again).
    fn notice(
        &self,
        broker: &Broker,
        payload: &[u8],
        now: SystemTime,
    ) -> Result<Option<BulkDoc>, Refusal> {
        let mut rip: Rip = serde_json::from_slice(payload)?;
        check_agent(&rip.agent)?;
        let since_ms = match &rip.since {
            Some(since) => {
                let (at, canonical) = document::canonical_timestamp(since)?;
                rip.since = Some(canonical);
                Some(crate::insight::verdict::system_ms(at))
            }
            None => None,
        };
        for (field, value) in [
            ("instance", &rip.instance),
            ("broker", &rip.broker),
            ("watch_version", &rip.watch_version),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > 256) {
                return Err(Refusal::FieldTooLong(field));
            }
        }
        if rip.reason == RipReason::Lost
            && self.agents().judge_notice(&rip, since_ms, broker, now) == NoticeKind::Current
        {
            let mut wills = self.wills.lock().unwrap_or_else(|p| p.into_inner());
            let known = wills.iter().any(|w| {
                w.rip.agent == rip.agent && w.since_ms == since_ms && w.rip.instance == rip.instance
            });
            if known {
                return Ok(None);
            }
            if wills.len() < MAX_AGENTS {
                tracing::debug!(agent = %rip.agent, broker = %broker, "a will: judged after its grace");
                wills.push_back(PendingWill {
                    rip,
                    since_ms,
                    broker: broker.clone(),
                    arrived: now,
                });
                return Ok(None);
            }
            // Full (a flood of wills): judged at once.
        }
        self.record_notice(broker, rip, since_ms, now)
    }

    /// A broker dropped its connection with us at `at` (see
    /// [`WILL_BEFORE_BROKER_DOWN`]).
    pub fn broker_lost(&self, broker: &Broker, at: SystemTime) {
        self.broker_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(broker.clone(), at);
    }

    /// Judges the wills whose grace is over: the agent's loss, or stale if
    /// it connected again meanwhile or if their broker went down as it
    /// published them. Returns their documents.
    pub fn settle_wills(&self, now: SystemTime) -> Vec<BulkDoc> {
        let due: Vec<PendingWill> = {
            let mut wills = self.wills.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            while wills
                .front()
                .is_some_and(|w| now.duration_since(w.arrived).is_ok_and(|d| d >= WILL_GRACE))
            {
                due.extend(wills.pop_front());
            }
            due
        };
        if due.is_empty() {
            return Vec::new();
        }
        let down = self
            .broker_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        due.into_iter()
            .filter_map(|w| {
                let broker_went_down = down.get(&w.broker).is_some_and(|at| {
                    at.duration_since(w.arrived).map_or_else(
                        |before| before.duration() <= WILL_BEFORE_BROKER_DOWN,
                        |after| after <= WILL_GRACE,
                    )
                });
                if broker_went_down {
                    self.stats.stale_notices.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.stale_log.hit() {
                        tracing::info!(agent = %w.rip.agent, broker = %w.broker, suppressed, "a will published by a broker going down: the agent is not lost for it");
                    }
                    return Some(BulkDoc::from_rip(&w.rip, w.arrived, true));
                }
                self.record_notice(&w.broker, w.rip, w.since_ms, w.arrived)
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// Judges and records a notice: its document, or `None` for a repeat.
    fn record_notice(
        &self,
        broker: &Broker,
        rip: Rip,
        since_ms: Option<i64>,
        now: SystemTime,
    ) -> Result<Option<BulkDoc>, Refusal> {
        let (touched, kind) = self.agents().notice(&rip, since_ms, broker, now);
        if touched.evicted {
            self.stats.agents_evicted.fetch_add(1, Ordering::Relaxed);
        }
        match kind {
            NoticeKind::Repeat => {
                // A presence update (the list version) or a retained copy.
                self.swarm.record_rip(&rip, now); // http: hook
                return Ok(None);
            }
            NoticeKind::Stale => {
                self.stats.stale_notices.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.stale_log.hit() {
                    tracing::info!(agent = %rip.agent, reason = rip.reason.as_str(), since = rip.since.as_deref().unwrap_or(""), broker = %broker, suppressed, "stale notice of an earlier connection: the agent is connected elsewhere, not lost");
                }
            }
            NoticeKind::Current => {
                if let Some(suppressed) = self.notice_log.hit() {
                    tracing::info!(agent = %rip.agent, reason = rip.reason.as_str(), broker = %broker, suppressed, "agent notice");
                }
                self.swarm.record_rip(&rip, now); // http: hook
                let notice = match rip.reason {
                    RipReason::Lost => Some(Notice::Lost),
                    RipReason::Shutdown => Some(Notice::Stopped),
                    RipReason::Online => None,
                };
                if let Some(n) = notice {
                    self.insight.notice(&rip.agent, n, now);
                }
            }
        }
        Ok(Some(BulkDoc::from_rip(
            &rip,
            now,
            kind == NoticeKind::Stale,
        )))
    }
}

fn check_agent(name: &str) -> Result<(), Refusal> {
    match crate::config::name_problem(name) {
        Some(why) => Err(Refusal::AgentName {
            name: name.chars().take(64).collect(),
            why,
        }),
        None => Ok(()),
    }
}

/// Whether a result timestamp is within [`MAX_AGE`] before and
/// [`MAX_AHEAD`] after `now`.
pub fn in_window(at: SystemTime, now: SystemTime) -> bool {
    match now.duration_since(at) {
        Ok(age) => age <= MAX_AGE,
        Err(ahead) => ahead.duration() <= MAX_AHEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(agent: &str, ts: &str, sent: u32, received: u32) -> Vec<u8> {
        serde_json::json!({
            "agent": agent, "labels": {}, "target": "t", "addr": null,
            "timestamp": ts, "interval": 60.0, "sent": sent, "received": received,
            "rtt": null, "rtts": []
        })
        .to_string()
        .into_bytes()
    }

    fn now_text() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    fn new_intake() -> Intake {
        Intake::new(
            Arc::new(IndexerStats::default()),
            Default::default(),
            Arc::new(super::super::insight::Insight::new(Default::default(), &[])),
        )
    }

    fn take(intake: &Intake, topic: &str, p: &[u8]) -> Option<BulkDoc> {
        let broker = Broker {
            host: "b".into(),
            port: 1,
            tls: false,
        };
        intake.intake(&broker, &BrokerStats::default(), topic, p)
    }

    #[test]
    fn hostile_results_are_counted_skips() {
        let intake = new_intake();
        let now = now_text();
        for bad in [
            payload("", &now, 1, 1),
            payload("a\0b", &now, 1, 1),
            payload("a b", &now, 1, 1),
            payload("a/b", &now, 1, 1),
            payload("a", &now, 1, 2),
            payload("a", "9999-12-31T23:59:59.999Z", 1, 1),
            payload("a", "1970-01-01T00:00:00Z", 1, 1),
            payload("a", "2026-13-01T00:00:00Z", 1, 1),
            vec![0xff; 100],
            vec![b'['; protocol::MAX_RESULT_BYTES + 1],
        ] {
            assert!(take(&intake, "ping/t", &bad).is_none());
        }
        let s = &intake.stats;
        assert_eq!(s.bad(), 10);
        assert_eq!(s.out_of_window.load(Ordering::Relaxed), 2);
        assert_eq!(s.oversized.load(Ordering::Relaxed), 1);
        assert!(intake.snapshot().is_empty(), "no agent from a refusal");
        assert!(take(&intake, "ping/t", &payload("a", &now, 2, 2)).is_some());
        assert_eq!(s.received.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_window_is_a_month_back_and_an_hour_ahead() {
        let now = SystemTime::now();
        assert!(in_window(now - Duration::from_secs(29 * 86400), now));
        assert!(!in_window(now - Duration::from_secs(31 * 86400), now));
        assert!(in_window(now + Duration::from_secs(3000), now));
        assert!(!in_window(now + Duration::from_secs(4000), now));
    }

    #[test]
    fn notices_with_bad_names_are_skipped() {
        let intake = new_intake();
        assert!(take(&intake, "rip/agent/x", br#"{"agent":"","reason":"lost"}"#).is_none());
        assert!(take(
            &intake,
            "rip/agent/x",
            br#"{"agent":"x","reason":"shutdown"}"#
        )
        .is_some());
    }

    #[test]
    fn hostile_notices_are_counted_skips() {
        let intake = new_intake();
        let long = "i".repeat(257);
        for bad in [
            format!(r#"{{"agent":"a","reason":"online","instance":"{long}"}}"#),
            format!(r#"{{"agent":"a","reason":"online","broker":"{long}"}}"#),
            format!(r#"{{"agent":"a","reason":"online","watch_version":"{long}"}}"#),
            r#"{"agent":"a","reason":"online","since":"9999-99-99"}"#.to_owned(),
            r#"{"agent":"a","reason":"gone"}"#.to_owned(),
        ] {
            assert!(
                take(&intake, "rip/agent/a", bad.as_bytes()).is_none(),
                "{bad}"
            );
        }
        assert_eq!(intake.stats.bad(), 5);
        assert!(intake.snapshot().is_empty(), "no agent from a refusal");
    }

    #[test]
    fn a_burst_of_wills_is_bounded_and_none_is_lost() {
        let intake = new_intake();
        let will = |i: usize| {
            format!(
                r#"{{"agent":"a{i}","reason":"lost","instance":"i","since":"2026-12-03T10:00:00.000Z"}}"#
            )
        };
        // Up to the bound, wills wait out their grace...
        for i in 0..MAX_AGENTS {
            assert!(take(&intake, "rip/agent/x", will(i).as_bytes()).is_none());
        }
        // ...past it, one is judged at once (its document now), not dropped.
        assert!(take(&intake, "rip/agent/x", will(MAX_AGENTS).as_bytes()).is_some());
        // A will delivered again while it waits is one will.
        assert!(take(&intake, "rip/agent/x", will(0).as_bytes()).is_none());
        let docs = intake.settle_wills(SystemTime::now() + WILL_GRACE);
        assert_eq!(docs.len(), MAX_AGENTS);
        assert!(intake
            .settle_wills(SystemTime::now() + WILL_GRACE)
            .is_empty());
    }

    #[test]
    fn a_will_counts_after_its_grace_unless_the_agent_connected_again() {
        let intake = new_intake();
        let presence = |reason: &str, since: &str| {
            format!(r#"{{"agent":"a","reason":"{reason}","instance":"i","since":"{since}"}}"#)
        };
        let (s1, s2) = ("2026-12-03T10:00:00.000Z", "2026-12-03T10:00:05.000Z");
        assert!(take(&intake, "rip/agent/a", presence("online", s1).as_bytes()).is_some());
        // The will of the first connection: held, not yet a loss.
        assert!(take(&intake, "rip/agent/a", presence("lost", s1).as_bytes()).is_none());
        // The new connection is announced during the grace.
        assert!(take(&intake, "rip/agent/a", presence("online", s2).as_bytes()).is_some());
        let now = SystemTime::now();
        assert!(intake.settle_wills(now).is_empty(), "still in its grace");
        let docs = intake.settle_wills(now + WILL_GRACE);
        assert_eq!(docs.len(), 1);
        assert!(
            docs[0].source().contains(r#""stale":true"#),
            "{}",
            docs[0].source()
        );
        // The current connection's will, once its grace is over, is the loss.
        assert!(take(&intake, "rip/agent/a", presence("lost", s2).as_bytes()).is_none());
        let docs = intake.settle_wills(SystemTime::now() + WILL_GRACE);
        assert_eq!(docs.len(), 1);
        assert!(
            docs[0].source().contains(r#""stale":false"#),
            "{}",
            docs[0].source()
        );
        assert_eq!(
            intake.snapshot()["a"].last_rip.map(|r| r.0),
            Some(RipReason::Lost)
        );
    }

    #[test]
    fn wills_of_a_broker_going_down_are_not_losses() {
        let intake = new_intake();
        let will =
            br#"{"agent":"a","reason":"lost","instance":"i","since":"2026-12-03T10:00:00.000Z"}"#;
        assert!(take(&intake, "rip/agent/a", will).is_none());
        // The broker that published it drops us right after.
        let b = Broker {
            host: "b".into(),
            port: 1,
            tls: false,
        };
        intake.broker_lost(&b, SystemTime::now());
        let docs = intake.settle_wills(SystemTime::now() + WILL_GRACE);
        assert_eq!(docs.len(), 1);
        assert!(
            docs[0].source().contains(r#""stale":true"#),
            "{}",
            docs[0].source()
        );
        assert_eq!(intake.snapshot().get("a").and_then(|a| a.last_rip), None);
    }
}
