//! The whole pipe: real agents and indexers, real mosquitto brokers, and
//! the in-repo Elasticsearch that keeps the documented `_bulk` contract.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use common::fake_es::{FakeEs, Flavor};
use common::fixtures::{indexer_config, publish_results, result_json, ts};
use common::mosquitto::Mosquitto;
use common::mqtt::publish;
use common::smallfs::SmallFs;

const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");
const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const INDEX: &str = "heartbeat-8-swarming";
const SEC: Duration = Duration::from_secs(1);

fn es_config(dir: &Path, brokers: &[String], targets: &[&str], es_url: &str) -> PathBuf {
    let es = format!("elasticsearch: {{url: \"{es_url}\", flush_interval: 100ms, timeout: 5s}}\n");
    indexer_config(dir, "idx-pipe", brokers, targets, &es)
}

fn start_indexer(cfg: &Path) -> Daemon {
    Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_results_become_uptime_documents() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = es_config(
        dir.path(),
        &[a.addr(), b.addr()],
        &["127.0.0.1", "::1"],
        &es.url(),
    );
    let mut idx = start_indexer(&cfg);
    idx.wait_log(&["elasticsearch ready"], 10 * SEC).await;
    assert!(
        es.templates().keys().any(|k| k.contains("swarming")),
        "index template installed"
    );

    let agent_cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &agent_cfg,
        format!(
            "name: probe-e2e\nlabels: {{provider: acme, location: Lyon}}\nbrokers: [\"{}\", \"{}\"]\nkeepalive: 1s\nping: {{interval: 1s, count: 2, timeout: 300ms}}\n",
            a.addr(),
            b.addr()
        ),
    )
    .unwrap();
    let _agent = Daemon::spawn(AGENT, &["-c", agent_cfg.to_str().unwrap()], &[]);
    // The agent learns its targets from the indexer's retained `watch`.
    es.wait_for_docs(4).await;
    let docs = es.docs(INDEX);
    let up: Vec<_> = docs
        .values()
        .filter(|d| d["monitor"]["name"] == "::1")
        .collect();
    assert!(!up.is_empty(), "documents for ::1: {docs:#?}");
    let d = up[0];
    assert_eq!(d["monitor"]["type"], "icmp");
    assert_eq!(d["monitor"]["status"], "up");
    assert_eq!(d["monitor"]["id"], "icmp-::1");
    assert_eq!(d["observer"]["name"], "probe-e2e");
    // One Uptime location per agent; the location label stays a label.
    assert_eq!(d["observer"]["geo"]["name"], "probe-e2e");
    assert_eq!(d["labels"]["location"], "Lyon");
    assert_eq!(d["labels"]["provider"], "acme");
    assert_eq!(d["summary"]["up"], 1);
    assert_eq!(d["icmp"]["requests"], 2);
    assert_eq!(d["event"]["dataset"], "icmp");
    assert!(
        d["monitor"]["timespan"]["gte"].is_string() && d["monitor"]["timespan"]["lt"].is_string()
    );
    assert!(d["@timestamp"].is_string());
    // Bulk requests are gzip-compressed.
    assert!(es
        .bulk_requests()
        .iter()
        .all(|r| r.header("content-encoding") == Some("gzip")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_through_two_brokers_is_one_document() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::OpenSearch2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = es_config(dir.path(), &[a.addr(), b.addr()], &[], &es.url());
    let mut idx = start_indexer(&cfg);
    idx.wait_log(&["subscribed", &a.addr()], 10 * SEC).await;
    idx.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;
    let r = result_json("ag", "127.0.0.1", &ts(0));
    publish(a.port, "ping/127.0.0.1", &r, false).await;
    publish(b.port, "ping/127.0.0.1", &r, false).await;
    let sentinel = result_json("ag", "127.0.0.1", &ts(1));
    publish(a.port, "ping/127.0.0.1", &sentinel, false).await;
    publish(b.port, "ping/127.0.0.1", &sentinel, false).await;
    es.wait_for_docs(2).await;
    idx.signal("TERM");
    assert_eq!(idx.wait(20 * SEC).await.code(), Some(0));
    assert_eq!(es.docs(INDEX).len(), 2, "one document per result");

    // A second indexer on the same brokers stores nothing twice either.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = es_config(dir2.path(), &[a.addr()], &[], &es.url());
    std::fs::write(
        &cfg2,
        std::fs::read_to_string(&cfg2)
            .unwrap()
            .replace("idx-pipe", "idx-other"),
    )
    .unwrap();
    let mut idx2 = start_indexer(&cfg2);
    idx2.wait_log(&["subscribed"], 10 * SEC).await;
    publish(a.port, "ping/127.0.0.1", &r, false).await;
    idx2.wait_log(&["documents written", "total=1"], 10 * SEC)
        .await;
    idx2.signal("TERM");
    assert_eq!(idx2.wait(20 * SEC).await.code(), Some(0));
    assert_eq!(
        es.docs(INDEX).len(),
        2,
        "the 409 on create de-duplicates across indexers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_an_outage_and_a_crash() {
    let a = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = es_config(dir.path(), &[a.addr()], &[], &es.url());
    let mut idx = start_indexer(&cfg);
    idx.wait_log(&["elasticsearch ready"], 10 * SEC).await;
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    es.set_down(true).await;
    publish_results(a.port, "ag", "127.0.0.1", 20).await;
    // On disk and acknowledged: the broker will not send them again.
    idx.wait_log(&["documents written", "total=20"], 10 * SEC)
        .await;
    // SIGTERM with Elasticsearch still down: a bounded drain, then the
    // rest stays in the spool.
    idx.signal("TERM");
    assert_eq!(idx.wait(30 * SEC).await.code(), Some(0));
    idx.wait_log(&["results kept in the spool", "pending=20"], SEC)
        .await;
    // Restart, still down, one more result, then a crash.
    let mut idx = start_indexer(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    let late = result_json("ag", "127.0.0.1", &ts(30));
    publish(a.port, "ping/127.0.0.1", &late, false).await;
    idx.wait_log(&["documents written", "total=1"], 10 * SEC)
        .await;
    idx.signal("KILL");
    idx.wait(5 * SEC).await;
    es.set_down(false).await;
    // A result that arrives while the indexer is down waits in the broker.
    let last = result_json("ag", "127.0.0.1", &ts(60));
    publish(a.port, "ping/127.0.0.1", &last, false).await;
    let mut idx = start_indexer(&cfg);
    es.wait_for_docs(22).await;
    assert_eq!(es.docs(INDEX).len(), 22);
    idx.signal("TERM");
    assert_eq!(idx.wait(20 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_documents_go_to_the_dead_letter_file() {
    let a = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    es.fail_items_where(400, |d| d["monitor"]["name"] == "bad.example");
    let dir = tempfile::tempdir().unwrap();
    let cfg = es_config(dir.path(), &[a.addr()], &[], &es.url());
    let mut idx = start_indexer(&cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    publish(
        a.port,
        "ping/bad.example",
        &result_json("ag", "bad.example", &ts(0)),
        false,
    )
    .await;
    publish(
        a.port,
        "ping/good.example",
        &result_json("ag", "good.example", &ts(0)),
        false,
    )
    .await;
    es.wait_for_docs(1).await;
    idx.signal("TERM");
    assert_eq!(idx.wait(20 * SEC).await.code(), Some(0));
    let docs = es.docs(INDEX);
    assert_eq!(docs.len(), 1);
    assert!(docs
        .values()
        .all(|d| d["monitor"]["name"] == "good.example"));
    let dead =
        std::fs::read_to_string(dir.path().join("dead-letter.ndjson")).expect("dead-letter file");
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["status"], 400);
    assert!(lines[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(lines[0]["document"]["monitor"]["name"], "bad.example");
    // Not retried forever: the daemon stopped cleanly with an empty spool.
    assert!(!idx
        .log
        .iter()
        .any(|l| l.contains("results kept in the spool")));
}

/// `create` items sent in every `_bulk` request so far.
fn bulk_items(es: &FakeEs) -> usize {
    es.bulk_requests()
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .filter(|l| l.starts_with("{\"create\""))
                .count()
        })
        .sum()
}

/// Starts an indexer with Elasticsearch down and has 10 results spooled
/// (acknowledged, waiting for Elasticsearch).
async fn spool_ten_while_es_is_down(a: &Mosquitto, es: &FakeEs, cfg: &Path) -> Daemon {
    es.set_down(true).await;
    let mut idx = start_indexer(cfg);
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    publish_results(a.port, "ag", "127.0.0.1", 10).await;
    idx.wait_log(&["documents written", "total=10"], 10 * SEC)
        .await;
    idx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_spool_commit_backs_off_and_never_resends_the_batch() {
    let a = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let fs = SmallFs::mount(1024 * 1024);
    let cfg = es_config(fs.path(), &[a.addr()], &[], &es.url());
    let mut idx = spool_ten_while_es_is_down(&a, &es, &cfg).await;
    // The disk fills up: the commit after delivery cannot be persisted.
    fs.fill(0);
    es.set_down(false).await;
    es.wait_for_docs(10).await;
    idx.wait_log(&["cannot commit the spool"], 10 * SEC).await;
    fs.free_up();
    let sentinel = result_json("ag", "127.0.0.1", &ts(30));
    publish(a.port, "ping/127.0.0.1", &sentinel, false).await;
    es.wait_for_docs(11).await;
    assert_eq!(bulk_items(&es), 11, "a stored batch was sent again");
    idx.signal("TERM");
    assert_eq!(idx.wait(20 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_read_error_is_retried_and_reported_not_the_end_of_the_drain() {
    let a = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = es_config(dir.path(), &[a.addr()], &[], &es.url());
    let mut idx = spool_ten_while_es_is_down(&a, &es, &cfg).await;
    // The segment becomes unreadable (gone from under the spool).
    let spool = dir.path().join("spool");
    let seg = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let aside = dir.path().join("aside");
    std::fs::rename(&seg, &aside).unwrap();
    es.set_down(false).await;
    idx.wait_log(&["cannot read the spool", "retrying"], 10 * SEC)
        .await;
    idx.wait_new_log(&["cannot read the spool", "retrying"], 10 * SEC)
        .await;
    // Back: the drain goes on.
    std::fs::rename(&aside, &seg).unwrap();
    es.wait_for_docs(10).await;
    idx.signal("TERM");
    assert_eq!(idx.wait(20 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_items_do_not_resend_the_template_and_policy() {
    let a = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = es_config(dir.path(), &[a.addr()], &[], &es.url());
    let mut idx = start_indexer(&cfg);
    idx.wait_log(&["elasticsearch ready"], 10 * SEC).await;
    let puts = es.template_puts();
    es.set_first_attempt_status(Some(503));
    publish_results(a.port, "ag", "127.0.0.1", 5).await;
    es.wait_for_docs(5).await;
    let sentinel = result_json("ag", "127.0.0.1", &ts(30));
    publish(a.port, "ping/127.0.0.1", &sentinel, false).await;
    es.wait_for_docs(6).await;
    assert_eq!(es.template_puts(), puts, "template sent again");
    idx.signal("TERM");
    assert_eq!(idx.wait(20 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_through_two_brokers_and_two_indexers_is_one_document() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c1 = es_config(d1.path(), &[a.addr(), b.addr()], &[], &es.url());
    let mut i1 = start_indexer(&c1);
    let c2 = indexer_config(
        d2.path(),
        "idx-other",
        &[a.addr(), b.addr()],
        &[],
        &format!(
            "elasticsearch: {{url: \"{}\", flush_interval: 100ms}}\n",
            es.url()
        ),
    );
    let mut i2 = start_indexer(&c2);
    for i in [&mut i1, &mut i2] {
        i.wait_log(&["subscribed", &a.addr()], 10 * SEC).await;
        i.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;
    }
    let notice = br#"{"agent":"ag","reason":"lost","since":"2026-12-01T10:00:00.000Z"}"#;
    publish(a.port, "rip/agent/ag", notice, false).await;
    publish(b.port, "rip/agent/ag", notice, false).await;
    // Received at different times by four sessions; stored once.
    let sentinel = result_json("ag", "127.0.0.1", &ts(0));
    publish(b.port, "ping/127.0.0.1", &sentinel, false).await;
    es.wait_for_docs(2).await;
    for i in [&mut i1, &mut i2] {
        i.signal("TERM");
        assert_eq!(i.wait(20 * SEC).await.code(), Some(0));
    }
    assert_eq!(es.doc_count(), 2, "{:#?}", es.docs(INDEX));
}
