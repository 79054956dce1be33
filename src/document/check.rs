//! Check documents: one per ping result, written straight to JSON text
//! from borrowed fields (no tree of values, no copy of a string), since
//! this runs once for every result the swarm sends.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use super::synthetics::StreakState;
use super::timestamp::MAX_RFC3339_MS;
use super::{
    canonical_timestamp, geo_point, hash_hex, hash_id, url_domain, DocumentError, CHECK_DATASET,
    ECS_VERSION, GEO_LABEL,
};
use crate::insight::verdict::Classified;
use crate::protocol::PingResult;

/// A document id: 40 lowercase hex digits, kept on the stack.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocId([u8; 40]);

impl DocId {
    pub(super) fn from_digest(digest: &[u8; 20]) -> DocId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 40];
        for (i, b) in digest.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        DocId(out)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for DocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable document id of a result whose timestamp is already in its
/// canonical text (see [`doc_id`]).
pub fn result_id(agent: &str, target: &str, canonical_timestamp: &str) -> DocId {
    hash_hex(&[agent, target, canonical_timestamp])
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

/// `r` with its timestamp in its canonical text (borrowed when it already
/// is), and the instant it names: what [`CheckShaper::write`](super::CheckShaper::write)
/// takes.
pub fn with_canonical_timestamp(
    r: &PingResult,
) -> Result<(SystemTime, Cow<'_, PingResult>), DocumentError> {
    let (start, ts) = canonical_timestamp(&r.timestamp)?;
    if ts == r.timestamp {
        return Ok((start, Cow::Borrowed(r)));
    }
    let canonical = PingResult {
        timestamp: ts,
        ..r.clone()
    };
    Ok((start, Cow::Owned(canonical)))
}

/// The check document of one result in the Uptime shape, as a JSON value
/// (for tests and tools; the indexer writes text with
/// [`CheckShaper::write`](super::CheckShaper::write)).
pub fn result_document(r: &PingResult) -> Result<Value, DocumentError> {
    super::CheckShaper::default().document(r)
}

/// The Synthetics app's part of a check document.
pub(super) struct SyntheticsPart<'a> {
    pub namespace: &'a str,
    pub space_id: &'a str,
    pub state: Option<StreakState>,
}

/// Whether a result counts as up: at least one echo came back.
pub(super) fn is_up(r: &PingResult) -> bool {
    r.received > 0
}

/// Appends the check document of `r` to `out` as compact JSON on one line.
/// `r.timestamp` is the canonical text of `start` (see
/// [`canonical_timestamp`]), `id` the document id.
pub(super) fn write(
    out: &mut Vec<u8>,
    r: &PingResult,
    start: SystemTime,
    id: &str,
    synthetics: Option<SyntheticsPart<'_>>,
    judged: Option<&Classified>,
) -> Result<(), DocumentError> {
    let end = Duration::try_from_secs_f64(r.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .and_then(|interval| start.checked_add(interval))
        .filter(|end| {
            end.duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|d| d.as_millis() <= u128::from(MAX_RFC3339_MS))
        })
        .ok_or(DocumentError::BadInterval(r.interval))?;
    let up = is_up(r);
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
    let status = if up { "up" } else { "down" };
    let domain = url_domain(&r.target);
    let rtt = match (up, r.rtt) {
        (true, Some(s)) => Some(RttMs {
            min_ms: finite(s.min),
            avg_ms: finite(s.avg),
            max_ms: finite(s.max),
            stddev_ms: finite(s.stddev),
        }),
        _ => None,
    };
    let (meta, data_stream, state, synthetics_summary) = match synthetics {
        Some(s) => (
            Some(Meta {
                space_id: s.space_id,
            }),
            Some(DataStream {
                r#type: "synthetics",
                dataset: CHECK_DATASET,
                namespace: s.namespace,
            }),
            s.state,
            true,
        ),
        None => (None, None, None, false),
    };
    let doc = CheckDoc {
        timestamp: &r.timestamp,
        ecs: Ecs {
            version: ECS_VERSION,
        },
        event: Event {
            dataset: CHECK_DATASET,
            kind: "metric",
        },
        monitor: Monitor {
            // One monitor per target, the same from every agent (Uptime
            // groups a monitor's locations under it).
            id: Concat("icmp-", &r.target),
            name: &r.target,
            r#type: "icmp",
            status,
            duration: Us { us: avg_us },
            check_group: id,
            timespan: Timespan {
                gte: &r.timestamp,
                lt: Rfc3339Millis(end),
            },
            ip: r.addr,
        },
        summary: Summary {
            up: u8::from(up),
            down: u8::from(!up),
            status: synthetics_summary.then_some(status),
            attempt: synthetics_summary.then_some(1),
            max_attempts: synthetics_summary.then_some(1),
            final_attempt: synthetics_summary.then_some(true),
            retry_group: synthetics_summary.then_some(id),
        },
        observer: Observer {
            name: &r.agent,
            geo: Geo {
                name: &r.agent,
                location: r
                    .labels
                    .get(GEO_LABEL)
                    .and_then(|g| geo_point(g))
                    .map(|(lat, lon)| GeoPoint { lat, lon }),
            },
        },
        labels: r
            .labels
            .keys()
            .any(|k| !k.is_empty())
            .then_some(Labels(&r.labels)),
        url: Url {
            scheme: "icmp",
            domain: &domain,
            full: Concat("icmp://", &domain),
        },
        resolve: r.addr.map(|ip| Resolve { ip }),
        icmp: Icmp {
            requests: r.sent,
            rtt: up.then_some(Us { us: avg_us }),
        },
        ping: Ping {
            sent: r.sent,
            received: r.received,
            lost,
            loss,
            interval_s: finite(r.interval),
            rtt,
            rtts_ms: FiniteSeq(&r.rtts),
            state: judged.map(|j| j.state.as_str()),
            levels: judged.map(|j| Levels {
                slow_ms: finite(j.slow_ms),
                lossy: finite(j.lossy),
                baseline_ms: j.baseline_ms.and_then(finite),
            }),
        },
        error: r.error.as_deref().map(|message| ErrorMessage { message }),
        meta,
        data_stream,
        state,
    };
    serde_json::to_writer(out, &doc).map_err(|e| DocumentError::Encode(e.to_string()))
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

/// A finite float, `None` otherwise (Elasticsearch refuses NaN).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

// The document's shape. Field order is the order written; Elasticsearch
// does not care, people reading a document do.

#[derive(Serialize)]
struct CheckDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    ecs: Ecs,
    event: Event,
    monitor: Monitor<'a>,
    summary: Summary<'a>,
    observer: Observer<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Labels<'a>>,
    url: Url<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolve: Option<Resolve>,
    icmp: Icmp,
    ping: Ping<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_stream: Option<DataStream<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<StreakState>,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct Event {
    dataset: &'static str,
    kind: &'static str,
}

#[derive(Serialize)]
struct Monitor<'a> {
    id: Concat<'a>,
    name: &'a str,
    r#type: &'static str,
    status: &'static str,
    duration: Us,
    check_group: &'a str,
    timespan: Timespan<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
}

#[derive(Serialize)]
struct Us {
    us: i64,
}

#[derive(Serialize)]
struct Timespan<'a> {
    gte: &'a str,
    lt: Rfc3339Millis,
}

#[derive(Serialize)]
struct Summary<'a> {
    up: u8,
    down: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    final_attempt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_group: Option<&'a str>,
}

#[derive(Serialize)]
struct Observer<'a> {
    name: &'a str,
    geo: Geo<'a>,
}

#[derive(Serialize)]
struct Geo<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<GeoPoint>,
}

#[derive(Serialize)]
struct GeoPoint {
    lat: f64,
    lon: f64,
}

#[derive(Serialize)]
struct Url<'a> {
    scheme: &'static str,
    domain: &'a str,
    full: Concat<'a>,
}

#[derive(Serialize)]
struct Resolve {
    ip: IpAddr,
}

#[derive(Serialize)]
struct Icmp {
    requests: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt: Option<Us>,
}

#[derive(Serialize)]
struct Ping<'a> {
    sent: u32,
    received: u32,
    lost: u32,
    loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt: Option<RttMs>,
    rtts_ms: FiniteSeq<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    levels: Option<Levels>,
}

#[derive(Serialize)]
struct RttMs {
    #[serde(skip_serializing_if = "Option::is_none")]
    min_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avg_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stddev_ms: Option<f64>,
}

#[derive(Serialize)]
struct Levels {
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lossy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_ms: Option<f64>,
}

#[derive(Serialize)]
struct ErrorMessage<'a> {
    message: &'a str,
}

#[derive(Serialize)]
struct Meta<'a> {
    space_id: &'a str,
}

#[derive(Serialize)]
struct DataStream<'a> {
    r#type: &'static str,
    dataset: &'static str,
    namespace: &'a str,
}

/// Two strings written as one JSON string.
struct Concat<'a>(&'static str, &'a str);

impl Serialize for Concat<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}{}", self.0, self.1))
    }
}

/// An instant as RFC 3339 UTC text to the millisecond.
struct Rfc3339Millis(SystemTime);

impl Serialize for Rfc3339Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// Labels with a name (an empty name is left out).
struct Labels<'a>(&'a BTreeMap<String, String>);

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.0.iter().filter(|(k, _)| !k.is_empty()) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The finite rtts of a round, lost echoes left out.
struct FiniteSeq<'a>(&'a [Option<f64>]);

impl Serialize for FiniteSeq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().flatten().filter(|x| x.is_finite()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{geo_location, url_domain, GEO_LABEL};
    use super::*;
    use crate::protocol::RttStats;
    use serde_json::json;

    fn sample() -> PingResult {
        super::super::sample()
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
}
