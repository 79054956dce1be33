//! The indexer binary against real mosquitto brokers (file output).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use common::fixtures::{indexer_config, publish_results, result_json, ts};
use common::mosquitto::Mosquitto;
use common::mqtt::{publish, Collector};
use common::smallfs::SmallFs;

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
    let r = result_json("ag1", "127.0.0.1", &ts(0));
    publish(a.port, "ping/127.0.0.1", &r, false).await;
    wait_written(&mut idx, 1).await;
    // The same result through the other broker, then a sentinel behind it
    // on the same broker: once the sentinel is written, the copy was seen.
    publish(b.port, "ping/127.0.0.1", &r, false).await;
    let other = result_json("ag1", "127.0.0.1", &ts(1));
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
    assert_eq!(d["@timestamp"], ts(0));
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
        &result_json("ag", "other-target", &ts(0)),
        false,
    )
    .await;
    publish(a.port, "rip/agent/z", b"\xff\xfe", false).await;
    publish(
        a.port,
        "ping/127.0.0.1",
        &result_json("ag", "127.0.0.1", &ts(0)),
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
        &result_json("ag", "127.0.0.1", &ts(1)),
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

/// Writes `n` results of `agent` (timestamps one millisecond apart, ending
/// now) as lines for `mosquitto_pub -l`.
fn result_lines(dir: &Path, agent: &str, n: usize) -> PathBuf {
    let now = std::time::SystemTime::now();
    let mut text = String::with_capacity(n * 400);
    for i in 0..n {
        let at = now - Duration::from_millis(i as u64);
        let ts = humantime::format_rfc3339_millis(at).to_string();
        text.push_str(std::str::from_utf8(&result_json(agent, "127.0.0.1", &ts)).unwrap());
        text.push('\n');
    }
    let path = dir.join(format!("{agent}.lines"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `mosquitto_pub -l` (QoS 1, as fast as the broker takes it) for
/// each file at once; returns when all are done.
async fn publish_unpaced(port: u16, files: &[PathBuf]) {
    let mut pubs = Vec::new();
    for f in files {
        let child = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-t", "ping/127.0.0.1", "-l"])
            .stdin(std::fs::File::open(f).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_pub");
        pubs.push(child);
    }
    for mut p in pubs {
        assert!(p.wait().await.unwrap().success(), "mosquitto_pub failed");
    }
}

/// Newlines in the file output: documents written so far.
fn written_lines(dir: &Path) -> usize {
    std::fs::read(dir.join("results.ndjson"))
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaced_burst_from_four_publishers_is_stored_once_and_sigterm_still_works() {
    // mosquitto's defaults (1000 queued messages per client, then drops:
    // no subscriber keeps up with four unpaced publishers).
    let (written, _) = unpaced_burst("").await;
    assert!(written > 0, "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaced_burst_through_a_broker_that_drops_nothing_is_stored_whole() {
    let (written, dropped) =
        unpaced_burst("max_inflight_messages 0\nmax_queued_messages 0\n").await;
    assert_eq!((written, dropped), (100_000, 0));
}

// What the broker sends ahead of a PINGRESP must be read within the
// keepalive (rumqttc drops a connection whose last ping is unanswered):
// with the broker's limits lifted that is a socket's worth of results, a
// few seconds for a debug build, so this burst runs with a keepalive of
// 10 s (the default is 15 s).

/// 4 x 25,000 results published unpaced through one mosquitto (its
/// defaults plus `conf`, counters every second): every result the broker
/// delivered (all it did not drop) is stored once, and SIGTERM is answered
/// at the end. Returns (stored, dropped by the broker).
async fn unpaced_burst(conf: &str) -> (usize, usize) {
    const EACH: usize = 25_000;
    const ALL: usize = 4 * EACH;
    let a = Mosquitto::start_with(&format!("sys_interval 1\n{conf}")).await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..4)
        .map(|i| result_lines(dir.path(), &format!("burst{i}"), EACH))
        .collect();
    let cfg = write_config(dir.path(), &[a.addr()], &[], "");
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, yaml.replace("keepalive: 2s", "keepalive: 10s")).unwrap();
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    let mut sys = Collector::new(&[a.port], &["$SYS/broker/publish/messages/dropped"]).await;
    publish_unpaced(a.port, &files).await;
    // Every message the broker delivered (all it did not drop) is stored:
    // wait for the broker's counter and the file output to add up.
    let deadline = tokio::time::Instant::now() + 120 * SEC;
    let mut dropped = 0;
    let (dropped, written) = loop {
        // mosquitto publishes the counter when it changes (never, when it
        // drops nothing): a quiet second means "unchanged".
        if let Some(m) = sys.next_matching(SEC + SEC / 2, |_| true).await {
            dropped = String::from_utf8_lossy(&m.payload).trim().parse().unwrap();
        }
        let written = written_lines(dir.path());
        assert!(written + dropped <= ALL, "more stored than delivered");
        if written + dropped == ALL || tokio::time::Instant::now() > deadline {
            break (dropped, written);
        }
    };
    assert_eq!(
        written + dropped,
        ALL,
        "stored {written}, broker dropped {dropped}"
    );
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0), "SIGTERM answered");
    let docs = lines(dir.path());
    let unique: std::collections::HashSet<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["observer"]["name"].as_str().unwrap().to_owned(),
                d["@timestamp"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(docs.len(), written);
    assert_eq!(unique.len(), docs.len(), "each result once");
    assert!(
        !idx.log.iter().any(|l| l.contains("lost broker")),
        "the session dropped"
    );
    (written, dropped)
}

/// Now, to the millisecond, in canonical form.
fn now_ts() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Publishes a file with `mosquitto_pub -f` (QoS 1).
async fn publish_file(port: u16, topic: &str, file: &Path) {
    let ok = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-f",
        ])
        .arg(file)
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub -f failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_costs_one_counted_skip_each_and_no_session() {
    let a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[a.addr()], &[], "");
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    let topic = "ping/127.0.0.1";
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&result_json("ag", "127.0.0.1", &now_ts())).unwrap();
        f(&mut v);
        v.to_string().into_bytes()
    };
    // The year-9999 result that panicked a session, and other absurd
    // values: each refused and counted.
    for bad in [
        with(&|v| v["timestamp"] = "9999-12-31T23:59:59.999Z".into()),
        with(&|v| v["timestamp"] = "1970-01-01T00:00:00.000Z".into()),
        with(&|v| v["agent"] = "".into()),
        with(&|v| v["agent"] = "a\u{0}b".into()),
        with(&|v| v["agent"] = "a b".into()),
        with(&|v| {
            v["sent"] = 1.into();
            v["received"] = 5.into()
        }),
    ] {
        publish(a.port, topic, &bad, false).await;
    }
    // 20 MB: over rumqttc's default limit, under mosquitto's.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 20 * 1024 * 1024]).unwrap();
    publish_file(a.port, "ping/x", &big).await;
    // One instant written three ways is one document.
    let t = now_ts();
    for form in [t.clone(), t.replace('Z', "+00:00"), t.replace('Z', "0Z")] {
        publish(a.port, topic, &result_json("ag", "127.0.0.1", &form), false).await;
    }
    let sentinel = result_json("ag", "127.0.0.1", &ts(0));
    publish(a.port, topic, &sentinel, false).await;
    wait_written(&mut idx, 2).await;
    let docs = lines(dir.path());
    assert_eq!(docs.len(), 2, "{docs:#?}");
    assert_eq!(docs[0]["@timestamp"], t.as_str());
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
    let last = idx
        .log
        .iter()
        .find(|l| l.contains("final counts"))
        .expect("final counts");
    assert!(last.contains("7 bad messages"), "{last}");
    assert!(
        !idx.log
            .iter()
            .any(|l| l.contains("lost broker") || l.contains("panicked")),
        "a session dropped or panicked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_broker_is_resubscribed_within_two_seconds() {
    let mut a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &[a.addr()], &[], "");
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    a.kill().await;
    idx.wait_log(&["lost broker"], 10 * SEC).await;
    // A long outage: an exponential backoff would now wait for long.
    for _ in 0..5 {
        idx.wait_new_log(&["cannot connect to broker"], 5 * SEC)
            .await;
    }
    tokio::time::sleep(5 * SEC).await;
    let mark = idx.mark();
    a.restart().await;
    idx.wait_log_after(mark, &["subscribed to ping/+"], 2 * SEC)
        .await;
    // And it takes results again.
    publish_at(a.port, 0).await;
    wait_written(&mut idx, 1).await;
}

/// Publishes agent `ag`'s result for 127.0.0.1 at minute `m` of [`ts`].
async fn publish_at(port: u16, m: u32) {
    let r = result_json("ag", "127.0.0.1", &ts(m));
    publish(port, "ping/127.0.0.1", &r, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_acks_tears_no_line_and_loses_nothing() {
    let a = Mosquitto::start().await;
    let fs = SmallFs::mount(256 * 1024);
    let cfg = write_config(fs.path(), &[a.addr()], &[], "");
    let mut idx = start(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    publish_results(a.port, "ag", "127.0.0.1", 5).await;
    wait_written(&mut idx, 5).await;
    // One page left: the next batches fill it, and one fails part way.
    fs.fill(4096);
    for i in 5..45 {
        publish_at(a.port, i).await;
    }
    idx.wait_log(&["cannot write", "retrying"], 10 * SEC).await;
    // Whatever is in the file is whole lines (lines() parses each one).
    let before = lines(fs.path()).len();
    assert!((5..45).contains(&before), "{before} lines");
    fs.free_up();
    wait_written(&mut idx, 45).await;
    let docs = lines(fs.path());
    let stamps: std::collections::HashSet<&str> = docs
        .iter()
        .map(|d| d["@timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(docs.len(), 45, "every result once");
    assert_eq!(stamps.len(), 45);
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
    let last = idx.log.iter().find(|l| l.contains("final counts")).unwrap();
    assert!(last.contains("45 results"), "{last}");
}
