//! Levels: whether one round was `up`, `slow`, `lossy` or `down`.
//!
//! The rule (also in `docs/protocol.md`):
//! - `down`: no reply at all (or nothing sent: no address, send failed);
//! - `lossy`: some replies, loss over the lossy level;
//! - `slow`: the round's average rtt is over the slow threshold;
//! - `up` otherwise.
//!
//! The slow threshold is relative once the agent has a baseline for the
//! target (the median average rtt of its recent rounds, see
//! [`Baseline`]): `max(2 x median, median + 10 ms)`, but never more than
//! `median + slow level`. A target 200 ms away is then slow above 350 ms
//! (not at 210 ms); one 1 ms away is slow above 11 ms. Before the baseline
//! exists (fewer than [`Baseline::MIN_SAMPLES`] rounds), the slow level
//! itself is the threshold. A level set for the target in `watch` is an
//! explicit promise: the round is also slow whenever it exceeds it.

use std::collections::VecDeque;

use crate::protocol::RoundState;

/// Slow level used when neither the indexer's config nor `watch` sets one.
pub const DEFAULT_SLOW_MS: f64 = 150.0;
/// Lossy level used when neither the indexer's config nor `watch` sets one.
pub const DEFAULT_LOSSY: f64 = 0.1;
/// The smallest margin over the baseline that can count as slow, in ms:
/// below it, jitter on a near target would read as slowness.
pub const RELATIVE_MIN_MS: f64 = 10.0;

/// The levels applied to one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// Slow level, in milliseconds.
    pub slow_ms: f64,
    /// Lossy level, a fraction of the echoes (0.1 = 10 %).
    pub lossy: f64,
    /// The slow level was set for this target (in `watch`), not inherited.
    pub explicit_slow: bool,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            slow_ms: DEFAULT_SLOW_MS,
            lossy: DEFAULT_LOSSY,
            explicit_slow: false,
        }
    }
}

impl Levels {
    /// The average rtt (ms) over which a round is slow, given the agent's
    /// baseline for the target (median ms), if it has one.
    pub fn slow_threshold(&self, baseline_ms: Option<f64>) -> f64 {
        match baseline_ms {
            None => self.slow_ms,
            Some(b) => {
                let relative = (2.0 * b).max(b + RELATIVE_MIN_MS).min(b + self.slow_ms);
                if self.explicit_slow {
                    relative.min(self.slow_ms)
                } else {
                    relative
                }
            }
        }
    }

    /// Classifies one round: `sent` requests, `received` replies, average
    /// rtt in ms (None when nothing came back).
    pub fn classify(
        &self,
        sent: u32,
        received: u32,
        rtt_avg_ms: Option<f64>,
        baseline_ms: Option<f64>,
    ) -> RoundState {
        let Some(rtt) = rtt_avg_ms.filter(|r| r.is_finite()) else {
            return RoundState::Down;
        };
        if sent == 0 || received == 0 {
            return RoundState::Down;
        }
        // received > sent is refused upstream; clamp rather than trust it.
        let loss = 1.0 - f64::from(received.min(sent)) / f64::from(sent);
        if loss > self.lossy {
            RoundState::Lossy
        } else if rtt > self.slow_threshold(baseline_ms) {
            RoundState::Slow
        } else {
            RoundState::Up
        }
    }
}

/// One agent's recent average rtts towards one target: the last
/// [`Baseline::MAX_SAMPLES`] answered rounds of the last hour.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// (round time in seconds since the epoch, average rtt in ms), oldest first.
    samples: VecDeque<(i64, f32)>,
}

impl Baseline {
    /// Rounds kept (memory: 12 bytes each, per agent and target).
    pub const MAX_SAMPLES: usize = 32;
    /// Rounds needed before the median is trusted.
    pub const MIN_SAMPLES: usize = 5;
    /// How far back a round still counts, in seconds.
    pub const WINDOW_SECS: i64 = 3600;

    /// Records an answered round at `at_secs`.
    pub fn push(&mut self, at_secs: i64, rtt_ms: f64) {
        if !rtt_ms.is_finite() || rtt_ms < 0.0 {
            return;
        }
        if self.samples.len() >= Self::MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at_secs, rtt_ms as f32));
    }

    /// The median of the rounds within the window before `now_secs`, once
    /// there are enough of them.
    pub fn median(&self, now_secs: i64) -> Option<f64> {
        let from = now_secs.saturating_sub(Self::WINDOW_SECS);
        let mut v: Vec<f32> = self
            .samples
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, r)| *r)
            .collect();
        if v.len() < Self::MIN_SAMPLES {
            return None;
        }
        v.sort_by(f32::total_cmp);
        let mid = v.len() / 2;
        let m = if v.len() % 2 == 0 {
            (f64::from(v[mid - 1]) + f64::from(v[mid])) / 2.0
        } else {
            f64::from(v[mid])
        };
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_examples_hold() {
        let l = Levels::default();
        // 200 ms away: not slow at 210 ms, slow past 350 ms.
        assert_eq!(l.classify(5, 5, Some(210.0), Some(200.0)), RoundState::Up);
        assert_eq!(l.classify(5, 5, Some(351.0), Some(200.0)), RoundState::Slow);
        // 1 ms away: slow at 30 ms.
        assert_eq!(l.classify(5, 5, Some(30.0), Some(1.0)), RoundState::Slow);
        assert_eq!(l.classify(5, 5, Some(10.5), Some(1.0)), RoundState::Up);
    }

    #[test]
    fn without_baseline_the_level_is_the_threshold() {
        let l = Levels::default();
        assert_eq!(l.classify(5, 5, Some(149.0), None), RoundState::Up);
        assert_eq!(l.classify(5, 5, Some(151.0), None), RoundState::Slow);
    }

    #[test]
    fn an_explicit_level_is_a_promise() {
        let l = Levels {
            slow_ms: 40.0,
            explicit_slow: true,
            ..Levels::default()
        };
        // A 35 ms baseline would tolerate 70 ms; the target's level says 40.
        assert_eq!(l.classify(5, 5, Some(41.0), Some(35.0)), RoundState::Slow);
        assert_eq!(l.classify(5, 5, Some(39.0), Some(35.0)), RoundState::Up);
    }

    #[test]
    fn loss_and_silence() {
        let l = Levels::default();
        assert_eq!(l.classify(5, 0, None, None), RoundState::Down);
        assert_eq!(l.classify(0, 0, None, None), RoundState::Down);
        assert_eq!(l.classify(5, 4, Some(1.0), None), RoundState::Lossy);
        assert_eq!(l.classify(10, 9, Some(1.0), None), RoundState::Up);
        // Lossy wins over slow: losing echoes is the worse news.
        assert_eq!(l.classify(5, 1, Some(500.0), None), RoundState::Lossy);
        assert_eq!(l.classify(5, 9, Some(1.0), None), RoundState::Up);
        assert_eq!(l.classify(5, 5, Some(f64::NAN), None), RoundState::Down);
    }

    #[test]
    fn baseline_is_a_median_of_recent_rounds_only() {
        let mut b = Baseline::default();
        for i in 0..4 {
            b.push(i, 10.0);
        }
        assert_eq!(b.median(10), None, "too few rounds");
        b.push(4, 1000.0);
        assert_eq!(b.median(10), Some(10.0), "one outlier does not move it");
        assert_eq!(b.median(10 + Baseline::WINDOW_SECS), None, "an hour later");
        for i in 0..100 {
            b.push(100 + i, 2.0);
        }
        assert_eq!(b.median(200), Some(2.0));
        assert_eq!(b.samples.len(), Baseline::MAX_SAMPLES);
        b.push(300, f64::INFINITY);
        b.push(300, -1.0);
        assert_eq!(b.samples.len(), Baseline::MAX_SAMPLES);
    }
}
