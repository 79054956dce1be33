//! The packaged Elasticsearch/Kibana files agree with each other and with
//! the documents we write: every field a document carries or a saved object
//! uses is mapped by the index template.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::Value;

use swarming::document::{result_document, rip_document};
use swarming::elasticsearch::{ILM_POLICY, INDEX_TEMPLATE, ISM_POLICY, POLICY_NAME};
use swarming::protocol::{PingResult, Rip, RipReason, RttStats};

const SAVED_OBJECTS: &str = include_str!("../packaging/kibana/swarming-saved-objects.ndjson");

fn template() -> Value {
    serde_json::from_str(INDEX_TEMPLATE).unwrap()
}

/// Leaf field path -> mapping type, from `properties`.
fn mapped_fields(props: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (name, m) in props.as_object().unwrap() {
        let path = format!("{prefix}{name}");
        if let Some(sub) = m.get("properties") {
            mapped_fields(sub, &format!("{path}."), out);
        } else {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("object");
            out.insert(path, ty.to_owned());
        }
    }
}

struct Mapping {
    fields: BTreeMap<String, String>,
    /// `path_match` patterns of dynamic templates (catch-alls excluded).
    dynamic: Vec<(String, String)>,
}

impl Mapping {
    fn load() -> Mapping {
        let t = template();
        let mut fields = BTreeMap::new();
        mapped_fields(&t["template"]["mappings"]["properties"], "", &mut fields);
        let dynamic = t["template"]["mappings"]["dynamic_templates"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d.as_object().unwrap().values())
            .filter_map(|d| {
                Some((
                    d.get("path_match")?.as_str()?.to_owned(),
                    d["mapping"]["type"].as_str()?.to_owned(),
                ))
            })
            .collect();
        Mapping { fields, dynamic }
    }

    /// The mapping type of `field`, if it is mapped.
    fn type_of(&self, field: &str) -> Option<&str> {
        if let Some(t) = self.fields.get(field) {
            if t != "object" {
                return Some(t);
            }
        }
        self.dynamic
            .iter()
            .find(|(p, _)| match p.strip_suffix('*') {
                Some(prefix) => field.starts_with(prefix) && field.len() > prefix.len(),
                None => p == field,
            })
            .map(|(_, t)| t.as_str())
    }
}

/// Leaf paths of a document with their values; stops at mapped leaf types
/// (e.g. `monitor.timespan` is a `date_range` object).
fn doc_fields<'a>(m: &Mapping, v: &'a Value, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(o)
            if prefix.is_empty() || m.type_of(prefix.trim_end_matches('.')).is_none() =>
        {
            for (k, v) in o {
                doc_fields(m, v, &format!("{prefix}{k}."), out);
            }
        }
        v => out.push((prefix.trim_end_matches('.').to_owned(), v)),
    }
}

fn fits(ty: &str, v: &Value) -> bool {
    let all = |f: &dyn Fn(&Value) -> bool| match v {
        Value::Array(a) => a.iter().all(f),
        v => f(v),
    };
    match ty {
        "long" => all(&|v| v.is_i64() || v.is_u64()),
        "float" | "scaled_float" => all(&Value::is_number),
        "keyword" | "text" => all(&Value::is_string),
        "date" => all(&|v| {
            v.as_str()
                .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
        }),
        "ip" => all(&|v| {
            v.as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
        }),
        "date_range" => v.get("gte").is_some() && v.get("lt").is_some(),
        _ => false,
    }
}

fn samples() -> Vec<Value> {
    let rtts = vec![Some(10.0), None, Some(12.5)];
    let up = PingResult {
        agent: "probe-paris-1".into(),
        labels: BTreeMap::from([
            ("provider".to_owned(), "ovh".to_owned()),
            ("location".to_owned(), "Paris".to_owned()),
        ]),
        target: "2001:db8::1".into(),
        addr: Some("2001:db8::1".parse().unwrap()),
        timestamp: "2026-11-25T12:00:00.000Z".into(),
        interval: 60.0,
        sent: 3,
        received: 2,
        rtt: RttStats::from_rtts(&rtts),
        rtts,
        error: None,
    };
    let down = PingResult {
        addr: None,
        sent: 0,
        received: 0,
        rtt: None,
        rtts: vec![],
        error: Some("name did not resolve".into()),
        target: "nowhere.example".into(),
        ..up.clone()
    };
    let rip = Rip {
        agent: "probe-paris-1".into(),
        reason: RipReason::Lost,
        since: Some("2026-11-25T12:00:00.000Z".into()),
    };
    vec![
        result_document(&up).unwrap(),
        result_document(&down).unwrap(),
        rip_document(&rip, SystemTime::now()),
    ]
}

#[test]
fn every_document_field_is_mapped_with_a_fitting_type() {
    let m = Mapping::load();
    let mut seen = BTreeSet::new();
    for doc in samples() {
        let mut fields = Vec::new();
        doc_fields(&m, &doc, "", &mut fields);
        for (field, value) in fields {
            let ty = m
                .type_of(&field)
                .unwrap_or_else(|| panic!("{field} is not mapped by the index template"));
            assert!(fits(ty, value), "{field}: {value} does not fit {ty}");
            seen.insert(field);
        }
    }
    for needed in [
        "@timestamp",
        "monitor.id",
        "monitor.status",
        "monitor.type",
        "monitor.duration.us",
        "monitor.timespan",
        "monitor.check_group",
        "monitor.ip",
        "summary.up",
        "summary.down",
        "observer.geo.name",
        "labels.provider",
        "ping.loss",
        "ping.rtts_ms",
        "error.message",
        "event.action",
    ] {
        assert!(seen.contains(needed), "samples never wrote {needed}");
    }
}

#[test]
fn template_is_a_data_stream_template_for_heartbeat_indices() {
    let t = template();
    assert_eq!(t["data_stream"], serde_json::json!({}));
    assert!(t["priority"].as_i64().unwrap() > 100);
    for p in t["index_patterns"].as_array().unwrap() {
        let p = p.as_str().unwrap();
        assert!(p.starts_with("heartbeat-") && p != "heartbeat-*", "{p}");
    }
    assert_eq!(
        t["template"]["settings"]["index"]["lifecycle"]["name"],
        POLICY_NAME
    );
    let m = Mapping::load();
    assert_eq!(m.fields["monitor.timespan"], "date_range");
    assert_eq!(m.fields["monitor.ip"], "ip");
    assert_eq!(m.fields["@timestamp"], "date");
    assert_eq!(m.type_of("labels.anything"), Some("keyword"));
    let ilm: Value = serde_json::from_str(ILM_POLICY).unwrap();
    assert!(ilm["policy"]["phases"]["delete"]["actions"]
        .get("delete")
        .is_some());
    let ism: Value = serde_json::from_str(ISM_POLICY).unwrap();
    assert_eq!(
        ism["policy"]["ism_template"][0]["index_patterns"],
        t["index_patterns"]
    );
}

/// Values of field-naming keys anywhere in `v`, looking inside attributes
/// that hold JSON text (`visState`, `panelsJSON`, `searchSourceJSON`).
fn referenced_fields(v: &Value, out: &mut BTreeSet<String>) {
    const KEYS: [&str; 6] = [
        "field",
        "terms_field",
        "time_field",
        "timeFieldName",
        "pivot_id",
        "sourceField",
    ];
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if KEYS.contains(&k.as_str()) {
                    match v {
                        Value::String(s) if !s.is_empty() => {
                            out.insert(s.clone());
                        }
                        Value::Array(a) => {
                            out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned))
                        }
                        _ => {}
                    }
                }
                match v {
                    Value::String(s) if k == "visState" || k.ends_with("JSON") => {
                        let inner: Value = serde_json::from_str(s)
                            .unwrap_or_else(|e| panic!("{k} does not parse ({e}): {s}"));
                        referenced_fields(&inner, out);
                    }
                    v => referenced_fields(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| referenced_fields(v, out)),
        _ => {}
    }
}

fn saved_objects() -> Vec<Value> {
    assert!(SAVED_OBJECTS.ends_with('\n'));
    SAVED_OBJECTS
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)))
        .collect()
}

#[test]
fn saved_objects_have_the_import_shape_and_consistent_references() {
    let objects = saved_objects();
    let mut ids = BTreeSet::new();
    for o in &objects {
        let ty = o["type"].as_str().unwrap();
        let id = o["id"].as_str().unwrap();
        assert!(o["attributes"]["title"].is_string(), "{id}: no title");
        assert!(o["references"].is_array(), "{id}: no references");
        assert!(ids.insert((ty.to_owned(), id.to_owned())), "{id} twice");
    }
    let views: Vec<&Value> = objects
        .iter()
        .filter(|o| o["type"] == "index-pattern")
        .collect();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["attributes"]["title"], "heartbeat-*");
    assert_eq!(views[0]["attributes"]["timeFieldName"], "@timestamp");
    let mut dashboards = 0;
    for o in &objects {
        for r in o["references"].as_array().unwrap() {
            let key = (
                r["type"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            );
            assert!(
                ids.contains(&key),
                "{}: dangling reference {key:?}",
                o["id"]
            );
        }
        if o["type"] == "dashboard" {
            dashboards += 1;
            let panels: Value =
                serde_json::from_str(o["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
            let names: BTreeSet<&str> = o["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap())
                .collect();
            for p in panels.as_array().unwrap() {
                let name = p["panelRefName"].as_str().unwrap();
                assert!(names.contains(name), "{}: {name} unresolved", o["id"]);
                let g = &p["gridData"];
                assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 48);
            }
        }
        if o["type"] == "visualization" {
            let vis: Value =
                serde_json::from_str(o["attributes"]["visState"].as_str().unwrap()).unwrap();
            if vis["type"] == "metrics" {
                assert_eq!(vis["params"]["index_pattern"], "heartbeat-*");
            }
        }
    }
    assert_eq!(dashboards, 3);
}

#[test]
fn every_field_the_saved_objects_use_is_mapped() {
    let m = Mapping::load();
    let mut fields = BTreeSet::new();
    for o in saved_objects() {
        referenced_fields(&o, &mut fields);
    }
    for needed in [
        "@timestamp",
        "ping.loss",
        "ping.rtt.avg_ms",
        "monitor.name",
        "observer.name",
        "labels.provider",
    ] {
        assert!(fields.contains(needed), "saved objects never use {needed}");
    }
    for f in &fields {
        assert!(
            m.type_of(f).is_some(),
            "{f} is used by Kibana but not mapped"
        );
    }
}
