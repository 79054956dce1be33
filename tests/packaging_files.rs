//! The packaged Elasticsearch/Kibana files agree with each other, with the
//! documents we write and with what Kibana reads: every field a document
//! carries or a saved object uses is mapped by the index template; the
//! fields Kibana's Uptime and Synthetics apps query
//! (`packaging/kibana/contracts/fields.json`) are written and mapped with
//! the type the queries need; the saved objects have the shape of Kibana's
//! own (`packaging/kibana/contracts/saved-object-shapes.json`) and are the
//! generator's output; the dashboards answer the two questions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::Value;

use swarming::document::{rip_document, CheckShaper, Flavor};
use swarming::elasticsearch::{
    index_template, BulkDoc, Distribution, ServerInfo, ILM_POLICY, INDEX_TEMPLATE, ISM_POLICY,
    POLICY_NAME,
};
use swarming::protocol::{PingResult, Rip, RipReason, RttStats};

const SAVED_OBJECTS: &str = include_str!("../packaging/kibana/swarming-saved-objects.ndjson");
const FIELD_CONTRACT: &str = include_str!("../packaging/kibana/contracts/fields.json");
const SHAPE_CONTRACT: &str = include_str!("../packaging/kibana/contracts/saved-object-shapes.json");

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
            // Multi-fields (`monitor.id.text`): indexed from the parent's value.
            for (sub, sm) in m
                .get("fields")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let sub_ty = sm["type"].as_str().unwrap_or("object");
                out.insert(format!("{path}.{sub}"), sub_ty.to_owned());
            }
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
        "integer" => all(&|v| v.as_i64().is_some_and(|n| i32::try_from(n).is_ok())),
        "float" | "scaled_float" => all(&Value::is_number),
        "keyword" | "text" => all(&Value::is_string),
        "boolean" => all(&Value::is_boolean),
        "short" => all(&|v| v.as_i64().is_some_and(|n| i16::try_from(n).is_ok())),
        "geo_point" => all(&|v| {
            let lat = v["lat"].as_f64();
            let lon = v["lon"].as_f64();
            lat.is_some_and(|x| x.abs() <= 90.0) && lon.is_some_and(|x| x.abs() <= 180.0)
        }),
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

fn synthetics() -> Flavor {
    Flavor::Synthetics {
        namespace: "swarming".into(),
        space_id: "default".into(),
    }
}

/// Check documents exactly as the indexer writes them in `flavor`
/// (`BulkDoc::from_result_as`, the intake's call): an up round, a down one
/// (name did not resolve), and the same agent again a round later.
fn check_documents(flavor: Flavor) -> Vec<Value> {
    judged_check_documents(flavor, None)
}

/// [`check_documents`] with how each round was judged.
fn judged_check_documents(
    flavor: Flavor,
    judged: Option<&swarming::insight::verdict::Classified>,
) -> Vec<Value> {
    let shaper = CheckShaper::new(flavor);
    let rtts = vec![Some(10.0), None, Some(12.5)];
    let up = PingResult {
        agent: "probe-paris-1".into(),
        labels: BTreeMap::from([
            ("provider".to_owned(), "ovh".to_owned()),
            ("location".to_owned(), "Paris".to_owned()),
            ("geo".to_owned(), "48.85,2.35".to_owned()),
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
    let later = PingResult {
        timestamp: "2026-11-25T12:01:00.000Z".into(),
        ..down.clone()
    };
    [up, down, later]
        .iter()
        .map(|r| {
            let doc = BulkDoc::from_judged_result(r, &shaper, judged).unwrap();
            serde_json::from_str(doc.source()).unwrap()
        })
        .collect()
}

fn samples() -> Vec<Value> {
    let rip = Rip {
        agent: "probe-paris-1".into(),
        reason: RipReason::Lost,
        since: Some("2026-11-25T12:00:00.000Z".into()),
        instance: Some("0123456789abcdef".into()),
        ..Rip::default()
    };
    let online = Rip {
        reason: RipReason::Online,
        broker: Some("mqtt1.example.net:8883".into()),
        watch_version: Some("4f2a9c0d1e2b".into()),
        ..rip.clone()
    };
    let mut docs = check_documents(Flavor::Uptime);
    docs.extend(check_documents(synthetics()));
    docs.push(rip_document(&rip, SystemTime::now(), false));
    docs.push(rip_document(&rip, SystemTime::now(), true));
    docs.push(rip_document(&online, SystemTime::now(), false));
    docs
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
        "observer.geo.location",
        "summary.final_attempt",
        "state.started_at",
        "meta.space_id",
        "labels.provider",
        "ping.loss",
        "ping.rtts_ms",
        "error.message",
        "event.action",
    ] {
        assert!(seen.contains(needed), "samples never wrote {needed}");
    }
}

/// State-change ("verdict") documents and the verdict fields of check
/// documents, as the indexer writes them (event.dataset `swarming.verdict`:
/// the state that begins at `verdict.since`, and the one it ends under
/// `verdict.previous`).
fn verdict_samples() -> Vec<Value> {
    use swarming::document::{verdict_doc, Previous, VerdictChange};
    use swarming::insight::verdict::Classified;
    use swarming::protocol::{
        AgentState, AgentVerdict, Cause, RoundState, TargetState, TargetVerdict,
    };
    let down = TargetVerdict {
        target: "10.9.0.1".into(),
        state: TargetState::Down,
        cause: Cause::Target,
        agents_bad: 4,
        agents_total: 4,
        providers_bad: 2,
        since: "2026-12-03T19:00:01.000Z".into(),
        provider: None,
    };
    let lossy = TargetVerdict {
        target: "10.9.0.2".into(),
        state: TargetState::Lossy,
        cause: Cause::Provider,
        agents_bad: 2,
        providers_bad: 1,
        provider: Some("p1".into()),
        ..down.clone()
    };
    let trouble = AgentVerdict {
        agent: "probe-paris-1".into(),
        state: AgentState::Trouble,
        since: "2026-12-03T19:05:00.000Z".into(),
        reason: "most of its targets look bad to it only".into(),
    };
    let was = |state: &str, cause: Option<&str>| {
        Some(Previous {
            state: state.into(),
            cause: cause.map(Into::into),
            since: "2026-12-03T18:00:00.000Z".into(),
        })
    };
    let check = judged_check_documents(
        Flavor::Uptime,
        Some(&Classified {
            state: RoundState::Slow,
            slow_ms: 40.0,
            lossy: 0.2,
            baseline_ms: Some(12.5),
        }),
    )
    .remove(0);
    vec![
        // A target goes down: the start of an incident.
        verdict_doc(&VerdictChange::Target(&down), was("up", Some("none"))).1,
        // One provider's agents see a target lossy.
        verdict_doc(&VerdictChange::Target(&lossy), None).1,
        // An agent verdict: no cause or counts, a reason and the agent.
        verdict_doc(&VerdictChange::Agent(&trouble), was("ok", None)).1,
        // The judgement a check document gains.
        check,
    ]
}

#[test]
fn verdict_documents_and_check_verdict_fields_are_mapped() {
    let m = Mapping::load();
    for doc in verdict_samples() {
        let mut fields = Vec::new();
        doc_fields(&m, &doc, "", &mut fields);
        for (field, value) in fields {
            let ty = m
                .type_of(&field)
                .unwrap_or_else(|| panic!("{field} is not mapped by the index template"));
            assert!(fits(ty, value), "{field}: {value} does not fit {ty}");
        }
    }
    // Explicitly, not through the catch-all dynamic template.
    for (field, ty) in [
        ("ping.state", "keyword"),
        ("ping.levels.slow_ms", "float"),
        ("ping.levels.lossy", "float"),
        ("ping.levels.baseline_ms", "float"),
        ("verdict.kind", "keyword"),
        ("verdict.subject", "keyword"),
        ("verdict.state", "keyword"),
        ("verdict.cause", "keyword"),
        ("verdict.provider", "keyword"),
        ("verdict.reason", "keyword"),
        ("verdict.since", "date"),
        ("verdict.agents_bad", "integer"),
        ("verdict.agents_total", "integer"),
        ("verdict.providers_bad", "integer"),
        ("verdict.previous.state", "keyword"),
        ("verdict.previous.cause", "keyword"),
        ("verdict.previous.since", "date"),
        ("message", "text"),
    ] {
        assert_eq!(m.fields.get(field).map(String::as_str), Some(ty), "{field}");
    }
}

#[test]
fn the_opensearch_template_is_the_same_mapping() {
    let os = ServerInfo::from_response(
        None,
        &serde_json::json!({"version": {"number": "2.19.0", "distribution": "opensearch"}}),
    )
    .unwrap();
    assert_eq!(os.distribution, Distribution::OpenSearch);
    let t = index_template(&os, "heartbeat-8-swarming").unwrap();
    assert_eq!(
        t["template"]["mappings"],
        template()["template"]["mappings"]
    );
    // No ILM on OpenSearch: its ISM policy matches the same patterns.
    assert!(t["template"]["settings"]["index"]
        .get("lifecycle")
        .is_none());
    assert_eq!(t["index_patterns"], template()["index_patterns"]);
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

#[test]
fn the_synthetics_template_is_the_same_mapping_for_its_data_stream_only() {
    let es = ServerInfo::from_response(
        Some("Elasticsearch"),
        &serde_json::json!({"version": {"number": "8.15.0"}}),
    )
    .unwrap();
    assert_eq!(es.distribution, Distribution::Elasticsearch);
    let s = index_template(&es, "synthetics-icmp-swarming").unwrap();
    assert_eq!(
        s["index_patterns"],
        serde_json::json!(["synthetics-icmp-swarming*"])
    );
    // Above Fleet's synthetics-icmp-* package template (200, dynamic: false).
    assert!(s["priority"].as_u64().unwrap() > 200);
    assert_eq!(
        s["template"]["mappings"],
        template()["template"]["mappings"]
    );
    let u = index_template(&es, "heartbeat-8-swarming").unwrap();
    assert_eq!(u["index_patterns"], template()["index_patterns"]);
}

/// One field Kibana queries, from `contracts/fields.json`.
struct Contract {
    field: String,
    ty: String,
    apps: Vec<String>,
    present: bool,
    analyzer: Option<String>,
}

fn contracts() -> Vec<Contract> {
    let c: Value = serde_json::from_str(FIELD_CONTRACT).unwrap();
    c["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(
                f["source"].as_str().is_some_and(|s| !s.is_empty()),
                "{f}: no source"
            );
            Contract {
                field: f["field"].as_str().unwrap().to_owned(),
                ty: f["type"].as_str().unwrap().to_owned(),
                apps: f["apps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                present: f.get("present").and_then(Value::as_bool).unwrap_or(true),
                analyzer: f.get("analyzer").and_then(Value::as_str).map(str::to_owned),
            }
        })
        .collect()
}

/// The mapping of `field` in the template (`properties`/`fields` walk).
fn mapping_of(field: &str) -> Option<Value> {
    let t = template();
    let mut cur = &t["template"]["mappings"];
    let parts: Vec<&str> = field.split('.').collect();
    let mut i = 0;
    while i < parts.len() {
        if let Some(next) = cur.get("properties").and_then(|p| p.get(parts[i])) {
            cur = next;
        } else if let Some(next) = cur.get("fields").and_then(|p| p.get(parts[i])) {
            cur = next;
        } else {
            return None;
        }
        i += 1;
    }
    Some(cur.clone())
}

/// Whether `doc` has a value at `path` (a multi-field's parent counts: the
/// sub-field is indexed from it).
fn has_value(doc: &Value, path: &str, m: &Mapping) -> bool {
    let get = |p: &str| {
        p.split('.')
            .try_fold(doc, |v, k| v.get(k))
            .is_some_and(|v| !v.is_null())
    };
    if get(path) {
        return true;
    }
    match path.rsplit_once('.') {
        Some((parent, _)) if m.fields.contains_key(path) && m.fields.contains_key(parent) => {
            get(parent)
        }
        _ => false,
    }
}

#[test]
fn documents_carry_every_field_uptime_and_synthetics_query_with_its_type() {
    let m = Mapping::load();
    let docs = [
        ("uptime", check_documents(Flavor::Uptime)),
        ("synthetics", check_documents(synthetics())),
    ];
    let all = contracts();
    assert!(all.len() >= 20, "contract list lost entries");
    for c in &all {
        let mapped = m.fields.get(&c.field).map(String::as_str);
        if c.present {
            assert_eq!(
                mapped,
                Some(c.ty.as_str()),
                "{}: Kibana needs {}",
                c.field,
                c.ty
            );
        }
        if let Some(analyzer) = &c.analyzer {
            assert_eq!(
                mapping_of(&c.field).unwrap()["analyzer"],
                analyzer.as_str(),
                "{}: Heartbeat's analyzer",
                c.field
            );
        }
        for (app, docs) in &docs {
            let carried = docs.iter().any(|d| has_value(d, &c.field, &m));
            if !c.present {
                assert!(!carried, "{app} documents must not carry {}", c.field);
            } else if c.apps.iter().any(|a| a == app) {
                assert!(carried, "{app} documents never carry {}", c.field);
            }
        }
    }
    // The values the queries match on.
    let (_, synth) = &docs[1];
    assert!(synth.iter().all(|d| d["summary"]["final_attempt"] == true));
    assert!(synth.iter().all(|d| d["meta"]["space_id"] == "default"));
    assert_eq!(synth[2]["state"]["status"], "down");
    assert_eq!(synth[2]["state"]["duration_ms"], 60_000);
    for (_, docs) in &docs {
        // One Uptime location per agent, whatever its location label says.
        assert!(docs
            .iter()
            .all(|d| d["observer"]["geo"]["name"] == d["observer"]["name"]));
        assert_eq!(
            docs[0]["observer"]["geo"]["location"],
            serde_json::json!({"lat": 48.85, "lon": 2.35})
        );
        assert!(docs.iter().all(|d| d["monitor"]["type"] == "icmp"));
    }
}

/// Values of field-naming keys anywhere in `v`, looking inside attributes
/// that hold JSON text (`visState`, `panelsJSON`, `searchSourceJSON`); a
/// saved search's `columns` and `sort` (`[[field, direction], ...]`) too.
fn referenced_fields(v: &Value, out: &mut BTreeSet<String>) {
    const KEYS: [&str; 7] = [
        "field",
        "terms_field",
        "time_field",
        "timeFieldName",
        "pivot_id",
        "sourceField",
        "columns",
    ];
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if k == "sort" {
                    for pair in v.as_array().into_iter().flatten() {
                        out.extend(pair[0].as_str().map(str::to_owned));
                    }
                }
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
                        referenced_fields(&inner(k, s), out);
                    }
                    v => referenced_fields(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| referenced_fields(v, out)),
        _ => {}
    }
}

/// A JSON-in-a-string attribute, parsed.
fn inner(key: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{key} does not parse ({e}): {text}"))
}

fn saved_objects() -> Vec<Value> {
    assert!(SAVED_OBJECTS.ends_with('\n'));
    SAVED_OBJECTS
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)))
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn saved_objects_have_the_shape_of_kibanas_own_for_8_8_and_9() {
    let shape: Value = serde_json::from_str(SHAPE_CONTRACT).unwrap();
    let objects = saved_objects();
    let mut ids = BTreeSet::new();
    for o in &objects {
        let ty = o["type"].as_str().unwrap();
        let id = o["id"].as_str().unwrap();
        assert!(ids.insert((ty.to_owned(), id.to_owned())), "{id} twice");
        let want = &shape["types"][ty];
        assert!(want.is_object(), "{id}: type {ty} has no reference shape");
        // Version stamps of the line, and nothing else at the top level
        // (no pre-8.8 migrationVersion).
        assert_eq!(keys(o), strings(&shape["top_level_keys"]), "{id}");
        assert_eq!(
            o["coreMigrationVersion"], shape["coreMigrationVersion"],
            "{id}"
        );
        assert_eq!(
            o["typeMigrationVersion"], want["typeMigrationVersion"],
            "{id}"
        );
        assert_eq!(o["managed"], false, "{id}");
        for a in strings(&want["attributes"]) {
            assert!(o["attributes"].get(&a).is_some(), "{id}: no attributes.{a}");
        }
    }
    let resolves = |o: &Value, name: &str, ty: &str| {
        o["references"].as_array().unwrap().iter().any(|r| {
            r["name"] == name
                && r["type"] == ty
                && ids.contains(&(ty.to_owned(), r["id"].as_str().unwrap().to_owned()))
        })
    };
    let (mut tsvb, mut tables, mut searches, mut dashboards) = (0, 0, 0, 0);
    for o in &objects {
        let id = &o["id"];
        for r in o["references"].as_array().unwrap() {
            let key = (
                r["type"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            );
            assert!(ids.contains(&key), "{id}: dangling reference {key:?}");
        }
        match o["type"].as_str().unwrap() {
            "visualization" => {
                let vis = inner("visState", o["attributes"]["visState"].as_str().unwrap());
                let source = inner(
                    "searchSourceJSON",
                    o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
                        .as_str()
                        .unwrap(),
                );
                if vis["type"] == "metrics" {
                    // TSVB on a data view, by reference: no plain index string.
                    tsvb += 1;
                    let p = &vis["params"];
                    assert_eq!(p["use_kibana_indexes"], true, "{id}");
                    assert!(p.get("index_pattern").is_none(), "{id}: plain index");
                    let name = p["index_pattern_ref_name"].as_str().unwrap();
                    assert!(resolves(o, name, "index-pattern"), "{id}: {name}");
                    for s in p["series"].as_array().unwrap() {
                        assert_ne!(s["override_index_pattern"], 1, "{id}");
                    }
                } else {
                    tables += 1;
                    let name = source["indexRefName"].as_str().unwrap();
                    assert!(resolves(o, name, "index-pattern"), "{id}: {name}");
                    assert!(source.get("index").is_none(), "{id}: inline data view");
                }
            }
            "search" => {
                // A saved search on the data view, by reference, as the
                // ecommerce sample's: columns, a [field, direction] sort.
                searches += 1;
                let want = &shape["types"]["search"];
                let a = &o["attributes"];
                let source = inner(
                    "searchSourceJSON",
                    a["kibanaSavedObjectMeta"]["searchSourceJSON"]
                        .as_str()
                        .unwrap(),
                );
                assert_eq!(
                    keys(&source),
                    strings(&want["searchSourceJSON_keys"]),
                    "{id}"
                );
                let name = source["indexRefName"].as_str().unwrap();
                assert!(resolves(o, name, "index-pattern"), "{id}: {name}");
                assert_eq!(source["query"]["language"], "kuery", "{id}");
                assert!(!a["columns"].as_array().unwrap().is_empty(), "{id}");
                assert!(a["columns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(Value::is_string));
                for pair in a["sort"].as_array().unwrap() {
                    let pair = pair.as_array().unwrap();
                    assert_eq!(pair.len(), 2, "{id}: sort {pair:?}");
                    assert!(pair[0].is_string(), "{id}");
                    assert!(pair[1] == "asc" || pair[1] == "desc", "{id}");
                }
            }
            "dashboard" => {
                dashboards += 1;
                let want = &shape["types"]["dashboard"];
                let panels = inner(
                    "panelsJSON",
                    o["attributes"]["panelsJSON"].as_str().unwrap(),
                );
                for p in panels.as_array().unwrap() {
                    assert_eq!(keys(p), strings(&want["panel_keys"]), "{id}");
                    assert_eq!(p["version"], want["panel_version"], "{id}");
                    let i = p["panelIndex"].as_str().unwrap();
                    assert_eq!(p["gridData"]["i"], i, "{id}");
                    assert_eq!(p["panelRefName"], format!("panel_{i}"), "{id}");
                    let ty = p["type"].as_str().unwrap();
                    assert!(strings(&want["panel_types"]).contains(ty), "{id}: {ty}");
                    assert!(
                        resolves(o, &format!("{i}:panel_{i}"), ty),
                        "{id}: panel {i}"
                    );
                    let g = &p["gridData"];
                    assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 48);
                }
            }
            "index-pattern" => {
                assert_eq!(o["attributes"]["timeFieldName"], "@timestamp");
                let patterns: Vec<&str> = o["attributes"]["title"]
                    .as_str()
                    .unwrap()
                    .split(',')
                    .collect();
                // Both output modes' data streams.
                assert!(patterns.contains(&"heartbeat-*"), "{patterns:?}");
                assert!(patterns.contains(&"synthetics-icmp-*"), "{patterns:?}");
            }
            other => panic!("{id}: unexpected type {other}"),
        }
    }
    assert!(tsvb > 0 && tables > 0 && searches > 0 && dashboards == 2);
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
        "ping.rtts_ms",
        "monitor.name",
        "observer.name",
        "labels.provider",
        "verdict.subject",
        "verdict.state",
        "verdict.since",
        "verdict.previous.since",
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

/// What one visualization shows: its split fields and its (metric, field)
/// pairs (`percentiles` for TSVB `percentile` too).
#[derive(Debug, Default)]
struct Shows {
    splits: BTreeSet<String>,
    metrics: BTreeSet<(String, String)>,
}

fn shows(vis: &Value) -> Shows {
    let vis = inner("visState", vis["attributes"]["visState"].as_str().unwrap());
    let mut s = Shows::default();
    let mut metric = |ty: &str, field: &Value| {
        let ty = if ty == "percentile" {
            "percentiles"
        } else {
            ty
        };
        s.metrics
            .insert((ty.to_owned(), field.as_str().unwrap_or("").to_owned()));
    };
    if vis["type"] == "metrics" {
        for series in vis["params"]["series"].as_array().unwrap() {
            s.splits
                .insert(series["terms_field"].as_str().unwrap().to_owned());
            for m in series["metrics"].as_array().unwrap() {
                metric(m["type"].as_str().unwrap(), &m["field"]);
            }
        }
    } else {
        for a in vis["aggs"].as_array().unwrap() {
            if a["schema"] == "bucket" {
                s.splits
                    .insert(a["params"]["field"].as_str().unwrap().to_owned());
            } else {
                metric(a["type"].as_str().unwrap(), &a["params"]["field"]);
            }
        }
    }
    s
}

/// The objects dashboard `id` shows (its references), of type `ty`.
fn dashboard_objects<'a>(objects: &'a [Value], id: &str, ty: &str) -> Vec<&'a Value> {
    let d = objects
        .iter()
        .find(|o| o["type"] == "dashboard" && o["id"] == id)
        .unwrap_or_else(|| panic!("no dashboard {id}"));
    d["references"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == ty)
        .map(|r| {
            objects
                .iter()
                .find(|o| o["type"] == r["type"] && o["id"] == r["id"])
                .unwrap()
        })
        .collect()
}

/// The visualizations of dashboard `id`.
fn dashboard_panels(objects: &[Value], id: &str) -> Vec<Shows> {
    let d = objects
        .iter()
        .find(|o| o["type"] == "dashboard" && o["id"] == id)
        .unwrap_or_else(|| panic!("no dashboard {id}"));
    d["references"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "visualization")
        .map(|r| {
            objects
                .iter()
                .find(|o| o["type"] == r["type"] && o["id"] == r["id"])
                .map(shows)
                .unwrap()
        })
        .collect()
}

fn any_panel(panels: &[Shows], splits: &[&str], metric: (&str, &str)) -> bool {
    panels.iter().any(|p| {
        splits.iter().all(|s| p.splits.contains(*s))
            && p.metrics
                .contains(&(metric.0.to_owned(), metric.1.to_owned()))
    })
}

#[test]
fn dashboards_compare_targets_and_compare_agents_and_providers() {
    let objects = saved_objects();
    let loss = ("avg", "ping.loss");
    let rtt = ("percentiles", "ping.rtts_ms");
    // Compare targets: loss and rtt percentiles per target, over time and
    // in a table, and each target per agent.
    let t = dashboard_panels(&objects, "swarming-compare-targets");
    for m in [loss, rtt] {
        assert!(any_panel(&t, &["monitor.name"], m), "targets: {m:?}");
        assert!(
            any_panel(&t, &["monitor.name", "observer.name"], m),
            "targets per agent: {m:?}"
        );
    }
    // Compare agents and providers: the same target from each agent and
    // provider, and each agent and provider over time.
    let a = dashboard_panels(&objects, "swarming-compare-agents");
    for m in [loss, rtt] {
        assert!(
            any_panel(&a, &["monitor.name", "observer.name", "labels.provider"], m),
            "same target per agent: {m:?}"
        );
        assert!(any_panel(&a, &["observer.name"], m), "per agent: {m:?}");
        assert!(
            any_panel(&a, &["labels.provider"], m),
            "per provider: {m:?}"
        );
    }
}

#[test]
fn both_dashboards_list_incidents() {
    // The state-change documents, newest first, with what an incident
    // needs: its start (verdict.previous.since on the document that ends
    // it, verdict.since on the one that begins it) and its end.
    let objects = saved_objects();
    for id in ["swarming-compare-targets", "swarming-compare-agents"] {
        let searches = dashboard_objects(&objects, id, "search");
        let incidents = searches
            .iter()
            .find(|s| {
                let source = inner(
                    "searchSourceJSON",
                    s["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
                        .as_str()
                        .unwrap(),
                );
                source["query"]["query"]
                    .as_str()
                    .unwrap()
                    .contains(r#"event.dataset : "swarming.verdict""#)
            })
            .unwrap_or_else(|| panic!("{id}: no incidents panel"));
        let a = &incidents["attributes"];
        assert_eq!(a["title"], "swarming: incidents");
        assert_eq!(
            a["columns"],
            serde_json::json!([
                "verdict.kind",
                "verdict.subject",
                "verdict.state",
                "verdict.cause",
                "verdict.previous.state",
                "verdict.previous.since",
                "verdict.since",
                "message"
            ])
        );
        assert_eq!(a["sort"], serde_json::json!([["@timestamp", "desc"]]));
    }
}

#[test]
fn committed_saved_objects_are_the_generators_output() {
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/kibana/generate_saved_objects.py"
        ))
        .arg("--stdout")
        .output()
        .expect("python3 runs the generator (install python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout).unwrap() == SAVED_OBJECTS,
        "swarming-saved-objects.ndjson is stale: run packaging/kibana/generate_saved_objects.py"
    );
}

#[test]
fn the_indexer_yaml_example_parses_in_both_modes() {
    use std::path::Path;
    use swarming::config::IndexerSettings;
    let text = include_str!("../etc/swarming/indexer.yaml");
    // The commented elasticsearch section, uncommented.
    let mut es = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("#elasticsearch:") {
            inside = true;
        } else if inside && !line.starts_with("#  ") {
            break;
        }
        if inside {
            let l = &line[1..];
            if !l.trim_start().starts_with('#') {
                es.push_str(l);
                es.push('\n');
            }
        }
    }
    assert!(es.contains("mode: uptime"), "{es}");
    let f = Path::new("indexer.yaml");
    let s = IndexerSettings::from_str(f, &es).unwrap();
    let es_settings = s.elasticsearch.unwrap();
    assert_eq!(es_settings.flavor, Flavor::Uptime);
    assert_eq!(es_settings.index, "heartbeat-8-swarming");
    let synth = es.replace("mode: uptime", "mode: synthetics").replace(
        "index: heartbeat-8-swarming",
        "index: synthetics-icmp-swarming",
    );
    let s = IndexerSettings::from_str(f, &synth).unwrap();
    assert_eq!(s.elasticsearch.unwrap().flavor, synthetics());
}

/// The demo (`packaging/swarm.sh`, the README's main command) runs the
/// examples it builds: each must exist, or the demo breaks while every
/// test still passes.
#[test]
fn every_example_the_demo_builds_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = std::fs::read_to_string(format!("{root}/packaging/swarm.sh")).unwrap();
    let words: Vec<&str> = script.split_whitespace().collect();
    let examples: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "--example")
        .map(|w| w[1])
        .collect();
    assert!(!examples.is_empty(), "swarm.sh builds no example any more?");
    for name in examples {
        let path = format!("{root}/examples/{name}.rs");
        assert!(std::path::Path::new(&path).exists(), "{path} is missing");
    }
}
