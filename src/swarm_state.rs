//! What the indexer holds in memory about the swarm, for the operator: each
//! agent (alive, broker, last result), the latest result of every agent x
//! target pair, and a short history per target. Fed by the indexer's intake
//! (one call per accepted result or notice), read by the HTTP endpoint.
//!
//! Bounded: at most [`MAX_AGENTS`] agents, [`MAX_CELLS`] pairs and
//! [`HISTORY`] points per target; what does not fit is counted, not kept.
//! Agents and pairs silent for [`FORGET_AFTER`] are forgotten.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Broker;
use crate::indexer::AgentSeen;
use crate::protocol::{PingResult, Rip, RipReason, Target};

/// Agents remembered.
pub const MAX_AGENTS: usize = 10_000;
/// Agent x target pairs remembered.
pub const MAX_CELLS: usize = 100_000;
/// Targets with a history.
pub const MAX_TARGETS: usize = 5_000;
/// Longest agent name, target and round text kept (longer: not kept).
const MAX_NAME: usize = 253;
/// Labels kept per agent, and their longest key and value (cut).
const MAX_LABELS: usize = 16;
const MAX_LABEL_TEXT: usize = 128;
/// Longest error text kept (cut).
const MAX_ERROR: usize = 256;
/// Results kept per target for its history.
pub const HISTORY: usize = 60;
/// Agents and pairs without news for this long are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The state of one agent x target pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Every echo came back.
    Up,
    /// Some echoes were lost.
    Loss,
    /// None came back.
    Down,
    /// The name did not resolve or sending failed.
    Error,
    /// No result for three rounds.
    Stale,
}

impl CellState {
    fn of(r: &PingResult) -> CellState {
        if r.error.is_some() || r.sent == 0 {
            CellState::Error
        } else if r.received == 0 {
            CellState::Down
        } else if r.received < r.sent {
            CellState::Loss
        } else {
            CellState::Up
        }
    }
}

/// Lost echoes as a fraction (0 to 1) of those sent; `None` when none was.
fn loss(r: &PingResult) -> Option<f64> {
    (r.sent > 0).then(|| f64::from(r.sent.saturating_sub(r.received)) / f64::from(r.sent))
}

/// `text`, cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `kept` is what keeping `sent` (its first [`MAX_LABELS`],
/// cut) would give.
fn same_labels(kept: &BTreeMap<String, String>, sent: &BTreeMap<String, String>) -> bool {
    kept.len() == sent.len().min(MAX_LABELS)
        && kept.iter().zip(sent).all(|((kk, kv), (sk, sv))| {
            kk == cut(sk, MAX_LABEL_TEXT) && kv == cut(sv, MAX_LABEL_TEXT)
        })
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn age(now: SystemTime, t: SystemTime) -> f64 {
    now.duration_since(t)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone)]
struct Agent {
    seen: AgentSeen,
    /// The `watch` version it acknowledged in its presence (contract v2).
    list_version: Option<String>,
    labels: BTreeMap<String, String>,
    broker: Option<Broker>,
    /// Round start of the newest result (the agent's clock, RFC 3339).
    last_round: String,
    /// The latest result of each target it sent results for.
    cells: HashMap<String, Cell>,
}

#[derive(Debug, Clone)]
struct Cell {
    state: CellState,
    loss: Option<f64>,
    rtt_ms: Option<f64>,
    sent: u32,
    received: u32,
    error: Option<String>,
    round: String,
    interval: f64,
    at: SystemTime,
}

impl Default for Cell {
    fn default() -> Cell {
        Cell {
            state: CellState::Stale,
            loss: None,
            rtt_ms: None,
            sent: 0,
            received: 0,
            error: None,
            round: String::new(),
            interval: 0.0,
            at: SystemTime::UNIX_EPOCH,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Point {
    /// Unix time the result was received, in seconds.
    pub t: f64,
    pub agent: String,
    pub loss: Option<f64>,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Default)]
struct Inner {
    agents: BTreeMap<String, Agent>,
    /// Agent x target pairs held (the agents' `cells`).
    cell_count: usize,
    history: HashMap<String, VecDeque<Point>>,
    targets: Vec<Target>,
    list_version: Option<String>,
    brokers: BTreeMap<Broker, BrokerState>,
    /// The configured order, in which brokers are listed (and numbered).
    broker_order: Vec<Broker>,
    dropped: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct BrokerState {
    connected: bool,
    results: u64,
}

/// The swarm as the indexer sees it; shared, cheap to update.
#[derive(Debug, Default)]
pub struct SwarmState {
    inner: Mutex<Inner>,
}

/// One agent in [`Snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// A result within three rounds and no notice since.
    pub alive: bool,
    /// Broker its newest result came through.
    pub broker: Option<String>,
    /// Unix time of its newest result, in seconds.
    pub last_result: Option<f64>,
    /// Round start of its newest result, as the agent wrote it.
    pub last_round: Option<String>,
    /// Seconds between its rounds.
    pub interval: f64,
    /// `lost` or `shutdown` when a notice came after its last result.
    pub notice: Option<&'static str>,
    /// Version of the target list it runs, from its presence (null for
    /// agents of wire contract v1, which do not say).
    pub list_version: Option<String>,
}

/// One agent x target pair in [`Snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct CellView {
    pub agent: String,
    pub target: String,
    pub state: CellState,
    /// Lost echoes, 0 to 1.
    pub loss: Option<f64>,
    /// Average round-trip time, milliseconds.
    pub rtt_ms: Option<f64>,
    pub sent: u32,
    pub received: u32,
    pub error: Option<String>,
    /// Round start, as the agent wrote it.
    pub round: String,
    /// Seconds since the result was received.
    pub age_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerView {
    pub broker: String,
    pub connected: bool,
    /// Results received through it since start (duplicates included).
    pub results: u64,
}

/// The whole state at one instant, as `/api/state` serves it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Unix time of the snapshot, seconds.
    pub now: f64,
    /// Version of the list this indexer publishes on `watch`.
    pub list_version: Option<String>,
    /// Configured targets first, then others seen in results.
    pub targets: Vec<String>,
    pub agents: Vec<AgentView>,
    pub cells: Vec<CellView>,
    /// Newest results per target, oldest first.
    pub history: BTreeMap<String, Vec<Point>>,
    pub brokers: Vec<BrokerView>,
    /// Results not kept because a bound was reached.
    pub dropped: u64,
}

impl SwarmState {
    pub fn new() -> SwarmState {
        SwarmState::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The target list and its version, at start and on every reload.
    pub fn set_targets(&self, targets: &[Target], version: Option<String>) {
        let mut s = self.lock();
        s.targets = targets.to_vec();
        s.list_version = version;
    }

    /// The brokers the indexer is configured with (others are forgotten).
    pub fn set_brokers(&self, brokers: &[Broker]) {
        let mut s = self.lock();
        s.brokers.retain(|b, _| brokers.contains(b));
        for b in brokers {
            s.brokers.entry(b.clone()).or_default();
        }
        s.broker_order = brokers.to_vec();
    }

    /// A broker session connected or lost its connection.
    pub fn broker_connected(&self, broker: &Broker, connected: bool) {
        self.lock()
            .brokers
            .entry(broker.clone())
            .or_default()
            .connected = connected;
    }

    /// A valid result, accepted through `broker` at `now`.
    pub fn record_result(&self, r: &PingResult, broker: &Broker, now: SystemTime) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(b) = s.brokers.get_mut(broker) {
            b.results = b.results.saturating_add(1);
        }
        // Results are at most 64 KiB of anyone's text: keep names that fit
        // and cut the rest, so the bounds above bound the memory too.
        if r.agent.len() > MAX_NAME || r.target.len() > MAX_NAME || r.timestamp.len() > MAX_NAME {
            s.dropped = s.dropped.saturating_add(1);
            return;
        }
        let Inner {
            agents,
            cell_count,
            history,
            dropped,
            ..
        } = s;
        // The agent is looked up once: every result of a steady swarm
        // lands here.
        let agents_held = agents.len();
        let found = agents.get_mut(&r.agent);
        if found.is_none() && agents_held >= MAX_AGENTS {
            *dropped = dropped.saturating_add(1);
            return;
        }
        // A round already seen (redelivered after a failover, or through
        // another broker) or older than the newest: nothing new.
        match found.as_deref().and_then(|a| a.cells.get(&r.target)) {
            Some(c) if r.timestamp <= c.round => return,
            Some(_) => {}
            None if *cell_count >= MAX_CELLS => {
                *dropped = dropped.saturating_add(1);
                return;
            }
            None => *cell_count += 1,
        }
        // What is as it was is left in place, not built again (no
        // allocation per result).
        let agent = match found {
            Some(agent) => agent,
            None => agents.entry(r.agent.clone()).or_insert_with(|| Agent {
                seen: AgentSeen {
                    last_result: None,
                    interval: r.interval,
                    last_rip: None,
                    session: None,
                    result_broker: None,
                },
                list_version: None,
                labels: BTreeMap::new(),
                broker: None,
                last_round: String::new(),
                cells: HashMap::new(),
            }),
        };
        agent.seen.last_result = Some(now);
        agent.seen.interval = r.interval;
        if !same_labels(&agent.labels, &r.labels) {
            agent.labels = r
                .labels
                .iter()
                .take(MAX_LABELS)
                .map(|(k, v)| {
                    (
                        cut(k, MAX_LABEL_TEXT).to_owned(),
                        cut(v, MAX_LABEL_TEXT).to_owned(),
                    )
                })
                .collect();
        }
        if agent.broker.as_ref() != Some(broker) {
            agent.broker = Some(broker.clone());
        }
        if r.timestamp > agent.last_round {
            agent.last_round.clone_from(&r.timestamp);
        }
        let rtt_ms = r.rtt.map(|x| x.avg);
        let cell = match agent.cells.get_mut(&r.target) {
            Some(cell) => cell,
            None => agent
                .cells
                .entry(r.target.clone())
                .or_insert_with(Cell::default),
        };
        cell.state = CellState::of(r);
        cell.loss = loss(r);
        cell.rtt_ms = rtt_ms;
        cell.sent = r.sent;
        cell.received = r.received;
        cell.error = r.error.as_deref().map(|e| cut(e, MAX_ERROR).to_owned());
        cell.round.clone_from(&r.timestamp);
        cell.interval = r.interval;
        cell.at = now;
        let targets_held = history.len();
        let history = match history.get_mut(&r.target) {
            Some(h) => h,
            None if targets_held >= MAX_TARGETS => return,
            None => history.entry(r.target.clone()).or_default(),
        };
        // The oldest point's name is reused for the newest.
        let mut point = if history.len() >= HISTORY {
            history.pop_front()
        } else {
            None
        }
        .unwrap_or_default();
        point.t = unix(now);
        point.agent.clone_from(&r.agent);
        point.loss = loss(r);
        point.rtt_ms = rtt_ms;
        history.push_back(point);
    }

    /// Records a notice that is news (not stale): `online` presence
    /// carries the list version the agent applied; `lost` and `shutdown`
    /// mark it gone until its next result.
    pub fn record_rip(&self, rip: &Rip, now: SystemTime) {
        if let Some(a) = self.lock().agents.get_mut(&rip.agent) {
            match rip.reason {
                RipReason::Online => {
                    a.seen.last_rip = None;
                    if rip.watch_version.is_some() {
                        a.list_version.clone_from(&rip.watch_version);
                    }
                }
                r => a.seen.last_rip = Some((r, now)),
            }
        }
    }

    /// Forgets agents, pairs and histories without news for
    /// [`FORGET_AFTER`].
    pub fn prune(&self, now: SystemTime) {
        let mut s = self.lock();
        let old = |t: SystemTime| age(now, t) > FORGET_AFTER.as_secs_f64();
        let mut cells = 0;
        s.agents.retain(|_, a| {
            a.cells.retain(|_, c| !old(c.at));
            let keep = a.seen.last_result.is_some_and(|t| !old(t));
            if keep {
                cells += a.cells.len();
            }
            keep
        });
        s.cell_count = cells;
        for h in s.history.values_mut() {
            while h
                .front()
                .is_some_and(|p| unix(now) - p.t > FORGET_AFTER.as_secs_f64())
            {
                h.pop_front();
            }
        }
        s.history.retain(|_, h| !h.is_empty());
    }

    /// Agents alive and known.
    pub fn agent_counts(&self, now: SystemTime) -> (usize, usize) {
        let s = self.lock();
        let alive = s.agents.values().filter(|a| a.seen.alive(now)).count();
        (alive, s.agents.len())
    }

    /// Everything, at `now`.
    pub fn snapshot(&self, now: SystemTime) -> Snapshot {
        let s = self.lock();
        let mut targets: Vec<String> = s.targets.iter().map(|t| t.to_string()).collect();
        let mut others: Vec<&String> = s
            .history
            .keys()
            .filter(|t| !s.targets.iter().any(|c| c.as_str() == t.as_str()))
            .collect();
        others.sort();
        targets.extend(others.into_iter().cloned());
        let agents = s
            .agents
            .iter()
            .map(|(name, a)| AgentView {
                name: name.clone(),
                labels: a.labels.clone(),
                alive: a.seen.alive(now),
                broker: a.broker.as_ref().map(|b| b.to_string()),
                last_result: a.seen.last_result.map(unix),
                last_round: (!a.last_round.is_empty()).then(|| a.last_round.clone()),
                interval: a.seen.interval,
                notice: a
                    .seen
                    .last_rip
                    .filter(|(_, at)| a.seen.last_result.is_none_or(|r| *at >= r))
                    .map(|(reason, _)| reason.as_str()),
                list_version: a.list_version.clone(),
            })
            .collect();
        let mut cells: Vec<CellView> = s
            .agents
            .iter()
            .flat_map(|(agent, a)| a.cells.iter().map(move |(target, c)| (agent, target, c)))
            .map(|(agent, target, c)| {
                let age_s = age(now, c.at);
                let stale = age_s > 3.0 * c.interval.max(1.0);
                CellView {
                    agent: agent.clone(),
                    target: target.clone(),
                    state: if stale { CellState::Stale } else { c.state },
                    loss: c.loss,
                    rtt_ms: c.rtt_ms,
                    sent: c.sent,
                    received: c.received,
                    error: c.error.clone(),
                    round: c.round.clone(),
                    age_s,
                }
            })
            .collect();
        cells.sort_by(|a, b| (&a.target, &a.agent).cmp(&(&b.target, &b.agent)));
        Snapshot {
            now: unix(now),
            list_version: s.list_version.clone(),
            targets,
            agents,
            cells,
            history: s
                .history
                .iter()
                .map(|(t, h)| (t.clone(), h.iter().cloned().collect()))
                .collect(),
            brokers: s
                .broker_order
                .iter()
                .filter_map(|b| s.brokers.get_key_value(b))
                .chain(
                    s.brokers
                        .iter()
                        .filter(|(b, _)| !s.broker_order.contains(b)),
                )
                .map(|(b, st)| BrokerView {
                    broker: b.to_string(),
                    connected: st.connected,
                    results: st.results,
                })
                .collect(),
            dropped: s.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(agent: &str, target: &str, ts: &str, sent: u32, received: u32) -> PingResult {
        PingResult {
            agent: agent.into(),
            labels: [("provider".to_owned(), "ovh".to_owned())].into(),
            target: target.into(),
            addr: None,
            timestamp: ts.into(),
            interval: 10.0,
            sent,
            received,
            rtt: crate::protocol::RttStats::from_rtts(&vec![Some(2.0); received as usize]),
            rtts: Vec::new(),
            error: None,
        }
    }

    /// Records `r` = (agent, target, round, sent, received) through the
    /// broker on `port`.
    fn feed(s: &SwarmState, r: (&str, &str, &str, u32, u32), port: u16, at: SystemTime) {
        s.record_result(&result(r.0, r.1, r.2, r.3, r.4), &broker(port), at);
    }

    fn broker(port: u16) -> Broker {
        Broker {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        }
    }

    #[test]
    fn the_latest_round_wins_and_redeliveries_change_nothing() {
        let s = SwarmState::new();
        // Listed in the configured order, not sorted.
        s.set_brokers(&[broker(3), broker(1), broker(2)]);
        let order: Vec<String> = s
            .snapshot(SystemTime::UNIX_EPOCH)
            .brokers
            .into_iter()
            .map(|b| b.broker)
            .collect();
        assert_eq!(order, ["127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2"]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        feed(&s, ("a", "x", "2026-01-01T00:00:10Z", 4, 4), 1, t0);
        feed(&s, ("a", "x", "2026-01-01T00:00:20Z", 4, 1), 1, t0);
        // The earlier round again, through the other broker.
        feed(&s, ("a", "x", "2026-01-01T00:00:10Z", 4, 4), 2, t0);
        let snap = s.snapshot(t0 + Duration::from_secs(1));
        assert_eq!(snap.cells.len(), 1);
        assert_eq!(snap.cells[0].state, CellState::Loss);
        assert_eq!(snap.cells[0].loss, Some(0.75));
        assert_eq!(snap.history["x"].len(), 2);
        assert_eq!(snap.agents[0].broker.as_deref(), Some("127.0.0.1:1"));
        assert!(snap.agents[0].alive);
        assert_eq!(snap.brokers[2].results, 1, "counted per broker");
        feed(&s, ("a", "x", "2026-01-01T00:00:30Z", 4, 0), 2, t0);
        let snap = s.snapshot(t0 + Duration::from_secs(1));
        assert_eq!(snap.cells[0].state, CellState::Down);
        assert_eq!(snap.agents[0].broker.as_deref(), Some("127.0.0.1:2"));
        // Three rounds without news: stale, and the agent is not alive.
        let snap = s.snapshot(t0 + Duration::from_secs(31));
        assert_eq!(snap.cells[0].state, CellState::Stale);
        assert!(!snap.agents[0].alive);
    }

    #[test]
    fn a_notice_marks_the_agent_gone_until_its_next_result() {
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        feed(&s, ("a", "x", "2026-01-01T00:00:10Z", 1, 1), 1, t0);
        s.record_rip(
            &Rip {
                agent: "a".into(),
                reason: RipReason::Shutdown,
                ..Rip::default()
            },
            t0 + Duration::from_secs(1),
        );
        let snap = s.snapshot(t0 + Duration::from_secs(2));
        assert!(!snap.agents[0].alive);
        assert_eq!(snap.agents[0].notice, Some("shutdown"));
        feed(
            &s,
            ("a", "x", "2026-01-01T00:00:20Z", 1, 1),
            1,
            t0 + Duration::from_secs(3),
        );
        let snap = s.snapshot(t0 + Duration::from_secs(3));
        assert!(snap.agents[0].alive);
        assert_eq!(snap.agents[0].notice, None);
    }

    #[test]
    fn bounds_hold_under_a_flood_of_names() {
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Far more pairs than kept, and far more rounds than the history.
        for i in 0..(MAX_CELLS + 500) {
            let r = result(
                &format!("a{}", i % 50),
                &format!("t{i}"),
                "2026-01-01T00:00:10Z",
                1,
                1,
            );
            s.record_result(&r, &broker(1), t0);
        }
        for i in 0..(HISTORY * 3) {
            let r = result(
                "a0",
                "t0",
                &format!("2026-01-02T00:{:02}:{:02}Z", i / 60, i % 60),
                1,
                1,
            );
            s.record_result(&r, &broker(1), t0);
        }
        let snap = s.snapshot(t0);
        assert_eq!(snap.cells.len(), MAX_CELLS);
        assert!(snap.dropped >= 500);
        assert!(snap.history.len() <= MAX_TARGETS);
        assert_eq!(snap.history["t0"].len(), HISTORY);
        s.prune(t0 + FORGET_AFTER + Duration::from_secs(1));
        let snap = s.snapshot(t0 + FORGET_AFTER);
        assert!(snap.cells.is_empty() && snap.agents.is_empty() && snap.history.is_empty());
        // What was forgotten makes room again.
        let later = t0 + FORGET_AFTER + Duration::from_secs(2);
        feed(&s, ("new", "t-new", "2026-01-03T00:00:00Z", 1, 1), 1, later);
        assert_eq!(s.snapshot(later).cells.len(), 1);
    }

    #[test]
    fn the_pair_count_follows_what_is_kept() {
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = t0 + Duration::from_secs(600);
        let count = |s: &SwarmState| {
            let held = s.lock().cell_count;
            assert_eq!(held, s.snapshot(later).cells.len());
            held
        };
        feed(&s, ("a", "old", "2026-01-01T00:00:10Z", 1, 1), 1, t0);
        feed(&s, ("a", "new", "2026-01-01T00:10:10Z", 1, 1), 1, later);
        // The clock stepped back: b's newest result is older than its
        // other pair's.
        feed(&s, ("b", "x", "2026-01-01T00:10:10Z", 1, 1), 1, later);
        feed(&s, ("b", "y", "2026-01-01T00:10:20Z", 1, 1), 1, t0);
        assert_eq!(count(&s), 4);
        // a keeps its new pair; b goes, with both of its pairs.
        s.prune(t0 + FORGET_AFTER + Duration::from_secs(1));
        assert_eq!(count(&s), 1);
        assert_eq!(s.snapshot(later).agents.len(), 1);
    }

    #[test]
    fn labels_kept_compare_equal_to_the_labels_sent() {
        let sent: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("k{i:02}{}", "é".repeat(100)), "v".repeat(300)))
            .collect();
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = result("a", "x", "2026-01-01T00:00:10Z", 1, 1);
        r.labels = sent.clone();
        s.record_result(&r, &broker(1), t0);
        let kept = s.lock().agents["a"].labels.clone();
        assert_eq!(kept.len(), MAX_LABELS);
        assert!(same_labels(&kept, &sent), "a repeat would rebuild them");
        let mut other = sent.clone();
        other.insert("k00".into(), "changed".into());
        assert!(!same_labels(&kept, &other));
    }

    #[test]
    fn labels_follow_the_newest_result() {
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = result("a", "x", "2026-01-01T00:00:10Z", 1, 1);
        s.record_result(&r, &broker(1), t0);
        let labels = |s: &SwarmState| s.snapshot(t0).agents[0].labels.clone();
        assert_eq!(labels(&s)["provider"], "ovh");
        r.timestamp = "2026-01-01T00:00:20Z".into();
        r.labels.insert("provider".into(), "free".into());
        s.record_result(&r, &broker(1), t0);
        assert_eq!(labels(&s)["provider"], "free");
        r.timestamp = "2026-01-01T00:00:30Z".into();
        r.labels.clear();
        s.record_result(&r, &broker(1), t0);
        assert!(labels(&s).is_empty());
    }

    #[test]
    fn hostile_text_is_cut_or_refused() {
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = result("a", "x", "2026-01-01T00:00:10Z", 1, 0);
        r.error = Some("é".repeat(10_000));
        r.labels = (0..100)
            .map(|i| (format!("k{i}"), "v".repeat(5000)))
            .collect();
        s.record_result(&r, &broker(1), t0);
        let mut long = result(&"n".repeat(300), "x", "2026-01-01T00:00:10Z", 1, 1);
        s.record_result(&long, &broker(1), t0);
        long = result("b", &"t".repeat(300), "2026-01-01T00:00:10Z", 1, 1);
        s.record_result(&long, &broker(1), t0);
        let snap = s.snapshot(t0);
        assert_eq!(snap.agents.len(), 1);
        assert_eq!(snap.dropped, 2);
        assert!(snap.cells[0].error.as_ref().unwrap().len() <= MAX_ERROR);
        assert_eq!(snap.agents[0].labels.len(), MAX_LABELS);
        assert!(snap.agents[0]
            .labels
            .values()
            .all(|v| v.len() == MAX_LABEL_TEXT));
    }

    #[test]
    fn configured_targets_come_first() {
        let s = SwarmState::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        s.set_targets(
            &["z".parse().unwrap(), "b".parse().unwrap()],
            Some("v".into()),
        );
        feed(&s, ("a", "a-old", "2026-01-01T00:00:10Z", 1, 1), 1, t0);
        feed(&s, ("a", "b", "2026-01-01T00:00:10Z", 1, 1), 1, t0);
        let snap = s.snapshot(t0);
        assert_eq!(snap.targets, ["z", "b", "a-old"]);
        assert_eq!(snap.list_version.as_deref(), Some("v"));
    }
}
