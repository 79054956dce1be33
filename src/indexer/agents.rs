//! What the indexer knows of each agent, in bounded memory.
//!
//! Names come from the network (any publisher may claim one), so the map
//! holds at most [`MAX_AGENTS`] entries; when a new name arrives at the
//! bound, the agent heard from least recently is forgotten and counted.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::config::Broker;
use crate::protocol::{Rip, RipReason};

/// Agents remembered at most.
pub const MAX_AGENTS: usize = 10_000;

/// What the indexer knows of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSeen {
    pub last_result: Option<SystemTime>,
    /// Seconds between the agent's rounds (from its last result).
    pub interval: f64,
    pub last_rip: Option<(RipReason, SystemTime)>,
    /// The newest connection of the agent known from its notices.
    pub session: Option<Session>,
    /// The broker its latest result came through.
    pub result_broker: Option<Broker>,
}

/// One connection of an agent, from its notices (contract v2).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// When it started, ms since the epoch.
    pub since_ms: i64,
    pub instance: Option<String>,
    /// The latest notice of this connection.
    pub reason: RipReason,
    pub broker: Option<String>,
    /// The `watch` version the agent acknowledged.
    pub watch_version: Option<String>,
}

/// What a notice is, judged against what is known of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// News: record it.
    Current,
    /// The same connection and reason again (a retained copy delivered on
    /// resubscribing, or a presence update): nothing new to record.
    Repeat,
    /// Of a connection older than one already known, or a will of a
    /// broker the agent has left while its results come through another:
    /// recorded as stale, never as the agent's loss.
    Stale,
}

impl AgentSeen {
    /// An agent known by name only; `interval` is set by its first result.
    fn unseen() -> Self {
        AgentSeen {
            last_result: None,
            interval: 60.0,
            last_rip: None,
            session: None,
            result_broker: None,
        }
    }

    /// Judges a notice of this agent from `broker` whose connection started
    /// at `since_ms` (None for v1 agents).
    fn judge(
        &self,
        rip: &Rip,
        since_ms: Option<i64>,
        broker: &Broker,
        now: SystemTime,
    ) -> NoticeKind {
        if let (Some(s), Some(cur)) = (since_ms, &self.session) {
            if s < cur.since_ms {
                return NoticeKind::Stale;
            }
            if s == cur.since_ms && rip.instance == cur.instance && rip.reason == cur.reason {
                return NoticeKind::Repeat;
            }
            if s > cur.since_ms || rip.reason != RipReason::Lost {
                return NoticeKind::Current;
            }
        }
        // A will from a broker the agent has left: its results come through
        // another broker now.
        let moved_on = self.result_broker.as_ref().is_some_and(|b| b != broker);
        if rip.reason == RipReason::Lost && moved_on && self.alive(now) {
            return NoticeKind::Stale;
        }
        NoticeKind::Current
    }

    /// Alive: a result within three intervals, and no notice since.
    pub fn alive(&self, now: SystemTime) -> bool {
        let Some(last) = self.last_result else {
            return false;
        };
        if let Some((_, rip)) = self.last_rip {
            if rip >= last {
                return false;
            }
        }
        now.duration_since(last)
            .map(|d| d.as_secs_f64() <= 3.0 * self.interval.max(1.0))
            .unwrap_or(true)
    }

    /// No result yet, or none since the last notice.
    fn resuming(&self) -> bool {
        self.last_result.is_none()
            || self
                .last_rip
                .is_some_and(|(_, at)| Some(at) >= self.last_result)
    }
}

/// The bounded map of agents, least recently heard from evicted first.
pub struct Agents {
    bound: usize,
    /// Name -> (recency stamp, state).
    map: HashMap<String, (u64, AgentSeen)>,
    /// Recency stamp -> name, oldest first.
    order: BTreeMap<u64, String>,
    stamp: u64,
}

/// What a result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Touched {
    /// First result of this agent, or first since a notice.
    pub resumed: bool,
    /// Another agent was forgotten to make room.
    pub evicted: bool,
}

impl Agents {
    pub fn new(bound: usize) -> Self {
        Agents {
            bound: bound.max(1),
            map: HashMap::new(),
            order: BTreeMap::new(),
            stamp: 0,
        }
    }

    fn touch(&mut self, name: &str, f: impl FnOnce(&mut AgentSeen) -> bool) -> Touched {
        self.stamp = self.stamp.wrapping_add(1);
        let stamp = self.stamp;
        let mut t = Touched::default();
        if let Some((old, seen)) = self.map.get_mut(name) {
            self.order.remove(old);
            *old = stamp;
            t.resumed = f(seen);
            self.order.insert(stamp, name.to_owned());
            return t;
        }
        if self.map.len() >= self.bound {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.map.remove(&oldest);
                t.evicted = true;
            }
        }
        let mut seen = AgentSeen::unseen();
        t.resumed = f(&mut seen);
        self.map.insert(name.to_owned(), (stamp, seen));
        self.order.insert(stamp, name.to_owned());
        t
    }

    /// Records a result of `name` received through `broker` at `now`.
    pub fn result(
        &mut self,
        name: &str,
        interval: f64,
        broker: &Broker,
        now: SystemTime,
    ) -> Touched {
        self.touch(name, |seen| {
            let resumed = seen.resuming();
            seen.last_result = Some(now);
            seen.interval = interval;
            if seen.result_broker.as_ref() != Some(broker) {
                seen.result_broker = Some(broker.clone());
            }
            resumed
        })
    }

    /// Judges a notice as [`Agents::notice`] would, recording nothing.
    pub fn judge_notice(
        &self,
        rip: &Rip,
        since_ms: Option<i64>,
        broker: &Broker,
        now: SystemTime,
    ) -> NoticeKind {
        match self.map.get(&rip.agent) {
            Some((_, seen)) => seen.judge(rip, since_ms, broker, now),
            None => NoticeKind::Current,
        }
    }

    /// Judges and records a lifecycle notice received through `broker` at
    /// `now`; `since_ms` is the notice's connection start.
    pub fn notice(
        &mut self,
        rip: &Rip,
        since_ms: Option<i64>,
        broker: &Broker,
        now: SystemTime,
    ) -> (Touched, NoticeKind) {
        let mut kind = NoticeKind::Current;
        let touched = self.touch(&rip.agent, |seen| {
            kind = seen.judge(rip, since_ms, broker, now);
            match kind {
                NoticeKind::Stale => {}
                NoticeKind::Repeat => {
                    if let Some(s) = &mut seen.session {
                        s.watch_version.clone_from(&rip.watch_version);
                    }
                }
                NoticeKind::Current => {
                    if let Some(since_ms) = since_ms {
                        seen.session = Some(Session {
                            since_ms,
                            instance: rip.instance.clone(),
                            reason: rip.reason,
                            broker: rip.broker.clone(),
                            watch_version: rip.watch_version.clone(),
                        });
                    }
                    // A connection announced is no notice of an end.
                    seen.last_rip = match rip.reason {
                        RipReason::Online => None,
                        r => Some((r, now)),
                    };
                }
            }
            false
        });
        (touched, kind)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A copy, by name.
    pub fn snapshot(&self) -> BTreeMap<String, AgentSeen> {
        self.map
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    /// Agents alive at `now`.
    pub fn alive(&self, now: SystemTime) -> usize {
        self.map.values().filter(|(_, a)| a.alive(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn b(name: &str) -> Broker {
        name.parse().unwrap()
    }

    #[test]
    fn alive_means_a_recent_result_and_no_notice_since() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut a = AgentSeen {
            last_result: Some(t0),
            ..AgentSeen::unseen()
        };
        assert!(a.alive(t0 + Duration::from_secs(170)));
        assert!(
            !a.alive(t0 + Duration::from_secs(190)),
            "silent for three intervals"
        );
        a.last_rip = Some((RipReason::Shutdown, t0 + Duration::from_secs(1)));
        assert!(!a.alive(t0 + Duration::from_secs(2)), "stopped");
        a.last_result = Some(t0 + Duration::from_secs(5));
        assert!(
            a.alive(t0 + Duration::from_secs(6)),
            "back after the notice"
        );
        let never = AgentSeen::unseen();
        assert!(!never.alive(t0));
    }

    #[test]
    fn the_map_is_bounded_and_forgets_the_least_recently_heard() {
        let now = SystemTime::now();
        let mut agents = Agents::new(3);
        for name in ["a", "b", "c"] {
            let t = agents.result(name, 60.0, &b("b"), now);
            assert!(t.resumed && !t.evicted);
        }
        // `a` speaks again, so `b` is now the least recent.
        assert!(!agents.result("a", 60.0, &b("b"), now).resumed);
        let t = agents.result("d", 60.0, &b("b"), now);
        assert!(t.evicted);
        assert_eq!(agents.len(), 3);
        let names: Vec<String> = agents.snapshot().into_keys().collect();
        assert_eq!(names, ["a", "c", "d"]);
        // 50,000 spoofed names cost no more than the bound.
        for i in 0..50_000 {
            agents.result(&format!("spoof{i}"), 60.0, &b("b"), now);
        }
        assert_eq!(agents.len(), 3);
    }

    #[test]
    fn a_notice_then_a_result_is_a_resumption() {
        let now = SystemTime::now();
        let mut agents = Agents::new(10);
        agents.result("a", 60.0, &b("b"), now);
        let shut = Rip {
            agent: "a".into(),
            reason: RipReason::Shutdown,
            ..Rip::default()
        };
        agents.notice(&shut, None, &b("b"), now + Duration::from_secs(1));
        assert!(
            agents
                .result("a", 60.0, &b("b"), now + Duration::from_secs(2))
                .resumed
        );
    }

    fn rip(reason: RipReason, instance: &str, since_ms: i64) -> (Rip, Option<i64>) {
        let r = Rip {
            agent: "a".into(),
            reason,
            instance: Some(instance.into()),
            since: Some(format!("{since_ms}")),
            ..Rip::default()
        };
        (r, Some(since_ms))
    }

    #[test]
    fn wills_of_older_connections_are_stale_and_repeats_are_not_news() {
        let now = SystemTime::now();
        let mut agents = Agents::new(10);
        let kind = |agents: &mut Agents, (r, s): (Rip, Option<i64>), broker: &str| {
            agents.notice(&r, s, &b(broker), now).1
        };
        // Connected to A at 1000, then to B at 2000 (A froze).
        assert_eq!(
            kind(&mut agents, rip(RipReason::Online, "i1", 1000), "A"),
            NoticeKind::Current
        );
        assert_eq!(
            kind(&mut agents, rip(RipReason::Online, "i1", 2000), "B"),
            NoticeKind::Current
        );
        // A comes back and publishes the will of the first connection.
        assert_eq!(
            kind(&mut agents, rip(RipReason::Lost, "i1", 1000), "A"),
            NoticeKind::Stale
        );
        assert!(
            agents.snapshot()["a"].last_rip.is_none(),
            "not recorded as lost"
        );
        // The retained presence again on resubscribing: nothing new.
        assert_eq!(
            kind(&mut agents, rip(RipReason::Online, "i1", 2000), "B"),
            NoticeKind::Repeat
        );
        // The current connection's own will is news.
        assert_eq!(
            kind(&mut agents, rip(RipReason::Lost, "i1", 2000), "B"),
            NoticeKind::Current
        );
        assert_eq!(
            agents.snapshot()["a"].last_rip.map(|r| r.0),
            Some(RipReason::Lost)
        );
    }

    #[test]
    fn a_v1_will_from_a_broker_the_agent_left_is_stale() {
        let now = SystemTime::now();
        let mut agents = Agents::new(10);
        agents.result("a", 60.0, &b("B"), now);
        let will = Rip {
            agent: "a".into(),
            reason: RipReason::Lost,
            ..Rip::default()
        };
        assert_eq!(
            agents.notice(&will, None, &b("A"), now).1,
            NoticeKind::Stale
        );
        assert_eq!(
            agents.notice(&will, None, &b("B"), now).1,
            NoticeKind::Current
        );
    }
}
