//! Elasticsearch documents built from wire messages (see `docs/documents.md`).
//!
//! A [`PingResult`] becomes a Heartbeat/ECS-shaped ICMP check document that
//! Kibana's Uptime app understands, plus our own `ping.*` fields (loss, rtt
//! statistics, per-echo rtts) that Heartbeat does not have. In the
//! Synthetics flavour ([`Flavor::Synthetics`], built by a [`CheckShaper`])
//! the same document also carries what the Synthetics app's queries need
//! (`summary.final_attempt`, `meta.space_id`, `state.*`, `data_stream.*`).
//! A [`Rip`] becomes an agent lifecycle event.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::protocol::{AgentVerdict, PingResult, Rip, RipReason, TargetVerdict};

/// `event.dataset` of check documents (the Heartbeat ICMP value).
pub const CHECK_DATASET: &str = "icmp";
/// `event.dataset` of agent lifecycle documents.
pub const AGENT_DATASET: &str = "swarming.agent";
/// ECS version the documents follow.
pub const ECS_VERSION: &str = "8.0.0";
/// Agent label holding the agent's position as `"lat,lon"` in decimal
/// degrees (e.g. `"48.85,2.35"`); it becomes `observer.geo.location`, the
/// pin on Kibana's maps. The Uptime "location" (`observer.geo.name`) is the
/// agent name, so agents sharing a `location` label stay apart.
pub const GEO_LABEL: &str = "geo";
/// Most (agent, target) pairs whose Synthetics `state.*` is tracked; past
/// it, new pairs get documents without `state` (bounded memory whatever
/// agents send).
pub const MAX_TRACKED_STATES: usize = 100_000;

/// Why a result cannot be turned into a document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    #[error("timestamp {0:?} is not an RFC 3339 UTC time")]
    BadTimestamp(String),
    #[error("interval {0} is not a positive number of seconds")]
    BadInterval(f64),
}

/// Latest instant an RFC 3339 timestamp can hold, 9999-12-31T23:59:59.999Z
/// (formatting anything later would panic).
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// Parses an RFC 3339 UTC timestamp (`Z`, or an offset of `+00:00` /
/// `-00:00`; any number of fractional digits) and returns the instant with
/// its canonical text: `YYYY-MM-DDTHH:MM:SS.mmmZ`, truncated to the
/// millisecond. One instant has one canonical text, hence one document id.
pub fn canonical_timestamp(text: &str) -> Result<(SystemTime, String), DocumentError> {
    let bad = || DocumentError::BadTimestamp(text.to_owned());
    let utc = match text
        .strip_suffix("+00:00")
        .or_else(|| text.strip_suffix("-00:00"))
    {
        Some(head) => std::borrow::Cow::Owned(format!("{head}Z")),
        None => std::borrow::Cow::Borrowed(text),
    };
    let at = humantime::parse_rfc3339(&utc).map_err(|_| bad())?;
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis();
    if ms > u128::from(MAX_RFC3339_MS) {
        return Err(bad());
    }
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64);
    Ok((at, humantime::format_rfc3339_millis(at).to_string()))
}

/// Stable document id of a result: hex SHA-1 of `agent NUL target NUL
/// timestamp`, with the timestamp in its canonical text. The same result
/// delivered through several brokers or indexers, whichever way its
/// timestamp was written, gets the same id, so Elasticsearch stores it once.
pub fn doc_id(result: &PingResult) -> String {
    let (agent, target, timestamp) = result.key();
    match canonical_timestamp(timestamp) {
        Ok((_, ts)) => hash_id(&[agent, target, &ts]),
        Err(_) => hash_id(&[agent, target, timestamp]),
    }
}

/// Stable document id of a lifecycle notice: from what the agent sent
/// (agent, reason and the start of the agent's session, `since`), so every
/// indexer, and every redelivery, gives one notice one id. Notices of agents
/// that do not send `since` fall back to the receive time `at`.
pub fn rip_doc_id(rip: &Rip, at: SystemTime) -> String {
    match rip.since.as_deref().map(canonical_timestamp) {
        Some(Ok((_, since))) => hash_id(&[&rip.agent, rip.reason.as_str(), &since]),
        _ => {
            let at = humantime::format_rfc3339_millis(at).to_string();
            hash_id(&[&rip.agent, rip.reason.as_str(), &at])
        }
    }
}

fn hash_id(parts: &[&str]) -> String {
    let mut h = sha1_smol::Sha1::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"\0");
        }
        h.update(p.as_bytes());
    }
    h.digest().to_string()
}

/// `monitor.id` of a target: one per target, the same from every agent
/// (Uptime groups a monitor's locations under it).
pub fn monitor_id(target: &str) -> String {
    format!("icmp-{target}")
}

/// `url.domain` of a target: IPv6 literals are bracketed, as ECS asks.
pub fn url_domain(target: &str) -> String {
    let bare = target
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(target);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => target.to_owned(),
    }
}

/// `observer.geo.location` (`{"lat", "lon"}`) from a `"lat,lon"` label in
/// decimal degrees; `None` unless both parse and are in range.
pub fn geo_location(label: &str) -> Option<Value> {
    let (lat, lon) = label.split_once(',')?;
    let lat: f64 = lat.trim().parse().ok()?;
    let lon: f64 = lon.trim().parse().ok()?;
    let ok = lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0;
    ok.then(|| json!({ "lat": lat, "lon": lon }))
}

/// Milliseconds to whole microseconds; non-finite or negative gives 0.
fn ms_to_us(ms: f64) -> i64 {
    if ms.is_finite() && ms > 0.0 {
        // `as` saturates; rtts are far below i64::MAX microseconds anyway.
        (ms * 1000.0).round() as i64
    } else {
        0
    }
}

/// A finite float as JSON, `None` otherwise (ES refuses NaN).
fn finite(x: f64) -> Option<Value> {
    if x.is_finite() {
        Some(json!(x))
    } else {
        None
    }
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

/// The check document of one result (the `_source` to index).
pub fn result_document(r: &PingResult) -> Result<Value, DocumentError> {
    let (start, ts) = canonical_timestamp(&r.timestamp)?;
    let interval = Duration::try_from_secs_f64(r.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(DocumentError::BadInterval(r.interval))?;
    let end = start
        .checked_add(interval)
        .filter(|end| {
            end.duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|d| d.as_millis() <= u128::from(MAX_RFC3339_MS))
        })
        .ok_or(DocumentError::BadInterval(r.interval))?;
    let end = humantime::format_rfc3339_millis(end).to_string();
    let id = doc_id(r);
    let up = r.received > 0;
    let avg_us = if up {
        r.rtt.map(|s| ms_to_us(s.avg)).unwrap_or(0)
    } else {
        0
    };
    let lost = r.sent.saturating_sub(r.received);
    // A round that sent nothing (name did not resolve) counts as total loss.
    let loss = if r.sent == 0 {
        1.0
    } else {
        (f64::from(lost) / f64::from(r.sent)).clamp(0.0, 1.0)
    };
    let mut observer = json!({ "name": r.agent, "geo": { "name": r.agent } });
    if let Some(pin) = r.labels.get(GEO_LABEL).and_then(|g| geo_location(g)) {
        observer["geo"]["location"] = pin;
    }
    let domain = url_domain(&r.target);

    let mut monitor = Map::new();
    monitor.insert("id".into(), json!(monitor_id(&r.target)));
    monitor.insert("name".into(), json!(r.target));
    monitor.insert("type".into(), json!("icmp"));
    monitor.insert("status".into(), json!(if up { "up" } else { "down" }));
    monitor.insert("duration".into(), json!({ "us": avg_us }));
    monitor.insert("check_group".into(), json!(id));
    monitor.insert("timespan".into(), json!({ "gte": ts, "lt": end }));
    if let Some(ip) = r.addr {
        monitor.insert("ip".into(), json!(ip.to_string()));
    }

    let mut icmp = Map::new();
    icmp.insert("requests".into(), json!(r.sent));
    if up {
        icmp.insert("rtt".into(), json!({ "us": avg_us }));
    }

    let mut ping = Map::new();
    ping.insert("sent".into(), json!(r.sent));
    ping.insert("received".into(), json!(r.received));
    ping.insert("lost".into(), json!(lost));
    ping.insert("loss".into(), json!(loss));
    insert_opt(&mut ping, "interval_s", finite(r.interval));
    if let (true, Some(s)) = (up, r.rtt) {
        let mut rtt = Map::new();
        insert_opt(&mut rtt, "min_ms", finite(s.min));
        insert_opt(&mut rtt, "avg_ms", finite(s.avg));
        insert_opt(&mut rtt, "max_ms", finite(s.max));
        insert_opt(&mut rtt, "stddev_ms", finite(s.stddev));
        ping.insert("rtt".into(), Value::Object(rtt));
    }
    let rtts: Vec<Value> = r.rtts.iter().flatten().filter_map(|&x| finite(x)).collect();
    ping.insert("rtts_ms".into(), Value::Array(rtts));

    let labels: Map<String, Value> = r
        .labels
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();

    let mut doc = Map::new();
    doc.insert("@timestamp".into(), json!(ts));
    doc.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    doc.insert(
        "event".into(),
        json!({ "dataset": CHECK_DATASET, "kind": "metric" }),
    );
    doc.insert("monitor".into(), Value::Object(monitor));
    doc.insert(
        "summary".into(),
        json!({ "up": u8::from(up), "down": u8::from(!up) }),
    );
    doc.insert("observer".into(), observer);
    if !labels.is_empty() {
        doc.insert("labels".into(), Value::Object(labels));
    }
    doc.insert(
        "url".into(),
        json!({ "scheme": "icmp", "domain": domain, "full": format!("icmp://{domain}") }),
    );
    if let Some(ip) = r.addr {
        doc.insert("resolve".into(), json!({ "ip": ip.to_string() }));
    }
    doc.insert("icmp".into(), Value::Object(icmp));
    doc.insert("ping".into(), Value::Object(ping));
    if let Some(e) = &r.error {
        doc.insert("error".into(), json!({ "message": e }));
    }
    Ok(Value::Object(doc))
}

/// The lifecycle document of an agent notice received at `at`. A `stale`
/// notice is one of an earlier connection of an agent that is connected
/// again (a will a returning broker publishes late): recorded as such,
/// never as the agent's loss.
pub fn rip_document(rip: &Rip, at: SystemTime, stale: bool) -> Value {
    let action = rip.reason.as_str();
    let mut message = match rip.reason {
        RipReason::Lost => format!("agent {} lost (broker published its last will)", rip.agent),
        RipReason::Shutdown => format!("agent {} shut down", rip.agent),
        RipReason::Online => format!(
            "agent {} connected to {}",
            rip.agent,
            rip.broker.as_deref().unwrap_or("a broker")
        ),
    };
    if stale {
        message = format!(
            "stale notice (the agent is connected again, or its broker went down; connection since {}), ignored: {message}",
            rip.since.as_deref().unwrap_or("?")
        );
    }
    let mut agent = Map::new();
    insert_opt(
        &mut agent,
        "instance",
        rip.instance.as_ref().map(|i| json!(i)),
    );
    insert_opt(&mut agent, "since", rip.since.as_ref().map(|s| json!(s)));
    insert_opt(&mut agent, "broker", rip.broker.as_ref().map(|b| json!(b)));
    insert_opt(
        &mut agent,
        "watch_version",
        rip.watch_version.as_ref().map(|v| json!(v)),
    );
    agent.insert("stale".into(), json!(stale));
    json!({
        "@timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "ecs": { "version": ECS_VERSION },
        "event": { "dataset": AGENT_DATASET, "kind": "event", "action": action },
        "observer": { "name": rip.agent },
        "swarming": { "agent": agent },
        "message": message,
    })
}

/// Adds how the round was judged to its check document: `ping.state`
/// (`up`, `slow`, `lossy`, `down`; Heartbeat's `monitor.status` stays
/// up/down) and `ping.levels` (`slow_ms`: the slow threshold applied, ms;
/// `lossy`: the lossy level, a fraction; `baseline_ms`: the agent's median
/// rtt for the target, when it has one).
pub fn add_judgement(doc: &mut Value, j: &crate::insight::verdict::Classified) {
    let Some(ping) = doc.get_mut("ping").and_then(|p| p.as_object_mut()) else {
        return;
    };
    ping.insert("state".into(), json!(j.state.as_str()));
    let mut levels = Map::new();
    insert_opt(&mut levels, "slow_ms", finite(j.slow_ms));
    insert_opt(&mut levels, "lossy", finite(j.lossy));
    insert_opt(&mut levels, "baseline_ms", j.baseline_ms.and_then(finite));
    ping.insert("levels".into(), Value::Object(levels));
}

/// `event.dataset` of verdict state-change documents.
pub const VERDICT_DATASET: &str = "swarming.verdict";

/// A verdict that changed state or cause.
pub enum VerdictChange<'a> {
    Target(&'a TargetVerdict),
    Agent(&'a AgentVerdict),
}

/// The verdict a transition ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Previous {
    pub state: String,
    pub cause: Option<String>,
    pub since: String,
}

fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The state-change document of a verdict transition, with its id: the
/// same for every indexer (kind, subject, state, cause, since), so two
/// indexers store one incident once. An incident is the document of the
/// bad state (its start, `verdict.since`) and the one that ends it, which
/// carries `verdict.previous` (state, cause, start).
pub fn verdict_doc(change: &VerdictChange, previous: Option<Previous>) -> (String, Value) {
    let mut v = Map::new();
    let (kind, subject, state, since, message) = match change {
        VerdictChange::Target(t) => {
            let state = wire(&t.state);
            let cause = wire(&t.cause);
            v.insert("cause".into(), json!(cause));
            v.insert("agents_bad".into(), json!(t.agents_bad));
            v.insert("agents_total".into(), json!(t.agents_total));
            v.insert("providers_bad".into(), json!(t.providers_bad));
            insert_opt(&mut v, "provider", t.provider.as_ref().map(|p| json!(p)));
            let message = format!(
                "target {}: {state}, cause {cause} ({} of {} agents bad, {} providers) since {}",
                t.target, t.agents_bad, t.agents_total, t.providers_bad, t.since
            );
            ("target", &t.target, state, &t.since, message)
        }
        VerdictChange::Agent(a) => {
            let state = wire(&a.state);
            v.insert("reason".into(), json!(a.reason));
            let message = format!("agent {}: {state} since {}: {}", a.agent, a.since, a.reason);
            ("agent", &a.agent, state, &a.since, message)
        }
    };
    let cause = v
        .get("cause")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_owned();
    let id = hash_id(&["verdict", kind, subject, &state, &cause, since]);
    v.insert("kind".into(), json!(kind));
    v.insert("subject".into(), json!(subject));
    v.insert("state".into(), json!(state));
    v.insert("since".into(), json!(since));
    let mut message = message;
    if let Some(p) = previous {
        message.push_str(&format!("; was {} since {}", p.state, p.since));
        let mut prev = Map::new();
        prev.insert("state".into(), json!(p.state));
        insert_opt(&mut prev, "cause", p.cause.map(|c| json!(c)));
        prev.insert("since".into(), json!(p.since));
        v.insert("previous".into(), Value::Object(prev));
    }
    let mut doc = json!({
        "@timestamp": since,
        "ecs": { "version": ECS_VERSION },
        "event": { "dataset": VERDICT_DATASET, "kind": "state", "action": format!("{kind}.{state}") },
        "verdict": v,
        "message": message,
    });
    if let VerdictChange::Agent(a) = change {
        doc["observer"] = json!({ "name": a.agent });
    }
    (id, doc)
}

/// Which Kibana app the check documents are shaped for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Heartbeat's shape, for the Uptime app (`heartbeat-*` data streams).
    #[default]
    Uptime,
    /// Heartbeat's shape plus the fields the Synthetics app queries, for a
    /// `synthetics-icmp-<namespace>` data stream.
    Synthetics {
        /// `data_stream.namespace` (the last part of the data stream name).
        namespace: String,
        /// `meta.space_id`: the Kibana space whose Synthetics app shows the
        /// checks.
        space_id: String,
    },
}

/// Current up/down streak of one (agent, target) pair: Synthetics'
/// `state.*` ("down for 12 min").
#[derive(Debug, Clone)]
struct Streak {
    /// Start of the round that began the streak.
    started_at: SystemTime,
    /// Start of the newest round seen.
    last: SystemTime,
    up: bool,
    checks: u64,
}

/// Streaks per (agent, target), as seen by this indexer since it started.
#[derive(Debug, Default)]
struct Streaks {
    by_pair: HashMap<(String, String), Streak>,
}

impl Streaks {
    /// The `state` object after a round that started at `start`; `None`
    /// for a round not newer than the last one seen (a copy from another
    /// broker, or a late arrival: its state is not known), or when the
    /// table is full.
    fn observe(&mut self, agent: &str, target: &str, start: SystemTime, up: bool) -> Option<Value> {
        let key = (agent.to_owned(), target.to_owned());
        let full = self.by_pair.len() >= MAX_TRACKED_STATES;
        let streak = match self.by_pair.get_mut(&key) {
            Some(s) if start <= s.last => return None,
            Some(s) if s.up == up => {
                s.last = start;
                s.checks = s.checks.saturating_add(1);
                s.clone()
            }
            Some(s) => {
                *s = Streak {
                    started_at: start,
                    last: start,
                    up,
                    checks: 1,
                };
                s.clone()
            }
            None if full => return None,
            None => {
                let s = Streak {
                    started_at: start,
                    last: start,
                    up,
                    checks: 1,
                };
                self.by_pair.insert(key, s.clone());
                s
            }
        };
        let started = humantime::format_rfc3339_millis(streak.started_at).to_string();
        let duration_ms = start
            .duration_since(streak.started_at)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (ups, downs) = if up {
            (streak.checks, 0)
        } else {
            (0, streak.checks)
        };
        Some(json!({
            "id": format!("{}-{}", &hash_id(&[agent, target])[..16], started),
            "started_at": started,
            "duration_ms": duration_ms,
            "status": if up { "up" } else { "down" },
            "checks": streak.checks,
            "up": ups,
            "down": downs,
        }))
    }
}

/// Builds check documents of one [`Flavor`]. The Synthetics flavour keeps
/// each (agent, target) pair's current streak for `state.*`; share one
/// shaper (behind an `Arc`) between all intake paths.
#[derive(Debug, Default)]
pub struct CheckShaper {
    flavor: Flavor,
    streaks: Mutex<Streaks>,
}

impl CheckShaper {
    pub fn new(flavor: Flavor) -> CheckShaper {
        CheckShaper {
            flavor,
            streaks: Mutex::new(Streaks::default()),
        }
    }

    pub fn flavor(&self) -> &Flavor {
        &self.flavor
    }

    /// The check document of one result in this shaper's flavour.
    pub fn document(&self, r: &PingResult) -> Result<Value, DocumentError> {
        let mut doc = result_document(r)?;
        let Flavor::Synthetics {
            namespace,
            space_id,
        } = &self.flavor
        else {
            return Ok(doc);
        };
        let up = doc["monitor"]["status"] == "up";
        let start = humantime::parse_rfc3339(&r.timestamp)
            .map_err(|_| DocumentError::BadTimestamp(r.timestamp.clone()))?;
        // One attempt per round: every document is the final one of its
        // check (Synthetics' overview reads only final attempts).
        let summary = json!({
            "up": u8::from(up),
            "down": u8::from(!up),
            "status": if up { "up" } else { "down" },
            "attempt": 1,
            "max_attempts": 1,
            "final_attempt": true,
            "retry_group": doc["monitor"]["check_group"],
        });
        doc["summary"] = summary;
        doc["meta"] = json!({ "space_id": space_id });
        doc["data_stream"] =
            json!({ "type": "synthetics", "dataset": "icmp", "namespace": namespace });
        let state = self
            .streaks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(&r.agent, &r.target, start, up);
        if let Some(state) = state {
            doc["state"] = state;
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RttStats;
    use std::collections::BTreeMap;

    fn sample() -> PingResult {
        PingResult {
            agent: "probe-paris-1".into(),
            labels: BTreeMap::from([
                ("provider".to_owned(), "ovh".to_owned()),
                ("location".to_owned(), "Paris".to_owned()),
            ]),
            target: "example.com".into(),
            addr: Some("192.0.2.7".parse().unwrap()),
            timestamp: "2026-11-25T12:00:00.000Z".into(),
            interval: 60.0,
            sent: 5,
            received: 4,
            rtt: RttStats::from_rtts(&[Some(10.0), Some(12.0), None, Some(11.0), Some(11.0)]),
            rtts: vec![Some(10.0), Some(12.0), None, Some(11.0), Some(11.0)],
            error: None,
        }
    }

    #[test]
    fn up_result_has_every_uptime_field() {
        let d = result_document(&sample()).unwrap();
        assert_eq!(d["@timestamp"], "2026-11-25T12:00:00.000Z");
        assert_eq!(d["event"]["dataset"], "icmp");
        assert_eq!(d["monitor"]["id"], "icmp-example.com");
        assert_eq!(d["monitor"]["name"], "example.com");
        assert_eq!(d["monitor"]["type"], "icmp");
        assert_eq!(d["monitor"]["status"], "up");
        assert_eq!(d["monitor"]["duration"]["us"], 11000);
        assert_eq!(d["monitor"]["ip"], "192.0.2.7");
        assert_eq!(d["resolve"]["ip"], "192.0.2.7");
        assert_eq!(d["monitor"]["timespan"]["gte"], "2026-11-25T12:00:00.000Z");
        assert_eq!(d["monitor"]["timespan"]["lt"], "2026-11-25T12:01:00.000Z");
        assert_eq!(d["monitor"]["check_group"], doc_id(&sample()));
        assert_eq!(d["summary"]["up"], 1);
        assert_eq!(d["summary"]["down"], 0);
        assert_eq!(d["observer"]["name"], "probe-paris-1");
        // The location label stays a label: Uptime's location is the agent.
        assert_eq!(d["observer"]["geo"]["name"], "probe-paris-1");
        assert_eq!(d["labels"]["location"], "Paris");
        assert!(d["observer"]["geo"].get("location").is_none());
        assert_eq!(d["labels"]["provider"], "ovh");
        assert_eq!(d["url"]["domain"], "example.com");
        assert_eq!(d["url"]["full"], "icmp://example.com");
        assert_eq!(d["icmp"]["requests"], 5);
        assert_eq!(d["icmp"]["rtt"]["us"], 11000);
        assert_eq!(d["ping"]["sent"], 5);
        assert_eq!(d["ping"]["received"], 4);
        assert_eq!(d["ping"]["lost"], 1);
        assert_eq!(d["ping"]["loss"], 0.2);
        assert_eq!(d["ping"]["interval_s"], 60.0);
        assert_eq!(d["ping"]["rtt"]["min_ms"], 10.0);
        assert_eq!(d["ping"]["rtt"]["avg_ms"], 11.0);
        assert_eq!(d["ping"]["rtt"]["max_ms"], 12.0);
        assert_eq!(d["ping"]["rtts_ms"], json!([10.0, 12.0, 11.0, 11.0]));
        assert!(d.get("error").is_none());
    }

    #[test]
    fn down_result_without_address() {
        let mut r = sample();
        r.addr = None;
        r.sent = 0;
        r.received = 0;
        r.rtt = None;
        r.rtts = vec![];
        r.labels.clear();
        r.error = Some("name did not resolve".into());
        let d = result_document(&r).unwrap();
        assert_eq!(d["monitor"]["status"], "down");
        assert_eq!(d["monitor"]["duration"]["us"], 0);
        assert!(d["monitor"].get("ip").is_none());
        assert!(d.get("resolve").is_none());
        assert!(d["icmp"].get("rtt").is_none());
        assert!(d["ping"].get("rtt").is_none());
        assert_eq!(d["ping"]["loss"], 1.0);
        assert_eq!(d["summary"]["down"], 1);
        assert_eq!(d["observer"]["geo"]["name"], "probe-paris-1");
        assert!(d.get("labels").is_none());
        assert_eq!(d["error"]["message"], "name did not resolve");
    }

    #[test]
    fn all_lost_is_down_with_full_loss() {
        let mut r = sample();
        r.received = 0;
        r.rtt = None;
        r.rtts = vec![None; 5];
        let d = result_document(&r).unwrap();
        assert_eq!(d["monitor"]["status"], "down");
        assert_eq!(d["ping"]["loss"], 1.0);
        assert_eq!(d["ping"]["lost"], 5);
        assert_eq!(d["ping"]["rtts_ms"], json!([]));
    }

    #[test]
    fn ipv6_literals_are_bracketed_in_urls() {
        for t in ["2001:db8::1", "[2001:db8::1]"] {
            let mut r = sample();
            r.target = t.into();
            let d = result_document(&r).unwrap();
            assert_eq!(d["url"]["domain"], "[2001:db8::1]");
            assert_eq!(d["url"]["full"], "icmp://[2001:db8::1]");
            assert_eq!(d["monitor"]["name"], t);
        }
        assert_eq!(url_domain("192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn doc_id_is_stable_and_distinguishes_results() {
        let a = sample();
        let id = doc_id(&a);
        assert_eq!(id.len(), 40);
        assert_eq!(id, doc_id(&a.clone()));
        let mut b = a.clone();
        b.received = 0; // same key, same id
        assert_eq!(doc_id(&b), id);
        for change in [
            |r: &mut PingResult| r.agent.push('x'),
            |r: &mut PingResult| r.target.push('x'),
            |r: &mut PingResult| r.timestamp = "2026-11-25T12:01:00.000Z".into(),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert_ne!(doc_id(&c), id);
        }
        // NUL separation: ("ab","c") and ("a","bc") differ.
        let mut x = a.clone();
        x.agent = "ab".into();
        x.target = "c".into();
        let mut y = a.clone();
        y.agent = "a".into();
        y.target = "bc".into();
        assert_ne!(doc_id(&x), doc_id(&y));
    }

    #[test]
    fn bad_timestamps_and_intervals_are_errors_not_panics() {
        for ts in [
            "",
            "yesterday",
            "2026-11-25 12:00:00",
            "2026-11-25T12:00:00+02:00",
        ] {
            let mut r = sample();
            r.timestamp = ts.into();
            assert!(matches!(
                result_document(&r),
                Err(DocumentError::BadTimestamp(_))
            ));
        }
        for iv in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            let mut r = sample();
            r.interval = iv;
            assert!(matches!(
                result_document(&r),
                Err(DocumentError::BadInterval(_))
            ));
        }
    }

    #[test]
    fn one_instant_written_three_ways_is_one_id() {
        let mut ids = std::collections::HashSet::new();
        for ts in [
            "2026-11-25T12:00:00.123Z",
            "2026-11-25T12:00:00.123+00:00",
            "2026-11-25T12:00:00.1230Z",
            "2026-11-25T12:00:00.123456Z",
        ] {
            let mut r = sample();
            r.timestamp = ts.into();
            ids.insert(doc_id(&r));
            let d = result_document(&r).unwrap();
            assert_eq!(d["@timestamp"], "2026-11-25T12:00:00.123Z");
        }
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn the_last_instants_rfc_3339_can_write_are_errors_not_panics() {
        let mut r = sample();
        r.timestamp = "9999-12-31T23:59:59.999Z".into();
        assert!(result_document(&r).is_err());
        r.timestamp = "9999-12-31T23:59:59.999999Z".into();
        assert!(result_document(&r).is_err());
        let _ = doc_id(&r);
        assert!(canonical_timestamp("9999-12-31T23:59:59.999Z").is_ok());
    }

    #[test]
    fn notice_ids_come_from_what_the_agent_sent() {
        let rip = Rip {
            agent: "a".into(),
            reason: RipReason::Lost,
            since: Some("2026-11-25T12:00:00Z".into()),
            ..Rip::default()
        };
        let t1 = SystemTime::now();
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(rip_doc_id(&rip, t1), rip_doc_id(&rip, t2));
        let other = Rip {
            since: Some("2026-11-25T12:05:00Z".into()),
            ..rip.clone()
        };
        assert_ne!(rip_doc_id(&rip, t1), rip_doc_id(&other, t1));
    }

    #[test]
    fn non_finite_rtts_are_dropped() {
        let mut r = sample();
        r.rtts = vec![Some(f64::NAN), Some(1.5)];
        r.rtt = Some(RttStats {
            min: f64::NAN,
            avg: 1.5,
            max: 1.5,
            stddev: f64::INFINITY,
        });
        let d = result_document(&r).unwrap();
        assert_eq!(d["ping"]["rtts_ms"], json!([1.5]));
        assert!(d["ping"]["rtt"].get("min_ms").is_none());
        assert!(d["ping"]["rtt"].get("stddev_ms").is_none());
        assert_eq!(d["monitor"]["duration"]["us"], 1500);
    }

    #[test]
    fn geo_label_becomes_a_map_pin_and_bad_ones_are_left_out() {
        let mut r = sample();
        r.labels.insert(GEO_LABEL.into(), " 48.85, 2.35".into());
        let d = result_document(&r).unwrap();
        assert_eq!(
            d["observer"]["geo"]["location"],
            json!({"lat": 48.85, "lon": 2.35})
        );
        assert_eq!(d["labels"]["geo"], " 48.85, 2.35");
        for bad in [
            "", "48.85", "91,0", "0,181", "NaN,1", "a,b", "1,2,3", "inf,0",
        ] {
            assert_eq!(geo_location(bad), None, "{bad}");
        }
        assert_eq!(
            geo_location("-90,-180"),
            Some(json!({"lat": -90.0, "lon": -180.0}))
        );
    }

    fn at(r: &mut PingResult, minute: u32) {
        r.timestamp = format!("2026-11-25T12:{minute:02}:00.000Z");
    }

    #[test]
    fn uptime_shaper_writes_the_plain_document() {
        let s = CheckShaper::new(Flavor::Uptime);
        let d = s.document(&sample()).unwrap();
        assert_eq!(d, result_document(&sample()).unwrap());
        assert!(d.get("state").is_none() && d.get("meta").is_none());
    }

    #[test]
    fn synthetics_shaper_adds_final_attempt_space_and_streaks() {
        let s = CheckShaper::new(Flavor::Synthetics {
            namespace: "swarming".into(),
            space_id: "default".into(),
        });
        let mut r = sample();
        at(&mut r, 0);
        let d = s.document(&r).unwrap();
        assert_eq!(d["summary"]["final_attempt"], true);
        assert_eq!(d["summary"]["status"], "up");
        assert_eq!(d["summary"]["up"], 1);
        assert_eq!(d["summary"]["retry_group"], d["monitor"]["check_group"]);
        assert_eq!(d["meta"]["space_id"], "default");
        assert_eq!(d["data_stream"]["namespace"], "swarming");
        assert_eq!(d["state"]["status"], "up");
        assert_eq!(d["state"]["checks"], 1);
        // Two down rounds: a new streak that started at the first of them.
        r.received = 0;
        at(&mut r, 1);
        let d1 = s.document(&r).unwrap();
        at(&mut r, 13);
        let d2 = s.document(&r).unwrap();
        assert_eq!(d2["summary"]["final_attempt"], true);
        assert_eq!(d2["summary"]["status"], "down");
        assert_eq!(d2["state"]["status"], "down");
        assert_eq!(d2["state"]["started_at"], "2026-11-25T12:01:00.000Z");
        assert_eq!(d2["state"]["duration_ms"], 12 * 60 * 1000);
        assert_eq!(d2["state"]["checks"], 2);
        assert_eq!(d2["state"]["down"], 2);
        assert_eq!(d1["state"]["id"], d2["state"]["id"]);
        assert_ne!(d["state"]["id"], d2["state"]["id"]);
        // A copy from another broker or a late round: no state, no change.
        let again = s.document(&r).unwrap();
        assert!(again.get("state").is_none());
        at(&mut r, 5);
        assert!(s.document(&r).unwrap().get("state").is_none());
        // Another agent's view of the same target has its own streak.
        r.agent = "probe-nyc-1".into();
        at(&mut r, 14);
        assert_eq!(s.document(&r).unwrap()["state"]["checks"], 1);
    }

    #[test]
    fn streak_table_is_bounded() {
        let mut t = Streaks::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for i in 0..MAX_TRACKED_STATES {
            assert!(t.observe(&format!("a{i}"), "t", start, true).is_some());
        }
        assert!(t.observe("one-more", "t", start, true).is_none());
        // Known pairs still advance.
        assert!(t
            .observe("a0", "t", start + Duration::from_secs(60), false)
            .is_some());
        assert_eq!(t.by_pair.len(), MAX_TRACKED_STATES);
    }

    #[test]
    fn rip_documents() {
        let at = humantime::parse_rfc3339("2026-11-25T12:00:05.250Z").unwrap();
        let lost = Rip {
            agent: "a1".into(),
            reason: RipReason::Lost,
            ..Rip::default()
        };
        let d = rip_document(&lost, at, false);
        assert_eq!(d["@timestamp"], "2026-11-25T12:00:05.250Z");
        assert_eq!(d["event"]["dataset"], "swarming.agent");
        assert_eq!(d["event"]["action"], "lost");
        assert_eq!(d["observer"]["name"], "a1");
        let shut = Rip {
            agent: "a1".into(),
            reason: RipReason::Shutdown,
            ..Rip::default()
        };
        assert_eq!(
            rip_document(&shut, at, false)["event"]["action"],
            "shutdown"
        );
        assert_ne!(rip_doc_id(&lost, at), rip_doc_id(&shut, at));
        assert_eq!(rip_doc_id(&lost, at), rip_doc_id(&lost.clone(), at));
    }
}
