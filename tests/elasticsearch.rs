//! `EsClient` against the fake Elasticsearch/OpenSearch server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use common::fake_es::{FakeEs, Flavor};
use swarming::config::{EsAuth, EsSettings};
use swarming::document::doc_id;
use swarming::elasticsearch::{
    BulkDoc, DeadLetter, DeliverReport, Distribution, EsClient, EsError, ItemOutcome, RetryPolicy,
    POLICY_NAME, TEMPLATE_NAME,
};
use swarming::protocol::{PingResult, RttStats};

const INDEX: &str = "heartbeat-8-swarming";

fn settings(url: &str, auth: EsAuth, timeout: Duration) -> EsSettings {
    EsSettings {
        url: url.to_owned(),
        auth,
        index: INDEX.into(),
        flavor: Default::default(),
        batch_size: 1000,
        batch_bytes: 5 << 20,
        compression_level: 1,
        flush_interval: Duration::from_secs(1),
        timeout,
    }
}

const FAST: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(1),
    max: Duration::from_millis(20),
};

fn client_with(fake: &FakeEs, auth: EsAuth, timeout: Duration) -> EsClient {
    EsClient::new(&settings(&fake.url(), auth, timeout))
        .unwrap()
        .with_retry_policy(FAST)
}

fn client(fake: &FakeEs) -> EsClient {
    client_with(fake, EsAuth::None, Duration::from_secs(5))
}

/// A client that has probed the server and installed the templates, so the
/// fake applies data stream rules and mappings.
async fn ready(fake: &FakeEs) -> EsClient {
    let c = client(fake);
    let info = c.probe().await.unwrap();
    c.install_templates(&info).await.unwrap();
    c
}

fn result(agent: &str, target: &str, minute: u32) -> PingResult {
    let rtts = vec![Some(10.0), None, Some(12.0)];
    PingResult {
        agent: agent.into(),
        labels: BTreeMap::from([("provider".to_owned(), "ovh".to_owned())]),
        target: target.into(),
        addr: Some("192.0.2.7".parse().unwrap()),
        timestamp: format!("2026-11-25T12:{minute:02}:00.000Z"),
        interval: 60.0,
        sent: 3,
        received: 2,
        rtt: RttStats::from_rtts(&rtts),
        rtts,
        error: None,
    }
}

fn docs(n: u32) -> Vec<BulkDoc> {
    (0..n)
        .map(|i| BulkDoc::from_result(&result("a1", &format!("t{i}.example"), i % 60)).unwrap())
        .collect()
}

struct Dl {
    _dir: tempfile::TempDir,
    dl: DeadLetter,
}

fn dead_letter() -> Dl {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::in_state_dir(dir.path()).unwrap();
    Dl { _dir: dir, dl }
}

fn dead_lines(d: &Dl) -> Vec<Value> {
    std::fs::read_to_string(d.dl.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Ids of the documents in a recorded bulk body.
fn bulk_ids(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    text.lines()
        .step_by(2)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["create"]["_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

async fn deliver(c: &EsClient, docs: Vec<BulkDoc>, d: &mut Dl) -> DeliverReport {
    c.deliver(docs, &mut d.dl, &CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn elasticsearch_and_opensearch_are_told_apart() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let info = client(&fake).probe().await.unwrap();
    assert_eq!(info.distribution, Distribution::Elasticsearch);
    assert_eq!((info.major, info.minor), (8, 15));
    assert!(info.has_ilm());

    fake.set_flavor(Flavor::Elasticsearch710);
    let info = client(&fake).probe().await.unwrap();
    assert_eq!(info.distribution, Distribution::Elasticsearch);
    assert_eq!(info.version, "7.10.2");

    fake.set_flavor(Flavor::OpenSearch2);
    let info = client(&fake).probe().await.unwrap();
    assert_eq!(info.distribution, Distribution::OpenSearch);
    assert_eq!(info.major, 2);
    assert!(!info.has_ilm());
}

#[tokio::test]
async fn unsupported_versions_are_refused_for_good() {
    let fake = FakeEs::start(Flavor::Elasticsearch6).await;
    let e = client(&fake).probe().await.unwrap_err();
    assert!(matches!(e, EsError::Unsupported(_)), "{e:?}");
    assert!(!e.is_retryable());
    let msg = e.to_string();
    assert!(msg.contains("6.8.23") && msg.contains("7.10"), "{msg}");
}

#[tokio::test]
async fn probe_failures_are_classified() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    fake.fail_next(1, 503);
    let e = client(&fake).probe().await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    fake.fail_next(1, 401);
    assert!(matches!(
        client(&fake).probe().await,
        Err(EsError::Auth { status: 401, .. })
    ));
    fake.set_down(true).await;
    let e = client(&fake).probe().await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn templates_install_idempotently_on_elasticsearch() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = client(&fake);
    let info = c.probe().await.unwrap();
    c.install_templates(&info).await.unwrap();
    let first = fake.templates();
    c.install_templates(&info).await.unwrap();
    assert_eq!(fake.template_puts(), 2);
    assert_eq!(fake.templates(), first);
    let t = &first[TEMPLATE_NAME];
    assert_eq!(t["data_stream"], json!({}));
    assert!(t["index_patterns"]
        .as_array()
        .unwrap()
        .contains(&json!("heartbeat-8-swarming*")));
    assert_eq!(
        t["template"]["settings"]["index"]["lifecycle"]["name"],
        POLICY_NAME
    );
    let ilm = fake.ilm_policies();
    assert_eq!(
        ilm[POLICY_NAME]["policy"]["phases"]["delete"]["min_age"],
        "90d"
    );
}

#[tokio::test]
async fn templates_install_on_opensearch_with_ism_and_without_ilm() {
    let fake = FakeEs::start(Flavor::OpenSearch2).await;
    let c = client(&fake);
    let info = c.probe().await.unwrap();
    c.install_templates(&info).await.unwrap();
    c.install_templates(&info).await.unwrap();
    let t = &fake.templates()[TEMPLATE_NAME];
    assert!(t["template"]["settings"]["index"]
        .get("lifecycle")
        .is_none());
    assert!(fake.ilm_policies().is_empty());
    let ism = fake.ism_policies();
    assert_eq!(ism.len(), 1);
    assert!(
        ism[POLICY_NAME]["policy"]["ism_template"][0]["index_patterns"]
            .as_array()
            .unwrap()
            .contains(&json!("heartbeat-8-swarming*"))
    );
    // Documents go in under OpenSearch as well.
    let mut d = dead_letter();
    let r = deliver(&c, docs(3), &mut d).await;
    assert_eq!(r.indexed, 3);
}

#[tokio::test]
async fn bulk_happy_path_uses_stable_ids_and_gzip_ndjson() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    let results: Vec<PingResult> = (0..20).map(|i| result("a1", "example.com", i)).collect();
    let batch: Vec<BulkDoc> = results
        .iter()
        .map(|r| BulkDoc::from_result(r).unwrap())
        .collect();
    let mut d = dead_letter();
    let report = deliver(&c, batch, &mut d).await;
    assert_eq!(
        report,
        DeliverReport {
            indexed: 20,
            ..DeliverReport::default()
        }
    );
    let stored = fake.docs(INDEX);
    assert_eq!(stored.len(), 20);
    for r in &results {
        let doc = &stored[&doc_id(r)];
        assert_eq!(doc["monitor"]["id"], "icmp-example.com");
        assert_eq!(doc["@timestamp"], r.timestamp.as_str());
    }
    let bulks = fake.bulk_requests();
    assert_eq!(bulks.len(), 1);
    let b = &bulks[0];
    assert_eq!(b.method, "POST");
    assert!(b.gzip, "bulk body not gzip-encoded");
    assert_eq!(b.header("content-encoding"), Some("gzip"));
    assert_eq!(b.header("content-type"), Some("application/x-ndjson"));
    assert!(b.wire_len < b.body.len(), "gzip did not shrink the body");
    assert!(b.body.ends_with(b"\n"));
    assert_eq!(d.dl.count(), 0);
}

#[tokio::test]
async fn bulk_bodies_follow_the_compression_level() {
    for level in [0, 9] {
        let fake = FakeEs::start(Flavor::Elasticsearch8).await;
        let s = EsSettings {
            compression_level: level,
            ..settings(&fake.url(), EsAuth::None, Duration::from_secs(5))
        };
        let c = EsClient::new(&s).unwrap().with_retry_policy(FAST);
        let info = c.probe().await.unwrap();
        c.install_templates(&info).await.unwrap();
        let batch: Vec<BulkDoc> = (0..20)
            .map(|i| BulkDoc::from_result(&result("a1", "example.com", i)).unwrap())
            .collect();
        let report = deliver(&c, batch, &mut dead_letter()).await;
        assert_eq!(report.indexed, 20, "level {level}");
        assert_eq!(fake.docs(INDEX).len(), 20);
        let bulks = fake.bulk_requests();
        let b = &bulks[0];
        if level == 0 {
            assert!(!b.gzip, "level 0 sent a gzip body");
            assert_eq!(b.header("content-encoding"), None);
            assert_eq!(b.wire_len, b.body.len());
        } else {
            assert!(b.gzip, "level {level} sent a plain body");
            assert_eq!(b.header("content-encoding"), Some("gzip"));
            assert!(b.wire_len < b.body.len());
        }
    }
}

#[tokio::test]
async fn the_same_result_twice_is_one_document() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    let r = result("a1", "example.com", 0);
    let one = BulkDoc::from_result(&r).unwrap();
    let mut d = dead_letter();
    // Twice in one batch (two brokers), then again later (another indexer).
    let report = deliver(&c, vec![one.clone(), one.clone()], &mut d).await;
    assert_eq!((report.indexed, report.duplicates), (1, 1));
    let report = deliver(&c, vec![one], &mut d).await;
    assert_eq!((report.indexed, report.duplicates), (0, 1));
    assert_eq!(report.retries, 0);
    assert_eq!(fake.docs(INDEX).len(), 1);
    assert_eq!(d.dl.count(), 0);
}

#[tokio::test]
async fn partial_failures_retry_only_the_failed_items() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    let all = docs(10);
    let mut d = dead_letter();
    deliver(&c, all[..4].to_vec(), &mut d).await;
    // From now on the first attempt of each id is refused with 429: the
    // four known ids are duplicates, the six new ones fail once.
    fake.set_first_attempt_status(Some(429));
    let before = fake.bulk_requests().len();
    let report = deliver(&c, all.clone(), &mut d).await;
    assert_eq!(report.duplicates, 4);
    assert_eq!(report.indexed, 6);
    assert_eq!(report.retries, 1);
    let bulks = fake.bulk_requests();
    assert_eq!(bulks.len(), before + 2);
    let retried = bulk_ids(&bulks[before + 1].body);
    let expected: Vec<String> = all[4..].iter().map(|d| d.id().to_owned()).collect();
    assert_eq!(retried, expected);
    assert_eq!(fake.docs(INDEX).len(), 10);
}

#[tokio::test]
async fn item_level_5xx_is_retried() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.set_first_attempt_status(Some(503));
    let mut d = dead_letter();
    let report = deliver(&c, docs(5), &mut d).await;
    assert_eq!((report.indexed, report.retries), (5, 1));
}

#[tokio::test]
async fn whole_request_429_and_5xx_are_retried() {
    for status in [429, 500, 502, 503] {
        let fake = FakeEs::start(Flavor::Elasticsearch8).await;
        let c = ready(&fake).await;
        fake.fail_next(3, status);
        let mut d = dead_letter();
        let report = deliver(&c, docs(7), &mut d).await;
        assert_eq!(report.indexed, 7, "HTTP {status}");
        assert_eq!(report.retries, 3, "HTTP {status}");
        assert_eq!(fake.docs(INDEX).len(), 7);
        // bulk() itself reports the failure as retryable.
        fake.fail_next(1, status);
        let e = c.bulk(&docs(1)).await.unwrap_err();
        assert!(
            matches!(e, EsError::Retryable(_)) && e.is_retryable(),
            "{e:?}"
        );
        assert!(e.to_string().contains(&status.to_string()), "{e}");
    }
}

#[tokio::test]
async fn too_large_requests_are_split_and_a_huge_document_is_dead() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    let mut batch = docs(16);
    let one_pair = batch[0].source().len() + 200;
    fake.set_max_body(Some(one_pair * 3));
    let mut huge = serde_json::from_str::<Value>(batch[5].source()).unwrap();
    huge["error"] = json!({ "message": "x".repeat(one_pair * 4) });
    batch[5] = BulkDoc::new("huge", &huge);
    let mut d = dead_letter();
    let report = deliver(&c, batch, &mut d).await;
    assert_eq!(report.indexed, 15);
    assert_eq!(report.dead, 1);
    assert_eq!(report.retries, 0);
    assert_eq!(fake.docs(INDEX).len(), 15);
    let lines = dead_lines(&d);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], 413);
    assert_eq!(lines[0]["id"], "huge");
    assert_eq!(lines[0]["document"], huge);
    // Every request the fake accepted fitted its limit.
    for b in fake.bulk_requests() {
        let ids = bulk_ids(&b.body);
        assert!(b.body.len() <= one_pair * 3 || ids.len() > 1 || ids == ["huge"]);
    }
}

#[tokio::test]
async fn auth_failures_surface_and_keep_the_data() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.require_authorization(Some("ApiKey c2VjcmV0"));
    let e = c.bulk(&docs(2)).await.unwrap_err();
    assert!(matches!(e, EsError::Auth { status: 401, .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("api_key"), "{e}");
    fake.fail_next(1, 403);
    let good = client_with(
        &fake,
        EsAuth::ApiKey("c2VjcmV0".into()),
        Duration::from_secs(5),
    );
    assert!(matches!(
        good.bulk(&docs(1)).await,
        Err(EsError::Auth { status: 403, .. })
    ));
    assert_eq!(fake.docs(INDEX).len(), 0);

    // deliver() keeps retrying through 401 until the operator fixes it.
    let cancel = CancellationToken::new();
    let task = {
        let c = c.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut d = dead_letter();
            let r = c.deliver(docs(4), &mut d.dl, &cancel).await;
            (r, d.dl.count())
        })
    };
    let seen = fake.request_count();
    fake.wait_for_requests(seen + 3).await;
    fake.require_authorization(None);
    let (report, dead) = task.await.unwrap();
    let report = report.unwrap();
    assert_eq!(report.indexed, 4);
    assert!(report.retries >= 3, "{report:?}");
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn basic_and_api_key_credentials_are_sent() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    fake.require_authorization(Some("Basic ZWxhc3RpYzpjaGFuZ2VtZQ=="));
    let basic = client_with(
        &fake,
        EsAuth::Basic {
            username: "elastic".into(),
            password: "changeme".into(),
        },
        Duration::from_secs(5),
    );
    basic.probe().await.unwrap();
    fake.require_authorization(Some("ApiKey aWQ6a2V5"));
    let key = client_with(
        &fake,
        EsAuth::ApiKey("aWQ6a2V5".into()),
        Duration::from_secs(5),
    );
    let info = key.probe().await.unwrap();
    key.install_templates(&info).await.unwrap();
    assert!(matches!(
        basic.probe().await,
        Err(EsError::Auth { status: 401, .. })
    ));
}

#[tokio::test]
async fn mapping_errors_are_dead_lettered_with_the_reason() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    let mut batch = docs(6);
    // A value that does not fit the template's `long` mapping.
    let mut bad_type = serde_json::from_str::<Value>(batch[1].source()).unwrap();
    bad_type["ping"]["sent"] = json!("lots");
    batch[1] = BulkDoc::new("bad-type", &bad_type);
    // No @timestamp: a data stream refuses it.
    batch[3] = BulkDoc::new("no-time", &json!({"monitor": {"id": "x"}}));
    // A failure the fake injects by predicate.
    fake.fail_items_where(400, |doc| doc["monitor"]["name"] == "t4.example");
    let mut d = dead_letter();
    let report = deliver(&c, batch.clone(), &mut d).await;
    assert_eq!(report.indexed, 3);
    assert_eq!(report.dead, 3);
    assert_eq!(report.retries, 0, "4xx items must not be retried");
    assert_eq!(d.dl.count(), 3);
    let lines = dead_lines(&d);
    let by_id: BTreeMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap(), l))
        .collect();
    let l = by_id["bad-type"];
    assert_eq!(l["status"], 400);
    let reason = l["reason"].as_str().unwrap();
    assert!(
        reason.contains("document_parsing_exception") && reason.contains("[ping.sent]"),
        "{reason}"
    );
    assert_eq!(l["document"], bad_type);
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    assert!(by_id["no-time"]["reason"]
        .as_str()
        .unwrap()
        .contains("@timestamp"));
    assert_eq!(
        by_id[batch[4].id()]["document"]["monitor"]["name"],
        "t4.example"
    );
}

#[tokio::test]
async fn slow_replies_within_the_timeout_are_fine() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.set_delay(Some(Duration::from_millis(300)));
    let mut d = dead_letter();
    let report = deliver(&c, docs(3), &mut d).await;
    assert_eq!((report.indexed, report.retries), (3, 0));
}

#[tokio::test]
async fn replies_slower_than_the_timeout_are_retried() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = client_with(&fake, EsAuth::None, Duration::from_millis(500));
    let info = c.probe().await.unwrap();
    c.install_templates(&info).await.unwrap();
    fake.set_delay(Some(Duration::from_secs(30)));
    let seen = fake.request_count();
    let task = tokio::spawn(async move {
        let mut d = dead_letter();
        c.deliver(docs(3), &mut d.dl, &CancellationToken::new())
            .await
    });
    fake.wait_for_requests(seen + 1).await;
    fake.set_delay(None);
    let report = task.await.unwrap().unwrap();
    // The slow request was processed by the server: the retry finds the
    // documents there already.
    assert_eq!(report.indexed + report.duplicates, 3);
    assert!(report.retries >= 1);
    assert_eq!(fake.docs(INDEX).len(), 3);
}

#[tokio::test]
async fn connection_resets_are_retried() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    let seen = fake.request_count();
    fake.reset_next(3);
    let mut d = dead_letter();
    let report = deliver(&c, docs(5), &mut d).await;
    assert_eq!(report.indexed, 5);
    assert!(report.retries >= 1, "{report:?}");
    assert!(fake.request_count() >= seen + 4);
}

#[tokio::test]
async fn a_wrong_item_count_is_an_error() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.set_drop_last_item(true);
    let e = c.bulk(&docs(3)).await.unwrap_err();
    assert!(matches!(e, EsError::Protocol(_)), "{e:?}");
    assert!(e.is_retryable());
    fake.set_drop_last_item(false);
    let out = c.bulk(&docs(3)).await.unwrap();
    // Stored by the broken answer already: duplicates now.
    assert_eq!(out, vec![ItemOutcome::Done { duplicate: true }; 3]);
}

#[tokio::test]
async fn cancel_during_an_outage_returns_cancelled() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.set_bulk_status(Some(503));
    let cancel = CancellationToken::new();
    let seen = fake.request_count();
    let task = {
        let (c, cancel) = (c.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut d = dead_letter();
            c.deliver(docs(4), &mut d.dl, &cancel).await
        })
    };
    fake.wait_for_requests(seen + 3).await;
    cancel.cancel();
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.pending, 4);
    assert!(e.partial.retries >= 2);
    assert_eq!(fake.docs(INDEX).len(), 0);
}

#[tokio::test]
async fn cancel_while_the_server_is_down() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.set_down(true).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut d = dead_letter();
    let e = c.deliver(docs(2), &mut d.dl, &cancel).await.unwrap_err();
    assert_eq!(e.pending, 2);
}

#[tokio::test]
async fn delivery_resumes_when_the_server_comes_back() {
    let fake = FakeEs::start(Flavor::Elasticsearch8).await;
    let c = ready(&fake).await;
    fake.set_down(true).await;
    let mut task = tokio::spawn(async move {
        let mut d = dead_letter();
        c.deliver(docs(6), &mut d.dl, &CancellationToken::new())
            .await
    });
    // Not done while down (a bounded check, not synchronisation).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut task)
            .await
            .is_err(),
        "delivered while the server was down"
    );
    fake.set_down(false).await;
    fake.wait_for_docs(6).await;
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.indexed, 6);
    assert!(report.retries >= 1);
}
