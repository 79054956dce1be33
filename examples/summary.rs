//! Live summary of an indexer's file output, for the local swarm demo
//! (`packaging/swarm.sh`): follows the NDJSON file and prints, every two
//! seconds, one line per agent x target.
//!
//! Usage: cargo run --example summary -- PATH [SECONDS]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Row {
    rounds: u64,
    down: u64,
    sent: u64,
    received: u64,
    rtt_sum_ms: f64,
    rtt_n: u64,
    last: String,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "results.ndjson".into());
    let limit = args.next().and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let started = Instant::now();
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut events: Vec<String> = Vec::new();
    let mut offset = 0u64;
    loop {
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata()?.len();
            if len < offset {
                offset = 0; // rotated
            }
            f.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    break; // partial line: read it next time
                }
                offset += line.len() as u64;
                if let Ok(d) = serde_json::from_str::<serde_json::Value>(&line) {
                    take(&d, &mut rows, &mut events);
                }
                line.clear();
            }
        }
        print(&rows, &events, started.elapsed());
        if limit.is_some_and(|l| started.elapsed() >= l) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn take(d: &serde_json::Value, rows: &mut BTreeMap<(String, String), Row>, events: &mut Vec<String>) {
    let agent = d["observer"]["name"].as_str().unwrap_or("?").to_owned();
    if d["event"]["dataset"] == "swarming.agent" {
        events.push(format!("{} agent {agent}: {}", d["@timestamp"].as_str().unwrap_or(""), d["event"]["action"].as_str().unwrap_or("?")));
        return;
    }
    let target = d["monitor"]["name"].as_str().unwrap_or("?").to_owned();
    let row = rows.entry((agent, target)).or_default();
    row.rounds += 1;
    if d["monitor"]["status"] != "up" {
        row.down += 1;
    }
    row.sent += d["ping"]["sent"].as_u64().unwrap_or(0);
    row.received += d["ping"]["received"].as_u64().unwrap_or(0);
    if let Some(avg) = d["ping"]["rtt"]["avg_ms"].as_f64() {
        row.rtt_sum_ms += avg;
        row.rtt_n += 1;
    }
    row.last = d["@timestamp"].as_str().unwrap_or("").to_owned();
}

fn print(rows: &BTreeMap<(String, String), Row>, events: &[String], elapsed: Duration) {
    println!("\n--- swarm summary after {}s: {} agent x target pairs ---", elapsed.as_secs(), rows.len());
    println!("{:<14} {:<12} {:>7} {:>6} {:>7} {:>9}  last round", "agent", "target", "rounds", "down", "loss%", "avg rtt");
    for ((agent, target), r) in rows {
        let loss = if r.sent > 0 { 100.0 * (r.sent - r.received) as f64 / r.sent as f64 } else { 100.0 };
        let rtt = if r.rtt_n > 0 { format!("{:.3}ms", r.rtt_sum_ms / r.rtt_n as f64) } else { "-".into() };
        println!("{agent:<14} {target:<12} {:>7} {:>6} {loss:>7.1} {rtt:>9}  {}", r.rounds, r.down, r.last);
    }
    for e in events.iter().rev().take(5) {
        println!("  {e}");
    }
}
