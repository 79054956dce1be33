//! What the indexer knows of each agent, in bounded memory.
//!
//! Names come from the network (any publisher may claim one), so the map
//! holds at most [`MAX_AGENTS`] entries; when a new name arrives at the
//! bound, the agent heard from least recently is forgotten and counted.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::protocol::RipReason;

/// Agents remembered at most.
pub const MAX_AGENTS: usize = 10_000;

/// What the indexer knows of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSeen {
    pub last_result: Option<SystemTime>,
    /// Seconds between the agent's rounds (from its last result).
    pub interval: f64,
    pub last_rip: Option<(RipReason, SystemTime)>,
}

impl AgentSeen {
    /// An agent known by name only; `interval` is set by its first result.
    fn unseen() -> Self {
        AgentSeen {
            last_result: None,
            interval: 60.0,
            last_rip: None,
        }
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

    /// Records a result of `name` received at `now`.
    pub fn result(&mut self, name: &str, interval: f64, now: SystemTime) -> Touched {
        self.touch(name, |seen| {
            let resumed = seen.resuming();
            seen.last_result = Some(now);
            seen.interval = interval;
            resumed
        })
    }

    /// Records a lifecycle notice of `name` received at `now`.
    pub fn notice(&mut self, name: &str, reason: RipReason, now: SystemTime) -> Touched {
        self.touch(name, |seen| {
            seen.last_rip = Some((reason, now));
            false
        })
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

    #[test]
    fn alive_means_a_recent_result_and_no_notice_since() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut a = AgentSeen {
            last_result: Some(t0),
            interval: 60.0,
            last_rip: None,
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
            let t = agents.result(name, 60.0, now);
            assert!(t.resumed && !t.evicted);
        }
        // `a` speaks again, so `b` is now the least recent.
        assert!(!agents.result("a", 60.0, now).resumed);
        let t = agents.result("d", 60.0, now);
        assert!(t.evicted);
        assert_eq!(agents.len(), 3);
        let names: Vec<String> = agents.snapshot().into_keys().collect();
        assert_eq!(names, ["a", "c", "d"]);
        // 50,000 spoofed names cost no more than the bound.
        for i in 0..50_000 {
            agents.result(&format!("spoof{i}"), 60.0, now);
        }
        assert_eq!(agents.len(), 3);
    }

    #[test]
    fn a_notice_then_a_result_is_a_resumption() {
        let now = SystemTime::now();
        let mut agents = Agents::new(10);
        agents.result("a", 60.0, now);
        agents.notice("a", RipReason::Shutdown, now + Duration::from_secs(1));
        assert!(
            agents
                .result("a", 60.0, now + Duration::from_secs(2))
                .resumed
        );
    }
}
