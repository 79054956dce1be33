use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{EsAuth, EsSettings};

use super::bulk::item_outcome;
use super::client::{error_message, error_reason};
use super::server::parse_version;
use super::templates::pattern_matches;
use super::*;

fn info(d: Distribution, v: &str) -> ServerInfo {
    let (major, minor) = parse_version(v).unwrap();
    ServerInfo {
        distribution: d,
        version: v.into(),
        major,
        minor,
    }
}

#[test]
fn versions_are_told_apart_and_checked() {
    let es = |v: &str| json!({"version": {"number": v}, "tagline": "You Know, for Search"});
    let ok = ServerInfo::from_response(Some("Elasticsearch"), &es("8.15.1")).unwrap();
    assert_eq!(ok.distribution, Distribution::Elasticsearch);
    assert_eq!((ok.major, ok.minor), (8, 15));
    // 7.10 predates the product header.
    assert!(ServerInfo::from_response(None, &es("7.10.2")).is_ok());
    assert!(ServerInfo::from_response(None, &es("9.0.0-SNAPSHOT")).is_ok());
    for bad in ["7.9.3", "6.8.23", "10.0.0", "5.6.0"] {
        let e = ServerInfo::from_response(Some("Elasticsearch"), &es(bad)).unwrap_err();
        assert!(matches!(e, EsError::Unsupported(_)), "{bad}");
        assert!(e.to_string().contains(bad), "{e}");
        assert!(!e.is_retryable());
    }
    let os = |v: &str| {
        json!({"version": {"number": v, "distribution": "opensearch"},
               "tagline": "The OpenSearch Project: https://opensearch.org/"})
    };
    for v in ["1.3.19", "2.17.0", "3.0.0", "7.10.2"] {
        let i = ServerInfo::from_response(None, &os(v)).unwrap();
        assert_eq!(i.distribution, Distribution::OpenSearch, "{v}");
    }
    assert!(ServerInfo::from_response(None, &os("4.0.0")).is_err());
    assert!(ServerInfo::from_response(None, &json!({"name": "x"})).is_err());
    assert!(ServerInfo::from_response(None, &json!({"version": {"number": "8.1.0"}})).is_err());
}

#[test]
fn patterns() {
    assert!(pattern_matches("heartbeat-swarming*", "heartbeat-swarming"));
    assert!(pattern_matches(
        "heartbeat-*-swarming",
        "heartbeat-8-swarming"
    ));
    assert!(pattern_matches("a*b*c", "axxbyyc"));
    assert!(!pattern_matches("heartbeat-swarming*", "heartbeat-other"));
    assert!(pattern_matches("exact", "exact"));
    assert!(!pattern_matches("exact", "exactly"));
}

#[test]
fn template_follows_the_index_and_the_distribution() {
    let es = info(Distribution::Elasticsearch, "8.15.0");
    let t = index_template(&es, "heartbeat-swarming").unwrap();
    assert_eq!(t["index_patterns"].as_array().unwrap().len(), 2);
    assert_eq!(
        t["template"]["settings"]["index"]["lifecycle"]["name"],
        "swarming"
    );
    let t = index_template(&es, "heartbeat-custom").unwrap();
    assert_eq!(t["index_patterns"][2], "heartbeat-custom");
    let os = info(Distribution::OpenSearch, "2.17.0");
    let t = index_template(&os, "heartbeat-8-swarming").unwrap();
    assert!(t["template"]["settings"]["index"]
        .get("lifecycle")
        .is_none());
    assert_eq!(t["data_stream"], json!({}));
    let p = ism_policy("heartbeat-x").unwrap();
    assert!(p["policy"]["ism_template"][0]["index_patterns"]
        .as_array()
        .unwrap()
        .contains(&json!("heartbeat-x")));
}

#[test]
fn old_elasticsearch_gets_max_size() {
    let p = ilm_policy(&info(Distribution::Elasticsearch, "7.10.2")).unwrap();
    let r = &p["policy"]["phases"]["hot"]["actions"]["rollover"];
    assert_eq!(r["max_size"], "50gb");
    assert!(r.get("max_primary_shard_size").is_none());
    let p = ilm_policy(&info(Distribution::Elasticsearch, "8.0.0")).unwrap();
    assert_eq!(
        p["policy"]["phases"]["hot"]["actions"]["rollover"]["max_primary_shard_size"],
        "50gb"
    );
}

#[test]
fn item_statuses() {
    assert_eq!(
        item_outcome(201, String::new()),
        ItemOutcome::Done { duplicate: false }
    );
    assert_eq!(
        item_outcome(409, String::new()),
        ItemOutcome::Done { duplicate: true }
    );
    assert!(matches!(
        item_outcome(429, String::new()),
        ItemOutcome::Retry { .. }
    ));
    assert!(matches!(
        item_outcome(503, String::new()),
        ItemOutcome::Retry { .. }
    ));
    assert!(matches!(
        item_outcome(400, String::new()),
        ItemOutcome::Dead { status: 400, .. }
    ));
    assert!(matches!(
        item_outcome(404, String::new()),
        ItemOutcome::Dead { .. }
    ));
}

#[test]
fn backoff_doubles_with_jitter_and_caps() {
    let p = RetryPolicy::default();
    for attempt in 0..40 {
        let d = p.delay(attempt);
        let base = Duration::from_millis(500)
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(Duration::from_secs(64));
        assert!(d <= base && d >= base / 2, "{attempt}: {d:?}");
    }
    assert!(p.delay(100) <= Duration::from_secs(64));
}

#[test]
fn error_reasons_are_readable() {
    let e = json!({"type": "mapper_parsing_exception", "reason": "failed to parse",
                   "caused_by": {"type": "number_format_exception", "reason": "For input string"}});
    assert_eq!(
        error_reason(&e),
        "mapper_parsing_exception: failed to parse (caused by number_format_exception: For input string)"
    );
    assert_eq!(
        error_message(br#"{"error":{"type":"x","reason":"y"},"status":400}"#),
        "x: y"
    );
    assert_eq!(
        error_message(b"<html>bad gateway</html>"),
        "<html>bad gateway</html>"
    );
}

#[test]
fn dead_letter_lines_are_json() {
    let dir = std::env::temp_dir().join(format!("swarming-dl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dl = DeadLetter::in_state_dir(&dir).unwrap();
    let doc = BulkDoc::from_json("id1", "{\n \"a\": 1\n}").unwrap();
    dl.write(&doc, 400, "mapper_parsing_exception: \"bad\"\n")
        .unwrap();
    dl.write(&doc, 413, "too large").unwrap();
    assert_eq!(dl.count(), 2);
    let text = std::fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["document"], json!({"a": 1}));
    assert_eq!(lines[0]["status"], 400);
    assert_eq!(lines[0]["id"], "id1");
    assert_eq!(lines[0]["reason"], "mapper_parsing_exception: \"bad\"\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bulk_body_is_ndjson_with_create_actions() {
    let settings = EsSettings {
        url: "http://127.0.0.1:9".into(),
        auth: EsAuth::None,
        index: "heartbeat-8-swarming".into(),
        flavor: Default::default(),
        batch_size: 10,
        batch_bytes: 1 << 20,
        compression_level: 1,
        flush_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };
    let c = EsClient::new(&settings).unwrap();
    let body = c.bulk_body(&[
        BulkDoc::new("a", &json!({"x": 1})),
        BulkDoc::new("b", &json!({"y": "z\n"})),
    ]);
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        json!({"create": {"_index": "heartbeat-8-swarming", "_id": "a"}})
    );
    assert_eq!(lines[3], json!({"y": "z\n"}));
}

#[test]
fn bad_api_key_is_a_config_error() {
    let settings = EsSettings {
        url: "http://127.0.0.1:9".into(),
        auth: EsAuth::ApiKey("bad\nkey".into()),
        index: "heartbeat-8-swarming".into(),
        flavor: Default::default(),
        batch_size: 10,
        batch_bytes: 1 << 20,
        compression_level: 1,
        flush_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };
    let e = EsClient::new(&settings).unwrap_err();
    assert!(matches!(e, EsError::Config(_)));
    assert!(!e.to_string().contains("bad\nkey"));
}

#[test]
fn a_document_comes_back_from_its_spool_record_whole_and_bad_records_are_refused() {
    let doc = BulkDoc::new("0123abcd", &json!({"a": "x\ny", "b": [1, 2]}));
    assert_eq!(doc.id(), "0123abcd");
    assert_eq!(doc.source(), r#"{"a":"x\ny","b":[1,2]}"#);
    assert_eq!(
        doc.record(),
        br#"0123abcd
{"a":"x\ny","b":[1,2]}"#
    );
    let back = BulkDoc::from_spooled(doc.record().to_vec()).unwrap();
    assert_eq!(back, doc);
    for bad in [
        &b"no newline"[..],
        b"\n{\"a\":1}",
        b"i\"d\n{\"a\":1}",
        b"i\\d\n{\"a\":1}",
        b"id\n[1]",
        b"id\n{\"a\":1}\n{\"b\":2}",
        b"id\n{\"a\":\"\xff\"}",
    ] {
        assert!(BulkDoc::from_spooled(bad.to_vec()).is_none(), "{bad:?}");
    }
}

#[test]
fn intakes_one_pass_check_document_is_the_one_of_any_spelling() {
    use crate::document::{canonical_timestamp, CheckShaper};
    use crate::protocol::{PingResult, RttStats};
    let r = PingResult {
        agent: "a1".into(),
        labels: Default::default(),
        target: "t.example".into(),
        addr: None,
        timestamp: "2026-11-25T12:00:00.1239+00:00".into(),
        interval: 60.0,
        sent: 2,
        received: 1,
        rtt: RttStats::from_rtts(&[Some(1.0), None]),
        rtts: vec![Some(1.0), None],
        error: None,
    };
    let shaper = CheckShaper::default();
    let any = BulkDoc::from_judged_result(&r, &shaper, None).unwrap();
    let (start, canonical) = canonical_timestamp(&r.timestamp).unwrap();
    assert_eq!(canonical, "2026-11-25T12:00:00.123Z");
    let r = PingResult {
        timestamp: canonical,
        ..r
    };
    let once = BulkDoc::check(&r, start, &shaper, None).unwrap();
    assert_eq!(once, any);
    assert_eq!(once.id(), crate::document::doc_id(&r));
    let source: Value = serde_json::from_str(once.source()).unwrap();
    assert_eq!(source["@timestamp"], "2026-11-25T12:00:00.123Z");
    assert_eq!(source["monitor"]["check_group"], once.id());
}
