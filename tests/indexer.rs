//! The indexer binary against real mosquitto brokers (file output).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use common::fixtures::{indexer_config, publish_results, result_json};
use common::mosquitto::Mosquitto;
use common::mqtt::{publish, Collector};

const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const SEC: Duration = Duration::from_secs(1);

fn write_config(dir: &Path, brokers: &[String], targets: &[&str], extra: &str) -> PathBuf {
    let file = format!("file: {{path: {}/results.ndjson}}\n{extra}", dir.display());
    indexer_config(dir, "idx-test", brokers, targets, &file)
}

fn start(cfg: &Path) -> Daemon {
    Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[])
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("results.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect()
}

/// Waits until the indexer says it has made `n` documents durable.
async fn wait_written(idx: &mut Daemon, n: usize) {
    idx.wait_log(&["documents written", &format!("total={n}")], 10 * SEC)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_retained_on_every_broker_and_updated_on_reload() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[a.addr(), b.addr()],
        &["127.0.0.1", "example.com"],
        "",
    );
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed", &a.addr()], 10 * SEC).await;
    idx.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;

    // A late subscriber gets the retained list from each broker.
    let mut sub = Collector::new(&[a.port, b.port], &["watch"]).await;
    let mut versions = Vec::new();
    for port in [a.port, b.port] {
        let m = sub
            .next_matching(5 * SEC, |m| m.port == port)
            .await
            .expect("retained watch");
        assert!(m.retain, "watch must be retained");
        let j = m.json();
        assert_eq!(
            j["targets"],
            serde_json::json!(["127.0.0.1", "example.com"])
        );
        versions.push(j["version"].as_str().expect("version").to_owned());
    }
    assert_eq!(versions[0], versions[1]);

    // Change the list and reload: both brokers get the new one.
    write_config(dir.path(), &[a.addr(), b.addr()], &["127.0.0.2"], "");
    idx.signal("HUP");
    idx.wait_log(&["configuration reloaded", "targets"], 5 * SEC)
        .await;
    for port in [a.port, b.port] {
        let m = sub
            .next_matching(5 * SEC, |m| m.port == port)
            .await
            .expect("updated watch");
        let j = m.json();
        assert_eq!(j["targets"], serde_json::json!(["127.0.0.2"]));
        assert_ne!(
            j["version"].as_str(),
            Some(versions[0].as_str()),
            "version changes with the list"
        );
    }
    // And a newcomer sees the new list retained.
    let mut late = Collector::new(&[b.port], &["watch"]).await;
    let m = late
        .next_matching(5 * SEC, |_| true)
        .await
        .expect("retained");
    assert_eq!(m.json()["targets"], serde_json::json!(["127.0.0.2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_published_on_two_brokers_is_written_once() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[a.addr(), b.addr()], &[], "");
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed", &a.addr()], 10 * SEC).await;
    idx.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;
    let r = result_json("ag1", "127.0.0.1", "2026-11-25T10:00:00.000Z");
    publish(a.port, "ping/127.0.0.1", &r, false).await;
    wait_written(&mut idx, 1).await;
    // The same result through the other broker, then a sentinel behind it
    // on the same broker: once the sentinel is written, the copy was seen.
    publish(b.port, "ping/127.0.0.1", &r, false).await;
    let other = result_json("ag1", "127.0.0.1", "2026-11-25T10:01:00.000Z");
    publish(b.port, "ping/127.0.0.1", &other, false).await;
    wait_written(&mut idx, 2).await;
    let docs = lines(dir.path());
    assert_eq!(docs.len(), 2, "one document per result: {docs:#?}");
    // The indexer tracks agents: a newcomer is said once, not per result.
    let news = idx
        .log
        .iter()
        .filter(|l| l.contains("agent is sending results") && l.contains("ag1"));
    assert_eq!(news.count(), 1);
    let d = &docs[0];
    assert_eq!(d["monitor"]["type"], "icmp");
    assert_eq!(d["monitor"]["status"], "up");
    assert_eq!(d["observer"]["name"], "ag1");
    assert_eq!(d["@timestamp"], "2026-11-25T10:00:00.000Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_and_skipped_without_flapping() {
    let a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[a.addr()], &[], "");
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    publish(a.port, "ping/x", b"{not json", false).await;
    idx.wait_log(&["message skipped", "ping/x"], 5 * SEC).await;
    publish(a.port, "ping/x", br#"{"agent": 3}"#, false).await;
    publish(a.port, "ping/x", &vec![b'{'; 2 * 1024 * 1024], false).await;
    publish(
        a.port,
        "ping/y",
        &result_json("ag", "other-target", "2026-11-25T10:00:00.000Z"),
        false,
    )
    .await;
    publish(a.port, "rip/agent/z", b"\xff\xfe", false).await;
    publish(
        a.port,
        "ping/127.0.0.1",
        &result_json("ag", "127.0.0.1", "2026-11-25T10:00:00.000Z"),
        false,
    )
    .await;
    wait_written(&mut idx, 1).await;
    assert_eq!(
        lines(dir.path()).len(),
        1,
        "only the valid result is stored"
    );
    assert!(
        !idx.log.iter().any(|l| l.contains("lost broker")),
        "the session flapped"
    );
    // Still taking results afterwards.
    publish(
        a.port,
        "ping/127.0.0.1",
        &result_json("ag", "127.0.0.1", "2026-11-25T10:01:00.000Z"),
        false,
    )
    .await;
    wait_written(&mut idx, 2).await;
    assert_eq!(lines(dir.path()).len(), 2);
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
    assert!(
        !idx.log.iter().any(|l| l.contains("lost broker")),
        "the session flapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_published_while_the_indexer_is_away_are_delivered_later() {
    let a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[a.addr()], &[], "");
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
    // The persistent session queues QoS 1 messages for the absent indexer.
    publish_results(a.port, "ag", "127.0.0.1", 5).await;
    publish(
        a.port,
        "rip/agent/ag",
        br#"{"agent":"ag","reason":"lost"}"#,
        false,
    )
    .await;
    let mut idx = start(&cfg);
    idx.wait_log(&["agent notice", "ag"], 10 * SEC).await;
    wait_written(&mut idx, 6).await;
    let docs = lines(dir.path());
    assert_eq!(docs.len(), 6, "{docs:#?}");
    let rip = docs
        .iter()
        .find(|d| d["event"]["dataset"] == "swarming.agent")
        .expect("lifecycle document");
    assert_eq!(rip["event"]["action"], "lost");
    assert_eq!(rip["observer"]["name"], "ag");
}
