//! How judging results scales with the swarm (`packaging/bench/insight-scale.sh`).
//!
//! The indexer judges a result of a listed target that changes its agent's
//! view (or comes while a candidate verdict is being confirmed) against
//! the views of every agent reporting on that target, and about once a
//! second re-judges every agent and target (`run_insight`'s tick), both
//! under one lock on the intake thread. This feeds the correlator rounds of synthetic results
//! (no network, no disk) for swarms of the same number of (agent, target)
//! pairs but more and more agents per target: a steady round (all up, as
//! before), the round in which every target goes down for everyone (every
//! view changes), and the round after (a candidate verdict is being
//! confirmed). It prints CPU per result (µs) of each, its ratio to the
//! first row (one agent per target, the anchor), and the time of one tick
//! (ms).
//!
//! Usage: cargo run --release --example insight_scale [PAIRS [MOST]]
//! (default 10000 pairs, up to 10000 agents per target)

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use swarming::insight::verdict::{Correlator, Observation, Settings};
use swarming::insight::Levels;

/// Rounds played before the measured one (pairs and baselines exist).
const WARM_ROUNDS: i64 = 2;
const INTERVAL_MS: i64 = 60_000;

struct Run {
    /// A round that changes no view (all up, as before).
    steady_us: f64,
    /// The round in which every target goes down for everyone.
    onset_us: f64,
    /// The rounds after it (down, a candidate verdict being confirmed).
    confirm_us: f64,
    tick_ms: f64,
}

fn run(agents: usize, targets: usize) -> Run {
    let mut c = Correlator::new(Settings::default());
    let list: Vec<(String, Option<Levels>)> = (0..targets)
        .map(|t| (format!("10.{}.{}.1", t / 256, t % 256), None))
        .collect();
    c.set_targets(&list);
    let names: Vec<String> = (0..agents).map(|a| format!("probe-{a}")).collect();
    let rounds = WARM_ROUNDS + 3;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let first = now_ms - rounds * INTERVAL_MS;
    let results = (agents * targets) as f64;
    // Plays one round; returns its CPU per result (us).
    let play = |c: &mut Correlator, round: i64, received: u32| {
        let t = Instant::now();
        for (i, a) in names.iter().enumerate() {
            for (t, _) in &list {
                c.observe(&Observation {
                    agent: a,
                    provider: Some(if i % 2 == 0 { "isp-a" } else { "isp-b" }),
                    target: t,
                    at_ms: first + round * INTERVAL_MS,
                    interval_ms: INTERVAL_MS,
                    sent: 5,
                    received,
                    rtt_avg_ms: (received > 0).then_some(1.0),
                });
            }
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / results;
        c.take_changes();
        us
    };
    for round in 0..WARM_ROUNDS {
        play(&mut c, round, 5);
    }
    let steady_us = play(&mut c, WARM_ROUNDS, 5);
    let onset_us = play(&mut c, WARM_ROUNDS + 1, 0);
    let confirm_us = play(&mut c, WARM_ROUNDS + 2, 0);
    let t = Instant::now();
    c.tick(SystemTime::now());
    let tick_ms = t.elapsed().as_secs_f64() * 1e3;
    Run {
        steady_us,
        onset_us,
        confirm_us,
        tick_ms,
    }
}

fn main() -> ExitCode {
    let arg = |i: usize, default: usize| match std::env::args().nth(i).map(|a| a.parse()) {
        None => Some(default),
        Some(Ok(n)) if n >= 1 => Some(n),
        Some(_) => None,
    };
    let (Some(pairs), Some(most)) = (arg(1, 10_000), arg(2, usize::MAX)) else {
        eprintln!("usage: insight_scale [PAIRS [MOST AGENTS PER TARGET]] (positive numbers)");
        return ExitCode::from(64);
    };
    println!(
        "{:>8} {:>8} | {:>9} {:>6} | {:>9} {:>6} | {:>10} {:>6} | {:>8}",
        "agents",
        "targets",
        "steady us",
        "ratio",
        "onset us",
        "ratio",
        "confirm us",
        "ratio",
        "tick ms"
    );
    let mut anchor: Option<(f64, f64, f64)> = None;
    let mut per_target = 1;
    while per_target <= pairs.min(most) {
        let (agents, targets) = (per_target, pairs / per_target);
        let r = run(agents, targets);
        let (a_s, a_o, a_c) = *anchor.get_or_insert((r.steady_us, r.onset_us, r.confirm_us));
        println!(
            "{:>8} {:>8} | {:>9.2} {:>6.1} | {:>9.2} {:>6.1} | {:>10.2} {:>6.1} | {:>8.1}",
            agents,
            targets,
            r.steady_us,
            r.steady_us / a_s,
            r.onset_us,
            r.onset_us / a_o,
            r.confirm_us,
            r.confirm_us / a_c,
            r.tick_ms
        );
        per_target = per_target.saturating_mul(10);
    }
    ExitCode::SUCCESS
}
