//! The indexer in each Kibana output mode, end to end: a real mosquitto,
//! the real indexer daemon and the in-repo Elasticsearch stand-in. What the
//! documents must contain is held field by field in
//! `tests/packaging_files.rs`; here: the mode chosen in `indexer.yaml`
//! reaches the documents, the data stream and the index template, and the
//! start-up note tells the truth for the server's Kibana line.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::fake_es::{FakeEs, Flavor};
use common::fixtures::{indexer_config, publish_results};
use common::mosquitto::Mosquitto;

const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const SEC: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetics_mode_writes_final_attempts_with_streaks_to_its_data_stream() {
    let broker = Mosquitto::start().await;
    // Elasticsearch 8.15: a Kibana whose Synthetics app does not list
    // monitors it does not manage, and whose Uptime is hidden by default.
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = indexer_config(
        dir.path(),
        "idx-synth",
        &[broker.addr()],
        &["127.0.0.1"],
        &format!(
            "elasticsearch: {{url: \"{}\", mode: synthetics, space_id: ops, flush_interval: 100ms, timeout: 5s}}\n",
            es.url()
        ),
    );
    let mut idx = Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[]);
    let warning = idx
        .wait_log(&["Synthetics app lists only monitors it manages"], 10 * SEC)
        .await;
    assert!(warning.contains("WARN"), "{warning}");
    idx.wait_log(&["elasticsearch ready"], 10 * SEC).await;
    let templates = es.templates();
    let t = &templates["swarming-synthetics"];
    assert_eq!(
        t["index_patterns"],
        serde_json::json!(["synthetics-icmp-swarming*"])
    );
    assert!(
        !templates.contains_key("swarming"),
        "{:?}",
        templates.keys()
    );

    publish_results(broker.port, "ag", "127.0.0.1", 3).await;
    es.wait_for_docs(3).await;
    let docs = es.docs("synthetics-icmp-swarming");
    assert_eq!(docs.len(), 3, "{docs:#?}");
    let mut by_time: Vec<_> = docs.values().collect();
    by_time.sort_by_key(|d| d["@timestamp"].as_str().unwrap().to_owned());
    for (i, d) in by_time.iter().enumerate() {
        assert_eq!(d["summary"]["final_attempt"], true);
        assert_eq!(d["summary"]["status"], "up");
        assert_eq!(d["meta"]["space_id"], "ops");
        assert_eq!(d["data_stream"]["namespace"], "swarming");
        assert_eq!(d["observer"]["geo"]["name"], "ag");
        assert!(d.get("config_id").is_none());
        // One up streak, started by the first round, one minute apart.
        assert_eq!(d["state"]["started_at"], by_time[0]["@timestamp"]);
        assert_eq!(d["state"]["checks"], i + 1);
        assert_eq!(d["state"]["duration_ms"], 60_000 * i);
    }
    idx.signal("TERM");
    idx.wait(15 * SEC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_change_waits_for_a_restart() {
    let broker = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::Elasticsearch8).await;
    let dir = tempfile::tempdir().unwrap();
    let es_yaml = |mode: &str| {
        format!(
            "elasticsearch: {{url: \"{}\", mode: {mode}, flush_interval: 100ms, timeout: 5s}}\n",
            es.url()
        )
    };
    let write = |mode: &str| {
        indexer_config(
            dir.path(),
            "idx-mode",
            &[broker.addr()],
            &["127.0.0.1"],
            &es_yaml(mode),
        )
    };
    let cfg = write("uptime");
    let mut idx = Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[]);
    idx.wait_log(&["elasticsearch ready"], 10 * SEC).await;
    write("synthetics");
    idx.signal("HUP");
    idx.wait_log(
        &["take effect at the next restart", "elasticsearch.mode"],
        5 * SEC,
    )
    .await;
    // Still Uptime documents, in the Uptime data stream.
    publish_results(broker.port, "ag", "127.0.0.1", 2).await;
    es.wait_for_docs(2).await;
    let docs = es.docs("heartbeat-8-swarming");
    assert_eq!(docs.len(), 2, "{docs:#?}");
    assert!(docs.values().all(|d| d.get("meta").is_none()));
    assert!(es.docs("synthetics-icmp-swarming").is_empty());
    idx.signal("TERM");
    idx.wait(15 * SEC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_kibana_notes_on_opensearch() {
    let broker = Mosquitto::start().await;
    let es = FakeEs::start(Flavor::OpenSearch2).await;
    let dir = tempfile::tempdir().unwrap();
    // A name Kibana 8.10's Uptime would not read; OpenSearch 2.x is no
    // Kibana line, and OpenSearch Dashboards has no Uptime app.
    let cfg = indexer_config(
        dir.path(),
        "idx-os",
        &[broker.addr()],
        &["127.0.0.1"],
        &format!(
            "elasticsearch: {{url: \"{}\", index: heartbeat-swarming, timeout: 5s}}\n",
            es.url()
        ),
    );
    let mut idx = Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[]);
    idx.wait_log(&["elasticsearch ready"], 10 * SEC).await;
    assert!(
        !idx.log.iter().any(|l| l.contains("Kibana")),
        "{}",
        idx.log.join("\n")
    );
    idx.signal("TERM");
    idx.wait(15 * SEC).await;
}
