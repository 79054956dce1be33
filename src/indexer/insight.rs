//! The indexer's side of insight: every accepted result is judged
//! (`up`/`slow`/`lossy`/`down`) as it is taken in, the correlator's
//! verdicts are collected once a second into the book of retained
//! `verdict/...` messages that every broker session publishes, and each
//! transition becomes a state-change document.
//!
//! The correlator is behind one mutex, held for one result at a time (its
//! cost is one pass over that target's agents) and for the once-a-second
//! tick; nothing awaits while holding it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::IndexerSettings;
use crate::document;
use crate::elasticsearch::BulkDoc;
use crate::insight::verdict::{
    system_ms, Change, Classified, Correlator, Notice, Observation, Settings,
};
use crate::protocol::{self, AgentState, PingResult, TargetState};

/// Retained verdict payloads by topic: what every broker should hold.
pub type VerdictBook = BTreeMap<String, Arc<Vec<u8>>>;

/// The correlator and the book it feeds.
pub struct Insight {
    correlator: Mutex<Correlator>,
    book: watch::Sender<Arc<VerdictBook>>,
    /// For status lines: targets not `up` (and not `unknown`), agents in
    /// `trouble`, agents `lost`.
    counts: Mutex<(usize, usize, usize)>,
}

/// The target list with each target's levels, as the correlator takes it.
fn target_list(s: &IndexerSettings) -> Vec<(String, Option<crate::insight::Levels>)> {
    s.targets
        .iter()
        .map(|t| {
            let own = s.target_levels.get(t).map(|l| l.over(&s.levels));
            (t.as_str().to_owned(), own)
        })
        .collect()
}

/// `verdict/target/{target}`.
pub fn target_topic(target: &str) -> String {
    format!("{}{target}", protocol::VERDICT_TARGET_PREFIX)
}

/// `verdict/agent/{agent}`.
pub fn agent_topic(agent: &str) -> String {
    format!("{}{agent}", protocol::VERDICT_AGENT_PREFIX)
}

impl Insight {
    /// For these settings' levels and target list.
    pub fn for_settings(settings: &IndexerSettings) -> Self {
        Self::new(settings.levels, &target_list(settings))
    }

    /// With default `levels` and this target list (each target with its
    /// own levels, or None).
    pub fn new(
        levels: crate::insight::Levels,
        targets: &[(String, Option<crate::insight::Levels>)],
    ) -> Self {
        let mut c = Correlator::new(Settings {
            levels,
            ..Settings::default()
        });
        c.set_targets(targets);
        let insight = Insight {
            correlator: Mutex::new(c),
            book: watch::channel(Arc::new(VerdictBook::new())).0,
            counts: Mutex::new((0, 0, 0)),
        };
        // The `unknown` verdicts of the list, at once.
        insight.tick(SystemTime::now());
        insight
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.correlator.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The book, for the broker sessions to follow.
    pub fn book(&self) -> watch::Receiver<Arc<VerdictBook>> {
        self.book.subscribe()
    }

    /// `verdicts: 2 targets bad, 1 agent in trouble, 0 lost`, for STATUS=.
    pub fn summary(&self) -> String {
        let (bad, trouble, lost) = *self.counts.lock().unwrap_or_else(|p| p.into_inner());
        format!("verdicts: {bad} targets bad, {trouble} agents in trouble, {lost} lost")
    }

    /// A new target list or new levels (on reload).
    pub fn set_targets(&self, settings: &IndexerSettings) {
        let mut c = self.lock();
        c.set_levels(settings.levels);
        c.set_targets(&target_list(settings));
    }

    /// Judges one accepted result (its timestamp already checked); `None`
    /// when the target is not in the list.
    pub fn observe(&self, r: &PingResult, at: SystemTime) -> Option<Classified> {
        let at_ms = system_ms(at);
        // Intervals are validated upstream as positive and finite; clamp
        // anyway (a day at most) so no product can overflow.
        let interval_ms = (r.interval.clamp(0.001, 86_400.0) * 1000.0) as i64;
        self.lock().observe(&Observation {
            agent: &r.agent,
            provider: r.labels.get("provider").map(String::as_str),
            target: &r.target,
            at_ms,
            interval_ms,
            sent: r.sent,
            received: r.received,
            rtt_avg_ms: r.rtt.map(|s| s.avg),
        })
    }

    /// An agent's `lost` (a will that is not stale) or `shutdown` notice.
    pub fn notice(&self, agent: &str, notice: Notice, at: SystemTime) {
        self.lock().notice(agent, notice, system_ms(at));
    }

    /// Expires silent agents, updates the book, and returns a state-change
    /// document per transition (to store like any other document).
    pub fn tick(&self, now: SystemTime) -> Vec<BulkDoc> {
        let changes = {
            let mut c = self.lock();
            c.tick(now);
            let changes = c.take_changes();
            if !changes.is_empty() {
                let bad = c
                    .target_verdicts()
                    .filter(|v| !matches!(v.state, TargetState::Up | TargetState::Unknown))
                    .count();
                let agent = |s: AgentState| c.agent_verdicts().filter(|v| v.state == s).count();
                let counts = (bad, agent(AgentState::Trouble), agent(AgentState::Lost));
                *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = counts;
            }
            changes
        };
        if changes.is_empty() {
            return Vec::new();
        }
        let mut docs = Vec::new();
        self.book.send_modify(|book| {
            let book = Arc::make_mut(book);
            for change in changes {
                match change {
                    Change::Target {
                        verdict,
                        transition,
                    } => {
                        let topic = target_topic(&verdict.target);
                        let previous = previous_of(book.get(&topic));
                        // A first good view is no incident's end.
                        let first_up = verdict.state == TargetState::Up
                            && previous.as_ref().is_none_or(|p| p.state == "unknown");
                        if transition && !first_up {
                            docs.push(document::verdict_doc(
                                &document::VerdictChange::Target(&verdict),
                                previous,
                            ));
                        }
                        book.insert(topic, Arc::new(payload(&verdict)));
                    }
                    Change::Agent {
                        verdict,
                        transition,
                    } => {
                        let topic = agent_topic(&verdict.agent);
                        if transition {
                            docs.push(document::verdict_doc(
                                &document::VerdictChange::Agent(&verdict),
                                previous_of(book.get(&topic)),
                            ));
                        }
                        book.insert(topic, Arc::new(payload(&verdict)));
                    }
                    Change::TargetRemoved(t) => {
                        book.remove(&target_topic(&t));
                    }
                }
            }
        });
        docs.into_iter()
            .map(|(id, source)| BulkDoc::new(id, &source))
            .collect()
    }
}

fn payload<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The (state, cause, since) of the verdict a transition ends, from its
/// published payload.
fn previous_of(published: Option<&Arc<Vec<u8>>>) -> Option<document::Previous> {
    let v: serde_json::Value = serde_json::from_slice(published?).ok()?;
    Some(document::Previous {
        state: v.get("state")?.as_str()?.to_owned(),
        cause: v.get("cause").and_then(|c| c.as_str()).map(str::to_owned),
        since: v.get("since")?.as_str()?.to_owned(),
    })
}
