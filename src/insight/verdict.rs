//! The correlator: compares what every agent sees of every target and
//! says whose fault a bad view is, steadily.
//!
//! Input: each result ([`Observation`]) and each agent notice. Output:
//! [`Change`]s of the retained verdicts, for every target in the list and
//! every known agent, healthy ones included.
//!
//! Rules (also in `docs/protocol.md`):
//! - An agent *reports on* a target when its latest round of it is no older
//!   than three of its intervals behind the newest round of that target.
//! - Target: no bad report -> `up`, cause `none`. Otherwise the state is the
//!   most common bad state (ties: the worse one), and the cause is `target`
//!   when more than half the reporting agents see it bad and, where they
//!   belong to several providers, the bad ones to more than one;
//!   `provider` when the bad agents (two or more) share one `provider`
//!   label; `agent` otherwise.
//! - Agent: `trouble` when more than half of the targets it shares with
//!   peers look bad to it while most of those peers see them `up`; `lost`
//!   after its last will or three intervals of silence; `stopped` after a
//!   clean shutdown notice; `ok` otherwise. (Silence: at least
//!   [`SILENT_MIN_MS`], whatever the interval.)
//! - Hysteresis: a new state is adopted only when it holds through
//!   [`Settings::confirm_rounds`] full rounds after the round that showed
//!   it (every reporting agent reported again, and the state still held).
//!   One bad round never changes a verdict; one good round never ends one.
//!   Agents are judged on *settled* views: an agent's view of a target
//!   counts as bad (or good again) once it held for `confirm_rounds`
//!   rounds after the one that showed it, so an agent's verdict depends on
//!   the rounds alone, never on when an indexer looked.
//! - Everything is computed from the rounds' own timestamps, never from
//!   arrival times, so every indexer that sees the same results publishes
//!   the same payloads. The clock that expires silent agents and targets
//!   is the newest round seen (bounded by the wall clock), so a broker
//!   outage, during which nothing arrives, expires nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use super::levels::{Baseline, Levels};
use crate::protocol::{AgentState, AgentVerdict, Cause, RoundState, TargetState, TargetVerdict};

/// The reason given with an `ok` agent verdict.
const OK_REASON: &str = "its view agrees with its peers'";
/// How many intervals without a round make an agent silent.
pub const SILENT_INTERVALS: i64 = 3;
/// Silence shorter than this never makes an agent lost, whatever its
/// interval, in ms: a broker restart delays an agent's rounds by its
/// reconnect (the rounds wait in its queue), and agents of a short
/// interval must not read as lost for it.
pub const SILENT_MIN_MS: i64 = 30_000;

/// One result, as the correlator needs it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub agent: &'a str,
    /// The agent's `provider` label.
    pub provider: Option<&'a str>,
    pub target: &'a str,
    /// Start of the round, milliseconds since the epoch.
    pub at_ms: i64,
    /// The agent's interval between rounds, in milliseconds.
    pub interval_ms: i64,
    pub sent: u32,
    pub received: u32,
    /// Average rtt in ms; None when nothing came back.
    pub rtt_avg_ms: Option<f64>,
}

/// How one round was judged, and by which levels (stored in its document).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classified {
    pub state: RoundState,
    /// The slow threshold applied, in ms (the level, or the relative one
    /// from the baseline).
    pub slow_ms: f64,
    /// The lossy level applied, a fraction of the echoes.
    pub lossy: f64,
    /// This agent's baseline for the target (median rtt, ms), if it had one.
    pub baseline_ms: Option<f64>,
}

/// An agent's lifecycle notice (a will already judged not stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Lost,
    Stopped,
}

/// Correlator settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Levels for targets that do not set their own.
    pub levels: Levels,
    /// Full rounds a new state must hold before it is adopted.
    pub confirm_rounds: u32,
    /// Agents remembered; past it, the longest silent one is forgotten.
    pub max_agents: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            levels: Levels::default(),
            confirm_rounds: 1,
            max_agents: 10_000,
        }
    }
}

/// A verdict to publish (retained). `transition` is set when the state or
/// cause changed (an incident starts or ends), not for a count update.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Target {
        verdict: TargetVerdict,
        transition: bool,
    },
    Agent {
        verdict: AgentVerdict,
        transition: bool,
    },
    /// The target left the list: clear its retained verdict.
    TargetRemoved(String),
}

/// One agent's view of one target.
#[derive(Debug, Clone)]
struct Pair {
    state: RoundState,
    at_ms: i64,
    interval_ms: i64,
    /// First round of the current good or bad streak.
    streak_since_ms: i64,
    /// Rounds in the current streak.
    streak_rounds: u32,
    /// Bad or good as confirmed: the streak held for more than
    /// `confirm_rounds` rounds. Agents are judged on it, so their verdicts
    /// follow the data alone, not when an indexer happens to look.
    settled_bad: bool,
    /// First round of the settled streak.
    settled_since_ms: i64,
    baseline: Baseline,
    /// The agent's `provider` label as of its latest round on this target.
    /// Why a copy: judging a target reads it for every agent, and looking
    /// each agent up instead cost most of the time of an outage.
    provider: Option<String>,
}

/// A candidate state waiting for its confirming rounds.
#[derive(Debug, Clone)]
struct Pending<K> {
    key: K,
    /// Who must report again for a round to count, and who did.
    needed: BTreeSet<String>,
    reported: BTreeSet<String>,
    rounds: u32,
}

impl<K: PartialEq> Pending<K> {
    fn new(key: K, needed: BTreeSet<String>) -> Self {
        Pending {
            key,
            needed,
            reported: BTreeSet::new(),
            rounds: 0,
        }
    }

    /// Notes that `who` reported; true once the candidate held through
    /// `confirm` full rounds.
    fn report(&mut self, who: &str, still_needed: impl Fn(&str) -> bool, confirm: u32) -> bool {
        self.reported.insert(who.to_owned());
        // Someone who went silent cannot hold the verdict back.
        self.needed.retain(|a| still_needed(a));
        if self.needed.iter().all(|a| self.reported.contains(a)) {
            self.rounds += 1;
            self.reported.clear();
        }
        self.rounds >= confirm
    }
}

type TargetKey = (TargetState, Cause, Option<String>);

#[derive(Debug)]
struct TargetEntry {
    levels: Levels,
    /// Agent name -> its view.
    pairs: BTreeMap<String, Pair>,
    published: TargetVerdict,
    pending: Option<Pending<TargetKey>>,
}

#[derive(Debug)]
struct AgentEntry {
    last_ms: i64,
    interval_ms: i64,
    notice: Option<(Notice, i64)>,
    published: AgentVerdict,
}

/// The verdicts of one indexer.
#[derive(Debug, Default)]
pub struct Correlator {
    settings: Settings,
    targets: BTreeMap<String, TargetEntry>,
    agents: BTreeMap<String, AgentEntry>,
    /// Newest round seen, ms since the epoch: the clock of expiry.
    newest_ms: i64,
    /// Agents whose `notice` is set. Why kept: while it is 0 (the usual
    /// case) judging a target needs no lookup of each reporting agent.
    noticed: usize,
    changes: Vec<Change>,
}

/// RFC 3339 UTC with milliseconds, for `since`.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = u64::try_from(ms)
        .ok()
        .and_then(|ms| SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Whose network a view comes from: its `provider` label, or, without
/// one, the agent itself (a provider of its own). Borrowed: building one
/// per agent per result must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ProviderKey<'a> {
    Label(&'a str),
    Agent(&'a str),
}

impl<'a> ProviderKey<'a> {
    fn of(agent: &'a str, provider: Option<&'a str>) -> Self {
        match provider {
            Some(p) => ProviderKey::Label(p),
            None => ProviderKey::Agent(agent),
        }
    }
}

/// Whether `agent`'s view `p` counts at `at_ms`: fresh (within three of
/// its intervals) and its agent not gone (no lost or stopped notice;
/// `noticed` agents have one, so at 0 nobody needs looking up).
fn reports(
    agents: &BTreeMap<String, AgentEntry>,
    noticed: usize,
    agent: &str,
    p: &Pair,
    at_ms: i64,
) -> bool {
    fresh(p, at_ms) && (noticed == 0 || agents.get(agent).is_some_and(|ag| ag.notice.is_none()))
}

/// The agents of `pairs` (one target's views) reporting at `at_ms`, with
/// their views (see [`reports`]).
fn reporting_in<'a>(
    pairs: &'a BTreeMap<String, Pair>,
    agents: &'a BTreeMap<String, AgentEntry>,
    noticed: usize,
    at_ms: i64,
) -> impl Iterator<Item = (&'a str, &'a Pair)> {
    pairs
        .iter()
        .filter(move |(a, p)| reports(agents, noticed, a, p, at_ms))
        .map(|(a, p)| (a.as_str(), p))
}

/// Whether view `p` is recent enough to count at `at_ms` (within three of
/// its agent's intervals).
fn fresh(p: &Pair, at_ms: i64) -> bool {
    p.at_ms
        .saturating_add(SILENT_INTERVALS.saturating_mul(p.interval_ms))
        >= at_ms
}

fn severity(s: RoundState) -> u8 {
    match s {
        RoundState::Up => 0,
        RoundState::Slow => 1,
        RoundState::Lossy => 2,
        RoundState::Down => 3,
    }
}

impl Correlator {
    pub fn new(settings: Settings) -> Self {
        Correlator {
            settings,
            ..Correlator::default()
        }
    }

    /// Sets the default levels (applied by the next [`Self::set_targets`]).
    pub fn set_levels(&mut self, levels: Levels) {
        self.settings.levels = levels;
    }

    /// Sets the target list, each with its own levels or None for the
    /// defaults. New targets start `unknown`; removed ones are cleared.
    pub fn set_targets(&mut self, list: &[(String, Option<Levels>)]) {
        let wanted: BTreeSet<&str> = list.iter().map(|(t, _)| t.as_str()).collect();
        let gone: Vec<String> = self
            .targets
            .keys()
            .filter(|t| !wanted.contains(t.as_str()))
            .cloned()
            .collect();
        for t in gone {
            self.targets.remove(&t);
            self.changes.push(Change::TargetRemoved(t));
        }
        for (t, levels) in list {
            let levels = levels.unwrap_or(self.settings.levels);
            if let Some(e) = self.targets.get_mut(t) {
                e.levels = levels;
                continue;
            }
            let verdict = TargetVerdict {
                target: t.clone(),
                state: TargetState::Unknown,
                cause: Cause::None,
                agents_bad: 0,
                agents_total: 0,
                providers_bad: 0,
                // Never reported on: the epoch, the same on every indexer
                // (the wall clock would differ, and indexers would fight
                // over the retained topic).
                since: rfc3339_ms(0),
                provider: None,
            };
            self.changes.push(Change::Target {
                verdict: verdict.clone(),
                transition: false,
            });
            self.targets.insert(
                t.clone(),
                TargetEntry {
                    levels,
                    pairs: BTreeMap::new(),
                    published: verdict,
                    pending: None,
                },
            );
        }
    }

    /// Takes one result; returns how its round was judged, or None when
    /// the target is not in the list (nothing to judge it against). A
    /// redelivered or late round is judged but changes nothing.
    pub fn observe(&mut self, o: &Observation) -> Option<Classified> {
        let interval_ms = o.interval_ms.max(1);
        let entry = self.targets.get_mut(o.target)?;
        // Why not entry(): it would allocate the name for every result.
        let pair = match entry.pairs.get_mut(o.agent) {
            Some(pair) => pair,
            None => entry.pairs.entry(o.agent.to_owned()).or_insert(Pair {
                state: RoundState::Up,
                at_ms: i64::MIN,
                interval_ms,
                streak_since_ms: o.at_ms,
                streak_rounds: 0,
                settled_bad: false,
                settled_since_ms: o.at_ms,
                baseline: Baseline::default(),
                provider: None,
            }),
        };
        let provider_changed = pair.provider.as_deref() != o.provider;
        if provider_changed {
            pair.provider = o.provider.map(str::to_owned);
        }
        let secs = o.at_ms.div_euclid(1000);
        let baseline_ms = pair.baseline.median(secs);
        let state = entry
            .levels
            .classify(o.sent, o.received, o.rtt_avg_ms, baseline_ms);
        let classified = Classified {
            state,
            slow_ms: entry.levels.slow_threshold(baseline_ms),
            lossy: entry.levels.lossy,
            baseline_ms,
        };
        if o.at_ms <= pair.at_ms {
            // A redelivery or a late round: the newer view stands.
            return Some(classified);
        }
        if let Some(rtt) = o.rtt_avg_ms.filter(|_| state != RoundState::Down) {
            pair.baseline.push(secs, rtt);
        }
        let before = (
            pair.state,
            pair.streak_since_ms,
            fresh(pair, self.newest_ms),
        );
        let first = pair.at_ms == i64::MIN;
        if state.is_bad() != pair.state.is_bad() || first {
            pair.streak_since_ms = o.at_ms;
            pair.streak_rounds = 0;
        }
        pair.streak_rounds = pair.streak_rounds.saturating_add(1);
        // A streak settles after `confirm_rounds` more rounds; a first
        // round settles at once only when good (a new agent is not
        // presumed in trouble).
        let settles =
            pair.streak_rounds > self.settings.confirm_rounds || (first && !state.is_bad());
        if settles && pair.settled_bad != state.is_bad() {
            pair.settled_bad = state.is_bad();
            pair.settled_since_ms = pair.streak_since_ms;
        }
        pair.state = state;
        pair.at_ms = o.at_ms;
        pair.interval_ms = interval_ms;
        self.newest_ms = self.newest_ms.max(o.at_ms);
        // Why not judge every round: judging visits every agent of the
        // target. A round that leaves this view as it was (same state and
        // streak, counted before and after, same provider, no candidate
        // verdict waiting for confirming rounds, the agent under no
        // notice) changes nothing of the verdict but what the passing of
        // time does (other views going stale), which the tick judges.
        let steady = !first
            && !provider_changed
            && entry.pending.is_none()
            && before == (pair.state, pair.streak_since_ms, true)
            && fresh(pair, self.newest_ms);

        let under_notice = self.note_agent(o, interval_ms);
        if !steady || under_notice {
            self.judge_target(o.target, Some(o.agent));
        }
        // The agent's own verdict is judged on `tick`, from settled views.
        Some(classified)
    }

    /// Takes an agent's notice: `lost` (a will that is not stale) or
    /// `stopped`, at `at_ms`.
    pub fn notice(&mut self, agent: &str, notice: Notice, at_ms: i64) {
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        if a.last_ms > at_ms {
            // Results newer than the notice: the agent is back already.
            return;
        }
        // Dated from its rounds, not from when the notice arrived, so that
        // every indexer publishes the same `since`: lost from the round
        // that did not come, stopped from its last round.
        let since = match notice {
            Notice::Lost => a.last_ms.saturating_add(a.interval_ms),
            Notice::Stopped => a.last_ms,
        };
        if a.notice.is_none() {
            self.noticed += 1;
        }
        a.notice = Some((notice, since));
        self.judge_agent_at(agent, self.newest_ms, AgentView::default());
        // Its views no longer count for the targets.
        let targets: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, e)| e.pairs.contains_key(agent))
            .map(|(t, _)| t.clone())
            .collect();
        for t in targets {
            self.judge_target(&t, None);
        }
    }

    /// Expires silent agents and targets; call it every few seconds with the
    /// wall clock (which only bounds the data clock).
    pub fn tick(&mut self, now: SystemTime) {
        let now_ms = self.newest_ms.min(system_ms(now));
        let agents: Vec<String> = self.agents.keys().cloned().collect();
        let views = self.agent_views(&agents, now_ms);
        for (a, view) in agents.iter().zip(views) {
            self.judge_agent_at(a, now_ms, view);
        }
        let targets: Vec<String> = self.targets.keys().cloned().collect();
        for t in targets {
            self.judge_target_at(&t, None, now_ms);
        }
    }

    /// Verdicts changed since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Every current target verdict (to publish in full after a connect).
    pub fn target_verdicts(&self) -> impl Iterator<Item = &TargetVerdict> {
        self.targets.values().map(|e| &e.published)
    }

    /// Every current agent verdict.
    pub fn agent_verdicts(&self) -> impl Iterator<Item = &AgentVerdict> {
        self.agents.values().map(|e| &e.published)
    }

    /// Notes an agent's round; returns whether the agent was under a
    /// notice (lost or stopped) before it.
    fn note_agent(&mut self, o: &Observation, interval_ms: i64) -> bool {
        if let Some(a) = self.agents.get_mut(o.agent) {
            let under_notice = a.notice.is_some();
            a.last_ms = a.last_ms.max(o.at_ms);
            a.interval_ms = interval_ms;
            if a.notice.is_some_and(|(_, at)| o.at_ms > at) {
                a.notice = None;
                self.noticed = self.noticed.saturating_sub(1);
            }
            return under_notice;
        }
        if self.agents.len() >= self.settings.max_agents {
            self.evict_one();
        }
        // A new agent is announced at once, as ok.
        let verdict = AgentVerdict {
            agent: o.agent.to_owned(),
            state: AgentState::Ok,
            since: rfc3339_ms(o.at_ms),
            reason: OK_REASON.to_owned(),
        };
        self.changes.push(Change::Agent {
            verdict: verdict.clone(),
            transition: false,
        });
        self.agents.insert(
            o.agent.to_owned(),
            AgentEntry {
                last_ms: o.at_ms,
                interval_ms,
                notice: None,
                published: verdict,
            },
        );
        false
    }

    /// Forgets the agent silent the longest, and its views.
    fn evict_one(&mut self) {
        let Some(victim) = self
            .agents
            .iter()
            .min_by_key(|(_, a)| a.last_ms)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        if self
            .agents
            .remove(&victim)
            .is_some_and(|a| a.notice.is_some())
        {
            self.noticed = self.noticed.saturating_sub(1);
        }
        for e in self.targets.values_mut() {
            e.pairs.remove(&victim);
        }
    }

    fn silent(&self, agent: &str, at_ms: i64) -> bool {
        match self.agents.get(agent) {
            Some(a) => {
                a.notice.is_some()
                    || a.last_ms.saturating_add(
                        SILENT_INTERVALS
                            .saturating_mul(a.interval_ms)
                            .max(SILENT_MIN_MS),
                    ) < at_ms
            }
            None => true,
        }
    }

    /// The agents reporting on a target at `at_ms`, with their views.
    fn reporting<'a>(&'a self, e: &'a TargetEntry, at_ms: i64) -> Vec<(&'a str, &'a Pair)> {
        reporting_in(&e.pairs, &self.agents, self.noticed, at_ms).collect()
    }

    fn judge_target(&mut self, target: &str, reporter: Option<&str>) {
        self.judge_target_at(target, reporter, self.newest_ms);
    }

    fn judge_target_at(&mut self, target: &str, reporter: Option<&str>, at_ms: i64) {
        let Some(e) = self.targets.get(target) else {
            return;
        };
        let (agents, noticed) = (&self.agents, self.noticed);
        let reporting = self.reporting(e, at_ms);
        let total = reporting.len();
        let bad: Vec<(&str, &Pair)> = reporting
            .iter()
            .filter(|(_, p)| p.state.is_bad())
            .copied()
            .collect();
        // Providers of the reporting agents, and of those seeing it bad:
        // only needed when someone sees it bad.
        let mut all_providers: BTreeSet<ProviderKey<'_>> = BTreeSet::new();
        let mut bad_providers: BTreeSet<ProviderKey<'_>> = BTreeSet::new();
        if !bad.is_empty() {
            for (a, p) in &reporting {
                let k = ProviderKey::of(a, p.provider.as_deref());
                if p.state.is_bad() {
                    bad_providers.insert(k);
                }
                all_providers.insert(k);
            }
        }
        let (key, since_ms): (TargetKey, i64) = if total == 0 {
            ((TargetState::Unknown, Cause::None, None), at_ms)
        } else if bad.is_empty() {
            let since = reporting
                .iter()
                .map(|(_, p)| p.streak_since_ms)
                .max()
                .unwrap_or(at_ms);
            ((TargetState::Up, Cause::None, None), since)
        } else {
            let mut counts: BTreeMap<RoundState, usize> = BTreeMap::new();
            for (_, p) in &bad {
                *counts.entry(p.state).or_default() += 1;
            }
            let state = counts
                .iter()
                .max_by_key(|(s, n)| (**n, severity(**s)))
                .map(|(s, _)| *s)
                .unwrap_or(RoundState::Down);
            let majority = bad.len() * 2 > total;
            let since = bad
                .iter()
                .map(|(_, p)| p.streak_since_ms)
                .min()
                .unwrap_or(at_ms);
            let single_bad_provider = bad_providers.len() == 1
                && bad.len() >= 2
                && bad_providers
                    .iter()
                    .all(|k| matches!(k, ProviderKey::Label(_)));
            let cause = if majority && (all_providers.len() <= 1 || bad_providers.len() > 1) {
                (Cause::Target, None)
            } else if single_bad_provider {
                let p = bad_providers.iter().next().and_then(|k| match k {
                    ProviderKey::Label(p) => Some((*p).to_owned()),
                    ProviderKey::Agent(_) => None,
                });
                (Cause::Provider, p)
            } else {
                (Cause::Agent, None)
            };
            ((state.into(), cause.0, cause.1), since)
        };
        let counts = (
            u32::try_from(bad.len()).unwrap_or(u32::MAX),
            u32::try_from(total).unwrap_or(u32::MAX),
            u32::try_from(bad_providers.len()).unwrap_or(u32::MAX),
        );
        drop((all_providers, bad_providers, bad, reporting));
        let confirm = self.settings.confirm_rounds;

        let Correlator {
            targets, changes, ..
        } = self;
        let Some(e) = targets.get_mut(target) else {
            return;
        };
        let current: TargetKey = (
            e.published.state,
            e.published.cause,
            e.published.provider.clone(),
        );
        let adopt = if key == current {
            e.pending = None;
            false
        } else if key.0 == TargetState::Unknown {
            // Silence for three intervals is its own confirmation.
            true
        } else {
            let TargetEntry { pairs, pending, .. } = e;
            match pending {
                Some(p) if p.key == key => match reporter {
                    Some(r) => p.report(
                        r,
                        |a| {
                            pairs
                                .get(a)
                                .is_some_and(|pair| reports(agents, noticed, a, pair, at_ms))
                        },
                        confirm,
                    ),
                    None => false,
                },
                _ => {
                    // Who reports now (names, owned): only for a new candidate.
                    let now: BTreeSet<String> = reporting_in(pairs, agents, noticed, at_ms)
                        .map(|(a, _)| a.to_owned())
                        .collect();
                    *pending = Some(Pending::new(key.clone(), now));
                    confirm == 0
                }
            }
        };
        let mut v = e.published.clone();
        if adopt {
            // `since` from the data as it stands now, not from when the
            // candidate first appeared: that moment depends on arrival order.
            e.pending = None;
            let since = since_ms;
            v.state = key.0;
            v.cause = key.1;
            v.provider = key.2;
            v.since = rfc3339_ms(since);
        }
        if adopt || v.state == key.0 {
            (v.agents_bad, v.agents_total, v.providers_bad) = counts;
        }
        if v != e.published {
            e.published = v.clone();
            changes.push(Change::Target {
                verdict: v,
                transition: adopt,
            });
        }
    }

    /// Re-judges an agent, given how its view compares with its peers'.
    fn judge_agent_at(&mut self, agent: &str, at_ms: i64, view: AgentView) {
        let Some(a) = self.agents.get(agent) else {
            return;
        };
        let (key, since_ms, reason) = if let Some((n, at)) = a.notice {
            match n {
                Notice::Lost => (AgentState::Lost, at, "last will".to_owned()),
                Notice::Stopped => (AgentState::Stopped, at, "stopped cleanly".to_owned()),
            }
        } else if self.silent(agent, at_ms) {
            let since = a.last_ms.saturating_add(a.interval_ms);
            (
                AgentState::Lost,
                since,
                format!("no result for {SILENT_INTERVALS} intervals (and at least 30 s)"),
            )
        } else {
            let AgentView {
                alone,
                shared,
                mut alone_since,
                good_since,
                ..
            } = view;
            if shared > 0 && alone * 2 > shared {
                // Trouble began with the round that tipped the balance.
                alone_since.sort_unstable();
                let tipping = alone_since.get(shared / 2).copied().unwrap_or(a.last_ms);
                (
                    AgentState::Trouble,
                    tipping,
                    format!("{alone} of {shared} targets look bad to it but fine to its peers"),
                )
            } else {
                (
                    AgentState::Ok,
                    good_since.unwrap_or(a.last_ms),
                    OK_REASON.to_owned(),
                )
            }
        };
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        // Views are built from settled streaks (already confirmed by the
        // agent's own rounds), and notices and silence are facts: a change
        // is adopted at once, the same on every indexer.
        let adopt = key != a.published.state;
        if adopt {
            let since = since_ms;
            a.published = AgentVerdict {
                agent: agent.to_owned(),
                state: key,
                since: rfc3339_ms(since),
                reason,
            };
            self.changes.push(Change::Agent {
                verdict: a.published.clone(),
                transition: true,
            });
        }
    }

    /// How each of `agents` views its targets against its peers (in the
    /// same order), in one pass over every (agent, target) pair.
    fn agent_views(&self, agents: &[String], at_ms: i64) -> Vec<AgentView> {
        // Why by index: this visits every (agent, target) pair once a
        // second, and a hash lookup per pair is a fraction of a tree's.
        let index: HashMap<&str, usize> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.as_str(), i))
            .collect();
        let mut views = vec![AgentView::default(); agents.len()];
        for e in self.targets.values() {
            let reporting = self.reporting(e, at_ms);
            let total = reporting.len();
            let up = reporting.iter().filter(|(_, p)| !p.settled_bad).count();
            for (agent, mine) in &reporting {
                let Some(v) = index.get(agent).and_then(|&i| views.get_mut(i)) else {
                    continue;
                };
                v.round += 1;
                let peers = total - 1;
                if peers == 0 {
                    continue;
                }
                v.shared += 1;
                let peers_up = up - usize::from(!mine.settled_bad);
                if mine.settled_bad && peers_up * 2 > peers {
                    v.alone += 1;
                    v.alone_since.push(mine.settled_since_ms);
                } else if !mine.settled_bad {
                    v.good_since = v.good_since.max(Some(mine.settled_since_ms));
                }
            }
        }
        views
    }
}

/// One agent's view against its peers' (settled streaks only).
#[derive(Debug, Clone, Default)]
struct AgentView {
    /// Targets that look bad to it while most of its peers see them up.
    alone: usize,
    /// When each of those went bad for it.
    alone_since: Vec<i64>,
    /// When the latest of its good views became good.
    good_since: Option<i64>,
    /// Targets it shares with reporting peers.
    shared: usize,
    /// Targets it reports on (one result each make a round).
    round: usize,
}

/// Milliseconds since the epoch (0 before it, or past what i64 holds).
pub fn system_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}
