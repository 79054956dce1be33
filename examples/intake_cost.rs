//! CPU per result of the indexer's intake (`packaging/bench/intake-cost.sh`).
//!
//! Every result a broker delivers passes through `Intake::intake` on the
//! indexer's intake thread: parse, validate, judge (insight), write the
//! check document, update the swarm state and the agent map. This feeds
//! it results shaped like the throughput benchmark's (200 agents, one
//! listed target, each agent's rounds in order), in process (no network,
//! no disk), and prints the CPU per result beside the anchor: parsing the
//! same payload into a `PingResult` with serde_json, the least any
//! consumer of the JSON does. Each figure is the best of three passes.
//!
//! Usage: cargo run --release --example intake_cost [RESULTS]
//! (default 200000)

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use swarming::config::Broker;
use swarming::indexer::insight::Insight;
use swarming::indexer::intake::Intake;
use swarming::indexer::{BrokerStats, IndexerStats};
use swarming::protocol::PingResult;

const TARGET: &str = "127.0.0.1";
const AGENTS: usize = 200;
const PASSES: usize = 3;

/// `n` results, one millisecond apart, ending a minute ago.
fn payloads(n: usize, pass: usize) -> Vec<Vec<u8>> {
    let span = Duration::from_millis(u64::try_from(n).unwrap_or(u64::MAX));
    let start = SystemTime::now() - Duration::from_secs(60) - span;
    (0..n)
        .map(|i| {
            let at = start + Duration::from_millis(i as u64);
            let ts = humantime::format_rfc3339_millis(at);
            format!(
                r#"{{"agent":"bench-{pass}-{}","labels":{{"provider":"x","location":"Lab"}},"target":"{TARGET}","addr":"{TARGET}","timestamp":"{ts}","interval":60.0,"sent":5,"received":5,"rtt":{{"min":0.04,"avg":0.05,"max":0.06,"stddev":0.01}},"rtts":[0.04,0.05,0.06,0.05,0.05]}}"#,
                i % AGENTS
            )
            .into_bytes()
        })
        .collect()
}

/// Microseconds per item of `f` over `items`.
fn per_item<T>(items: &[T], mut f: impl FnMut(&T) -> bool) -> Option<f64> {
    let t = Instant::now();
    let ok = items.iter().all(&mut f);
    let us = t.elapsed().as_secs_f64() * 1e6 / items.len().max(1) as f64;
    ok.then_some(us)
}

fn main() -> ExitCode {
    let n = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 200_000,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            eprintln!("usage: intake_cost [RESULTS] (a positive number)");
            return ExitCode::from(64);
        }
    };
    let Ok(broker) = "127.0.0.1:1883".parse::<Broker>() else {
        return ExitCode::FAILURE;
    };
    let counters = BrokerStats::default();
    let insight = Arc::new(Insight::new(
        Default::default(),
        &[(TARGET.to_owned(), None)],
    ));
    let intake = Intake::new(
        Arc::new(IndexerStats::default()),
        Default::default(),
        insight,
    );
    let topic = format!("ping/{TARGET}");
    let (mut parse, mut whole, mut bytes) = (f64::MAX, f64::MAX, 0);
    for pass in 0..PASSES {
        let input = payloads(n, pass);
        let parsed = per_item(&input, |p| {
            serde_json::from_slice::<PingResult>(p)
                .map(std::hint::black_box)
                .is_ok()
        });
        let taken = per_item(&input, |p| {
            let doc = intake.intake(&broker, &counters, &topic, p);
            bytes = doc.as_ref().map_or(0, |d| d.source().len());
            doc.is_some()
        });
        let (Some(p), Some(w)) = (parsed, taken) else {
            eprintln!("a result was refused: {:?}", intake.stats);
            return ExitCode::FAILURE;
        };
        parse = parse.min(p);
        whole = whole.min(w);
    }
    println!("results        {n} x {PASSES} passes, {AGENTS} agents, 1 listed target");
    println!("parse only     {parse:>6.2} us/result (anchor)");
    println!(
        "intake         {whole:>6.2} us/result ({:.1}x the anchor; check document {bytes} bytes)",
        whole / parse
    );
    ExitCode::SUCCESS
}
