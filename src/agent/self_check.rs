//! "It's probably me": the agent's own trouble detection, without any
//! indexer. When nearly all its targets stop answering at once, the
//! likelier story is this agent's network, not all those targets.
//!
//! Rule (also in `docs/protocol.md`): among the targets whose latest round
//! is recent (within [`RECENT_INTERVALS`] intervals of the newest round),
//! at least [`MIN_TARGETS`] of them, the flag rises when at least 90% had
//! no reply in their latest round, and falls when fewer than half have.
//! The indexers' cross-agent verdict (`verdict/agent/{name}`) is the
//! better answer when one is reachable; this one needs nobody.

use std::collections::HashMap;
use std::sync::Mutex;

/// Targets needed before the agent judges itself.
pub const MIN_TARGETS: usize = 3;
/// Rounds older than this many intervals behind the newest no longer count
/// (their target left the list, or the schedule moved on).
pub const RECENT_INTERVALS: i64 = 2;

#[derive(Debug, Clone, Copy)]
struct Latest {
    slot_ms: i64,
    interval_ms: i64,
    failed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    latest: HashMap<String, Latest>,
    newest_ms: i64,
    /// Rounds since the last pass over `latest`.
    since_pass: usize,
    flagged: Option<String>,
}

/// The flag and what raised it.
#[derive(Debug, Default)]
pub struct SelfCheck {
    inner: Mutex<Inner>,
}

impl SelfCheck {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one round: `failed` when no echo was answered (or the name did
    /// not resolve). Cost: O(1), plus one pass over the targets per round
    /// of the list.
    pub fn round(&self, target: &str, slot_ms: i64, interval_ms: i64, failed: bool) {
        let mut g = self.lock();
        g.newest_ms = g.newest_ms.max(slot_ms);
        let latest = Latest {
            slot_ms,
            interval_ms: interval_ms.max(1),
            failed,
        };
        // Per round: no new key (and no allocation) for a known target.
        match g.latest.get_mut(target) {
            Some(l) => *l = latest,
            None => {
                g.latest.insert(target.to_owned(), latest);
            }
        }
        g.since_pass += 1;
        // Judge once per round of the list: a full list's worth of new
        // rounds, or at once when this round failed where the flag is down
        // (the moment it all fails is the moment to say so).
        if g.since_pass < g.latest.len() && !(failed && g.flagged.is_none()) {
            return;
        }
        g.since_pass = 0;
        let newest = g.newest_ms;
        g.latest.retain(|_, l| {
            l.slot_ms >= newest.saturating_sub(l.interval_ms.saturating_mul(RECENT_INTERVALS + 1))
        });
        let total = g.latest.len();
        let failed_n = g.latest.values().filter(|l| l.failed).count();
        let raise = total >= MIN_TARGETS && failed_n * 10 >= total * 9;
        let fall = total < MIN_TARGETS || failed_n * 2 < total;
        if g.flagged.is_none() && raise {
            let what = format!(
                "{failed_n} of {total} targets unanswered at once: it's probably this agent"
            );
            tracing::warn!(failed = failed_n, targets = total, "IT'S PROBABLY ME: nearly all targets stopped answering at once; check this agent's network");
            g.flagged = Some(what);
        } else if g.flagged.is_some() && fall {
            tracing::info!(
                failed = failed_n,
                targets = total,
                "targets answer again: the local trouble is over"
            );
            g.flagged = None;
        }
    }

    /// The raised flag's description, if raised.
    pub fn flagged(&self) -> Option<String> {
        self.lock().flagged.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(c: &SelfCheck, at: i64, failed: &[bool]) {
        for (i, f) in failed.iter().enumerate() {
            c.round(&format!("t{i}"), at + i as i64, 1000, *f);
        }
    }

    #[test]
    fn nearly_all_failing_at_once_is_flagged_and_recovery_clears_it() {
        let c = SelfCheck::default();
        rounds(&c, 0, &[false; 10]);
        assert_eq!(c.flagged(), None);
        // One target down is the target's problem.
        rounds(
            &c,
            1000,
            &[
                true, false, false, false, false, false, false, false, false, false,
            ],
        );
        assert_eq!(c.flagged(), None);
        // Nine of ten down at once: probably us.
        rounds(
            &c,
            2000,
            &[true, true, true, true, true, true, true, true, true, false],
        );
        let f = c.flagged().expect("flagged");
        assert!(f.contains("9 of 10"), "{f}");
        // Still bad for most: the flag holds (hysteresis).
        rounds(
            &c,
            3000,
            &[
                true, true, true, true, true, true, false, false, false, false,
            ],
        );
        assert!(c.flagged().is_some());
        rounds(&c, 4000, &[false; 10]);
        assert_eq!(c.flagged(), None);
    }

    #[test]
    fn too_few_targets_or_targets_gone_from_the_list_say_nothing() {
        let c = SelfCheck::default();
        rounds(&c, 0, &[true, true]);
        assert_eq!(c.flagged(), None, "two targets are too few to judge");
        // Targets that left the list long ago do not count.
        let c = SelfCheck::default();
        rounds(&c, 0, &[true, true, true, true]);
        assert!(c.flagged().is_some());
        for at in [10_000, 11_000, 12_000, 13_000] {
            c.round("fresh1", at, 1000, false);
            c.round("fresh2", at + 1, 1000, false);
            c.round("fresh3", at + 2, 1000, false);
        }
        assert_eq!(c.flagged(), None);
    }
}
