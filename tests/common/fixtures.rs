//! Configuration files and payloads the tests share.

use std::path::{Path, PathBuf};

/// Writes `DIR/indexer.yaml` for `brokers` and `targets`, with its state in
/// DIR and `outputs` (YAML lines: `file:` and/or `elasticsearch:`) appended.
pub fn indexer_config(
    dir: &Path,
    name: &str,
    brokers: &[String],
    targets: &[&str],
    outputs: &str,
) -> PathBuf {
    let path = dir.join("indexer.yaml");
    let quoted = |v: &mut dyn Iterator<Item = &str>| {
        v.map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", ")
    };
    std::fs::write(
        &path,
        format!(
            "name: {name}\nbrokers: [{}]\nkeepalive: 2s\ntargets: [{}]\nstate_dir: {}\n{outputs}",
            quoted(&mut brokers.iter().map(String::as_str)),
            quoted(&mut targets.iter().copied()),
            dir.display(),
        ),
    )
    .unwrap();
    path
}

/// A result as an agent would publish it.
pub fn result_json(agent: &str, target: &str, ts: &str) -> Vec<u8> {
    serde_json::json!({
        "agent": agent, "labels": {"provider": "p", "location": "Paris"}, "target": target,
        "addr": "127.0.0.1", "timestamp": ts, "interval": 60.0, "sent": 2, "received": 2,
        "rtt": {"min": 1.0, "avg": 1.5, "max": 2.0, "stddev": 0.5}, "rtts": [1.0, 2.0]
    })
    .to_string()
    .into_bytes()
}

/// The tests' clock: Unix seconds when this test binary first asked. Read
/// once, so that timestamps built from it (an hour ago on a whole minute,
/// yesterday at 10:00) do not move when a test crosses a minute or a day
/// boundary, which split rounds of results in two.
pub fn run_start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    })
}

/// A result timestamp `minutes` after 10:00 UTC yesterday: in the past,
/// and well within the month indexers accept.
pub fn ts(minutes: u32) -> String {
    let now = run_start();
    let yesterday_10h = now - now % 86_400 - 86_400 + 10 * 3600;
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(yesterday_10h + u64::from(minutes) * 60);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Publishes `n` results of `agent` for `target`, one minute apart from
/// 10:00 yesterday ([`ts`]), each acknowledged by the broker.
pub async fn publish_results(port: u16, agent: &str, target: &str, n: u32) {
    for i in 0..n {
        let ts = ts(i);
        super::mqtt::publish(
            port,
            &format!("ping/{target}"),
            &result_json(agent, target, &ts),
            false,
        )
        .await;
    }
}
