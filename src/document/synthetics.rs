//! The Kibana app check documents are shaped for, and the per-pair
//! streaks the Synthetics app's `state.*` needs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::check::{self, is_up, SyntheticsPart};
use super::{hash_id, with_canonical_timestamp, DocumentError, MAX_TRACKED_STATES};
use crate::insight::verdict::Classified;
use crate::protocol::PingResult;

/// Which Kibana app the check documents are shaped for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Heartbeat's shape, for the Uptime app (`heartbeat-*` data streams).
    #[default]
    Uptime,
    /// Heartbeat's shape plus the fields the Synthetics app queries, for a
    /// `synthetics-icmp-<namespace>` data stream.
    Synthetics {
        /// `data_stream.namespace` (the last part of the data stream name).
        namespace: String,
        /// `meta.space_id`: the Kibana space whose Synthetics app shows the
        /// checks.
        space_id: String,
    },
}

/// Current up/down streak of one (agent, target) pair: Synthetics'
/// `state.*` ("down for 12 min").
#[derive(Debug, Clone)]
struct Streak {
    /// Start of the round that began the streak.
    started_at: SystemTime,
    /// Start of the newest round seen.
    last: SystemTime,
    up: bool,
    checks: u64,
}

/// Streaks per (agent, target), as seen by this indexer since it started.
#[derive(Debug, Default)]
struct Streaks {
    by_pair: HashMap<(String, String), Streak>,
}

impl Streaks {
    /// The `state` object after a round that started at `start`; `None`
    /// for a round not newer than the last one seen (a copy from another
    /// broker, or a late arrival: its state is not known), or when the
    /// table is full.
    fn observe(
        &mut self,
        agent: &str,
        target: &str,
        start: SystemTime,
        up: bool,
    ) -> Option<StreakState> {
        let key = (agent.to_owned(), target.to_owned());
        let full = self.by_pair.len() >= MAX_TRACKED_STATES;
        let streak = match self.by_pair.get_mut(&key) {
            Some(s) if start <= s.last => return None,
            Some(s) if s.up == up => {
                s.last = start;
                s.checks = s.checks.saturating_add(1);
                s.clone()
            }
            Some(s) => {
                *s = Streak {
                    started_at: start,
                    last: start,
                    up,
                    checks: 1,
                };
                s.clone()
            }
            None if full => return None,
            None => {
                let s = Streak {
                    started_at: start,
                    last: start,
                    up,
                    checks: 1,
                };
                self.by_pair.insert(key, s.clone());
                s
            }
        };
        let started = humantime::format_rfc3339_millis(streak.started_at).to_string();
        let duration_ms = start
            .duration_since(streak.started_at)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (ups, downs) = if up {
            (streak.checks, 0)
        } else {
            (0, streak.checks)
        };
        Some(StreakState {
            id: format!("{}-{}", &hash_id(&[agent, target])[..16], started),
            started_at: started,
            duration_ms,
            status: if up { "up" } else { "down" },
            checks: streak.checks,
            up: ups,
            down: downs,
        })
    }
}

/// Synthetics' `state` object of a check document: the pair's current
/// streak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreakState {
    /// The streak's id: the pair's hash and the streak's start.
    pub id: String,
    /// Start of the round that began the streak.
    pub started_at: String,
    /// From the streak's start to this round's start, ms.
    pub duration_ms: u64,
    pub status: &'static str,
    /// Rounds in the streak, this one included.
    pub checks: u64,
    pub up: u64,
    pub down: u64,
}

/// Builds check documents of one [`Flavor`]. The Synthetics flavour keeps
/// each (agent, target) pair's current streak for `state.*`; share one
/// shaper (behind an `Arc`) between all intake paths.
#[derive(Debug, Default)]
pub struct CheckShaper {
    flavor: Flavor,
    streaks: Mutex<Streaks>,
}

impl CheckShaper {
    pub fn new(flavor: Flavor) -> CheckShaper {
        CheckShaper {
            flavor,
            streaks: Mutex::new(Streaks::default()),
        }
    }

    pub fn flavor(&self) -> &Flavor {
        &self.flavor
    }

    /// Appends the check document of `r` in this shaper's flavour to
    /// `out` (compact JSON, one line): `r.timestamp` is the canonical text
    /// of `start` (see [`canonical_timestamp`](super::canonical_timestamp)), `id` the document's id
    /// (see [`result_id`](super::result_id)), `judged` how the round was
    /// judged (`ping.state`, `ping.levels`).
    pub fn write(
        &self,
        r: &PingResult,
        start: SystemTime,
        id: &str,
        judged: Option<&Classified>,
        out: &mut Vec<u8>,
    ) -> Result<(), DocumentError> {
        let synthetics = match &self.flavor {
            Flavor::Uptime => None,
            Flavor::Synthetics {
                namespace,
                space_id,
            } => Some(SyntheticsPart {
                namespace,
                space_id,
                state: self
                    .streaks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .observe(&r.agent, &r.target, start, is_up(r)),
            }),
        };
        check::write(out, r, start, id, synthetics, judged)
    }

    /// The check document of one result in this shaper's flavour, as a
    /// JSON value (for tests and tools).
    pub fn document(&self, r: &PingResult) -> Result<Value, DocumentError> {
        let (start, r) = with_canonical_timestamp(r)?;
        let id = super::result_id(&r.agent, &r.target, &r.timestamp);
        let mut out = Vec::new();
        self.write(&r, start, id.as_str(), None, &mut out)?;
        serde_json::from_slice(&out).map_err(|e| DocumentError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::result_document;
    use super::*;
    use std::time::Duration;

    fn sample() -> PingResult {
        super::super::sample()
    }

    fn at(r: &mut PingResult, minute: u32) {
        r.timestamp = format!("2026-11-25T12:{minute:02}:00.000Z");
    }

    #[test]
    fn uptime_shaper_writes_the_plain_document() {
        let s = CheckShaper::new(Flavor::Uptime);
        let d = s.document(&sample()).unwrap();
        assert_eq!(d, result_document(&sample()).unwrap());
        assert!(d.get("state").is_none() && d.get("meta").is_none());
    }

    #[test]
    fn synthetics_shaper_adds_final_attempt_space_and_streaks() {
        let s = CheckShaper::new(Flavor::Synthetics {
            namespace: "swarming".into(),
            space_id: "default".into(),
        });
        let mut r = sample();
        at(&mut r, 0);
        let d = s.document(&r).unwrap();
        assert_eq!(d["summary"]["final_attempt"], true);
        assert_eq!(d["summary"]["status"], "up");
        assert_eq!(d["summary"]["up"], 1);
        assert_eq!(d["summary"]["retry_group"], d["monitor"]["check_group"]);
        assert_eq!(d["meta"]["space_id"], "default");
        assert_eq!(d["data_stream"]["namespace"], "swarming");
        assert_eq!(d["state"]["status"], "up");
        assert_eq!(d["state"]["checks"], 1);
        // Two down rounds: a new streak that started at the first of them.
        r.received = 0;
        at(&mut r, 1);
        let d1 = s.document(&r).unwrap();
        at(&mut r, 13);
        let d2 = s.document(&r).unwrap();
        assert_eq!(d2["summary"]["final_attempt"], true);
        assert_eq!(d2["summary"]["status"], "down");
        assert_eq!(d2["state"]["status"], "down");
        assert_eq!(d2["state"]["started_at"], "2026-11-25T12:01:00.000Z");
        assert_eq!(d2["state"]["duration_ms"], 12 * 60 * 1000);
        assert_eq!(d2["state"]["checks"], 2);
        assert_eq!(d2["state"]["down"], 2);
        assert_eq!(d1["state"]["id"], d2["state"]["id"]);
        assert_ne!(d["state"]["id"], d2["state"]["id"]);
        // A copy from another broker or a late round: no state, no change.
        let again = s.document(&r).unwrap();
        assert!(again.get("state").is_none());
        at(&mut r, 5);
        assert!(s.document(&r).unwrap().get("state").is_none());
        // Another agent's view of the same target has its own streak.
        r.agent = "probe-nyc-1".into();
        at(&mut r, 14);
        assert_eq!(s.document(&r).unwrap()["state"]["checks"], 1);
    }

    #[test]
    fn streak_table_is_bounded() {
        let mut t = Streaks::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..MAX_TRACKED_STATES {
            assert!(t.observe(&format!("a{i}"), "t", start, true).is_some());
        }
        assert!(t.observe("one-more", "t", start, true).is_none());
        // Known pairs still advance.
        assert!(t
            .observe("a0", "t", start + Duration::from_secs(60), false)
            .is_some());
        assert_eq!(t.by_pair.len(), MAX_TRACKED_STATES);
    }
}
