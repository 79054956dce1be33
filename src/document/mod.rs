//! Elasticsearch documents built from wire messages (see `docs/documents.md`).
//!
//! - `check`: a [`PingResult`](crate::protocol::PingResult) becomes a
//!   Heartbeat/ECS-shaped ICMP check document that Kibana's Uptime app
//!   understands, plus our own `ping.*` fields (loss, rtt statistics,
//!   per-echo rtts, how the round was judged) that Heartbeat does not have.
//! - `synthetics`: the Kibana app the checks are shaped for; in the
//!   Synthetics flavour the same document also carries what the Synthetics
//!   app's queries need (`summary.final_attempt`, `meta.space_id`,
//!   `state.*`, `data_stream.*`).
//! - `lifecycle`: a [`Rip`](crate::protocol::Rip) becomes an agent
//!   lifecycle event.
//! - `verdict`: verdict transitions become state-change documents.
//! - `timestamp`: one canonical text per instant.

mod check;
mod lifecycle;
mod synthetics;
mod timestamp;
mod verdict;

use std::net::IpAddr;

use serde_json::{json, Map, Value};

pub use check::{doc_id, result_document, result_id, with_canonical_timestamp, DocId};
pub use lifecycle::{rip_doc_id, rip_document};
pub use synthetics::{CheckShaper, Flavor};
pub use timestamp::canonical_timestamp;
pub use verdict::{verdict_doc, Previous, VerdictChange, VERDICT_DATASET};

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
    #[error("cannot encode the document: {0}")]
    Encode(String),
}

/// Hex SHA-1 of `parts` joined by NUL.
fn hash_id(parts: &[&str]) -> String {
    hash_hex(parts).as_str().to_owned()
}

/// [`hash_id`] without an allocation.
fn hash_hex(parts: &[&str]) -> DocId {
    let mut h = sha1_smol::Sha1::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"\0");
        }
        h.update(p.as_bytes());
    }
    DocId::from_digest(&h.digest().bytes())
}

/// `url.domain` of a target: IPv6 literals are bracketed, as ECS asks.
pub fn url_domain(target: &str) -> std::borrow::Cow<'_, str> {
    let bare = target
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(target);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]").into(),
        _ => target.into(),
    }
}

/// `observer.geo.location` (`{"lat", "lon"}`) from a `"lat,lon"` label in
/// decimal degrees; `None` unless both parse and are in range.
pub fn geo_location(label: &str) -> Option<Value> {
    geo_point(label).map(|(lat, lon)| json!({ "lat": lat, "lon": lon }))
}

/// The `(lat, lon)` of a `"lat,lon"` label (see [`geo_location`]).
fn geo_point(label: &str) -> Option<(f64, f64)> {
    let (lat, lon) = label.split_once(',')?;
    let lat: f64 = lat.trim().parse().ok()?;
    let lon: f64 = lon.trim().parse().ok()?;
    let ok = lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0 && lon.abs() <= 180.0;
    ok.then_some((lat, lon))
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v);
    }
}

/// A result for the tests of every document module.
#[cfg(test)]
fn sample() -> crate::protocol::PingResult {
    use crate::protocol::RttStats;
    use std::collections::BTreeMap;
    crate::protocol::PingResult {
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
