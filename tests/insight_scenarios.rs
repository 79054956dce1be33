//! Issue 11, "proven on scripted faults": a quick subset of the scenario
//! harness (packaging/bench/insight-scenarios.sh) against the binaries of
//! this build: a real swarm (mosquitto, the indexer, four agents under
//! their own uids, two providers) in a private network namespace, faults
//! injected with nftables, verdicts read from the broker. Needs root,
//! mosquitto, nft and python3 (like tests/agent.rs, it skips nothing).

use std::path::Path;
use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");
const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");

/// The numbers of the script's last line, `SUMMARY right=N total=M`.
fn summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().rev().find(|l| l.starts_with("SUMMARY "))?;
    let field = |k: &str| -> Option<u32> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    Some((field("right=")?, field("total=")?))
}

#[test]
fn scripted_faults_get_the_right_verdicts_within_two_rounds() {
    let bin = Path::new(AGENT).parent().expect("the binaries' directory");
    assert_eq!(
        Path::new(INDEXER).parent(),
        Some(bin),
        "agent and indexer built apart"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/bench/insight-scenarios.sh"
    );
    // A target down for everyone, one agent's dead uplink, a broker restart.
    let out = Command::new("bash")
        .arg(script)
        .args(["--scenarios", "down,uplink,broker", "--bin"])
        .arg(bin)
        .env_remove("RUST_LOG")
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(0), "the harness broke: {text}");
    let (right, total) = summary(&text).expect("a SUMMARY line");
    assert_eq!(total, 3, "{text}");
    assert!(
        right * 100 >= total * 95,
        "right within 2 rounds: {right}/{total} (95 % wanted); see the table above"
    );
}
