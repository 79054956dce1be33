//! Compact live summary of a swarm, for the local demo
//! (`packaging/swarm.sh`): reads the indexer's `/api/state` every two
//! seconds and prints one line when something an operator cares about
//! changed (an agent's broker or liveness, a broker's connection, a target's
//! state), else one line every ten seconds.
//!
//! Usage: cargo run --example summary -- http://127.0.0.1:7883 [SECONDS]

use std::time::{Duration, Instant};

use serde_json::Value;

const PERIOD: Duration = Duration::from_secs(2);
const QUIET_LINE_EVERY: Duration = Duration::from_secs(10);

/// `paris@#1 lyon@#2 berlin(gone)`: agents with their broker's number.
fn agents(v: &Value) -> String {
    let brokers: Vec<&str> = v["brokers"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["broker"].as_str()).collect())
        .unwrap_or_default();
    let number = |b: &str| {
        brokers
            .iter()
            .position(|x| *x == b)
            .map(|i| format!("#{}", i + 1))
            .unwrap_or_else(|| b.to_owned())
    };
    v["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| {
                    let name = a["name"].as_str().unwrap_or("?");
                    let name = name.strip_prefix("probe-").unwrap_or(name);
                    match (a["alive"].as_bool(), a["broker"].as_str()) {
                        (Some(true), Some(b)) => format!("{name}@{}", number(b)),
                        _ => format!("{name}({})", a["notice"].as_str().unwrap_or("silent")),
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `#1 up #2 DOWN`.
fn brokers(v: &Value) -> String {
    v["brokers"]
        .as_array()
        .map(|b| {
            b.iter()
                .enumerate()
                .map(|(i, b)| {
                    let up = b["connected"].as_bool() == Some(true);
                    format!("#{} {}", i + 1, if up { "up" } else { "DOWN" })
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `up 11/12, down: 127.0.0.3 (lyon)`.
fn cells(v: &Value) -> String {
    let cells = v["cells"].as_array().cloned().unwrap_or_default();
    let up = cells.iter().filter(|c| c["state"] == "up").count();
    let bad: Vec<String> = cells
        .iter()
        .filter(|c| c["state"] != "up")
        .map(|c| {
            let agent = c["agent"].as_str().unwrap_or("?");
            format!(
                "{} {}<-{}",
                c["state"].as_str().unwrap_or("?"),
                c["target"].as_str().unwrap_or("?"),
                agent.strip_prefix("probe-").unwrap_or(agent)
            )
        })
        .collect();
    if bad.is_empty() {
        format!("cells up {up}/{}", cells.len())
    } else {
        format!("cells up {up}/{}; {}", cells.len(), bad.join(", "))
    }
}

/// The indexers' verdicts that are not healthy: `verdicts: 127.0.0.3
/// down (target), lyon trouble`, or `verdicts: all up/ok` (targets not
/// judged yet are counted, not listed).
fn verdicts(v: &Value) -> String {
    let list = |key: &str| v["verdicts"][key].as_array().cloned().unwrap_or_default();
    let targets = list("targets");
    let unknown = targets.iter().filter(|t| t["state"] == "unknown").count();
    let mut bad: Vec<String> = targets
        .iter()
        .filter(|t| t["state"] != "up" && t["state"] != "unknown")
        .map(|t| {
            let cause = match t["cause"].as_str() {
                Some("provider") => format!("provider {}", t["provider"].as_str().unwrap_or("?")),
                Some(c) => c.to_owned(),
                None => "?".into(),
            };
            format!(
                "{} {} ({cause})",
                t["target"].as_str().unwrap_or("?"),
                t["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    bad.extend(
        list("agents")
            .iter()
            .filter(|a| a["state"] != "ok")
            .map(|a| {
                let name = a["agent"].as_str().unwrap_or("?");
                format!(
                    "{} {}",
                    name.strip_prefix("probe-").unwrap_or(name),
                    a["state"].as_str().unwrap_or("?")
                )
            }),
    );
    if unknown > 0 {
        bad.insert(0, format!("{unknown} targets not judged yet"));
    }
    if bad.is_empty() {
        "verdicts: all up/ok".into()
    } else {
        format!("verdicts: {}", bad.join(", "))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7883".into());
    let limit = args
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs);
    let url = format!("{}/api/state", base.trim_end_matches('/'));
    let started = Instant::now();
    let mut last = String::new();
    let mut last_print = Instant::now();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        if limit.is_some_and(|l| started.elapsed() >= l) {
            return;
        }
        let elapsed = started.elapsed().as_secs();
        let state = match reqwest::get(&url).await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        }
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let Some(v) = state else {
            println!("{elapsed:>4}s  indexer not answering on {url}");
            continue;
        };
        let now = format!(
            "agents {}  |  brokers {}  |  {}  |  {}",
            agents(&v),
            brokers(&v),
            cells(&v),
            verdicts(&v)
        );
        if now != last || last_print.elapsed() >= QUIET_LINE_EVERY {
            let results: u64 = v["brokers"]
                .as_array()
                .map(|b| b.iter().filter_map(|b| b["results"].as_u64()).sum())
                .unwrap_or(0);
            println!("{elapsed:>4}s  {now}  |  {results} results");
            last = now;
            last_print = Instant::now();
        }
    }
}
