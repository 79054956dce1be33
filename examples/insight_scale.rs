//! How judging results scales with the swarm (`packaging/bench/insight-scale.sh`).
//!
//! The indexer judges every result of a listed target against the views of
//! every other agent reporting on that target, and once a second re-judges
//! every agent and target (`run_insight`'s tick), both under one lock on
//! the intake thread. This feeds the correlator rounds of synthetic results
//! (no network, no disk) for swarms of the same number of (agent, target)
//! pairs but more and more agents per target, once with every target up
//! and once with every target down for everyone (an outage of the whole
//! list), and prints CPU per result (µs), its ratio to the first row (one
//! agent per target, the anchor), and the time of one tick (ms).
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
    per_result_us: f64,
    tick_ms: f64,
}

fn run(agents: usize, targets: usize, received: u32) -> Run {
    let mut c = Correlator::new(Settings::default());
    let list: Vec<(String, Option<Levels>)> = (0..targets)
        .map(|t| (format!("10.{}.{}.1", t / 256, t % 256), None))
        .collect();
    c.set_targets(&list);
    let names: Vec<String> = (0..agents).map(|a| format!("probe-{a}")).collect();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let first = now_ms - (WARM_ROUNDS + 1) * INTERVAL_MS;
    let play = |c: &mut Correlator, round: i64| {
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
        c.take_changes();
    };
    for round in 0..WARM_ROUNDS {
        play(&mut c, round);
    }
    let t = Instant::now();
    play(&mut c, WARM_ROUNDS);
    let per_result_us = t.elapsed().as_secs_f64() * 1e6 / (agents * targets) as f64;
    let t = Instant::now();
    c.tick(SystemTime::now());
    let tick_ms = t.elapsed().as_secs_f64() * 1e3;
    Run {
        per_result_us,
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
        "{:>8} {:>8} {:>10} | {:>10} {:>6} {:>9} | {:>10} {:>6} {:>9}",
        "agents",
        "targets",
        "per target",
        "up: us/res",
        "ratio",
        "tick ms",
        "down: us",
        "ratio",
        "tick ms"
    );
    let mut anchor: Option<(f64, f64)> = None;
    let mut per_target = 1;
    while per_target <= pairs.min(most) {
        let (agents, targets) = (per_target, pairs / per_target);
        let up = run(agents, targets, 5);
        let down = run(agents, targets, 0);
        let (au, ad) = *anchor.get_or_insert((up.per_result_us, down.per_result_us));
        println!(
            "{:>8} {:>8} {:>10} | {:>10.2} {:>6.1} {:>9.1} | {:>10.2} {:>6.1} {:>9.1}",
            agents,
            targets,
            agents,
            up.per_result_us,
            up.per_result_us / au,
            up.tick_ms,
            down.per_result_us,
            down.per_result_us / ad,
            down.tick_ms
        );
        per_target = per_target.saturating_mul(10);
    }
    ExitCode::SUCCESS
}
