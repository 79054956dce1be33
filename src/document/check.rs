//! Check documents: one per ping result, written straight to JSON text
//! from borrowed fields (no tree of values, no copy of a string), since
//! this runs once for every result the swarm sends.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

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
    let mut j = Json(out);
    j.raw("{\"@timestamp\":")?;
    j.str(&r.timestamp)?;
    j.raw(",\"ecs\":{\"version\":")?;
    j.str(ECS_VERSION)?;
    j.raw("},\"event\":{\"dataset\":")?;
    j.str(CHECK_DATASET)?;
    // One monitor per target, the same from every agent (Uptime groups a
    // monitor's locations under it).
    j.raw(",\"kind\":\"metric\"},\"monitor\":{\"id\":")?;
    j.concat("icmp-", &r.target)?;
    j.raw(",\"name\":")?;
    j.str(&r.target)?;
    j.raw(",\"type\":\"icmp\",\"status\":")?;
    j.str(status)?;
    j.raw(",\"duration\":{\"us\":")?;
    j.value(&avg_us)?;
    j.raw("},\"check_group\":")?;
    j.str(id)?;
    j.raw(",\"timespan\":{\"gte\":")?;
    j.str(&r.timestamp)?;
    j.raw(",\"lt\":")?;
    j.display(&humantime::format_rfc3339_millis(end))?;
    j.raw("}")?;
    if let Some(ip) = &r.addr {
        j.raw(",\"ip\":")?;
        j.value(ip)?;
    }
    j.raw("},\"summary\":{\"up\":")?;
    j.value(&u8::from(up))?;
    j.raw(",\"down\":")?;
    j.value(&u8::from(!up))?;
    if synthetics.is_some() {
        j.raw(",\"status\":")?;
        j.str(status)?;
        j.raw(",\"attempt\":1,\"max_attempts\":1,\"final_attempt\":true,\"retry_group\":")?;
        j.str(id)?;
    }
    j.raw("},\"observer\":{\"name\":")?;
    j.str(&r.agent)?;
    j.raw(",\"geo\":{\"name\":")?;
    j.str(&r.agent)?;
    if let Some((lat, lon)) = r.labels.get(GEO_LABEL).and_then(|g| geo_point(g)) {
        j.raw(",\"location\":{\"lat\":")?;
        j.value(&lat)?;
        j.raw(",\"lon\":")?;
        j.value(&lon)?;
        j.raw("}")?;
    }
    j.raw("}}")?;
    // Labels with a name (an empty name is left out, and so is an object
    // that would be empty).
    let mut labels = r.labels.iter().filter(|(k, _)| !k.is_empty());
    if let Some((k, v)) = labels.next() {
        j.raw(",\"labels\":{")?;
        j.entry(k, v)?;
        for (k, v) in labels {
            j.raw(",")?;
            j.entry(k, v)?;
        }
        j.raw("}")?;
    }
    j.raw(",\"url\":{\"scheme\":\"icmp\",\"domain\":")?;
    j.str(&domain)?;
    j.raw(",\"full\":")?;
    j.concat("icmp://", &domain)?;
    j.raw("}")?;
    if let Some(ip) = &r.addr {
        j.raw(",\"resolve\":{\"ip\":")?;
        j.value(ip)?;
        j.raw("}")?;
    }
    j.raw(",\"icmp\":{\"requests\":")?;
    j.value(&r.sent)?;
    if up {
        j.raw(",\"rtt\":{\"us\":")?;
        j.value(&avg_us)?;
        j.raw("}")?;
    }
    j.raw("},\"ping\":{\"sent\":")?;
    j.value(&r.sent)?;
    j.raw(",\"received\":")?;
    j.value(&r.received)?;
    j.raw(",\"lost\":")?;
    j.value(&lost)?;
    j.raw(",\"loss\":")?;
    j.value(&loss)?;
    if let Some(interval) = finite(r.interval) {
        j.raw(",\"interval_s\":")?;
        j.value(&interval)?;
    }
    if let (true, Some(s)) = (up, r.rtt) {
        j.raw(",\"rtt\":")?;
        j.floats(&[
            ("min_ms", s.min),
            ("avg_ms", s.avg),
            ("max_ms", s.max),
            ("stddev_ms", s.stddev),
        ])?;
    }
    // The finite rtts of the round, lost echoes left out.
    j.raw(",\"rtts_ms\":[")?;
    let mut rtts = r.rtts.iter().flatten().filter(|x| x.is_finite());
    if let Some(x) = rtts.next() {
        j.value(x)?;
        for x in rtts {
            j.raw(",")?;
            j.value(x)?;
        }
    }
    j.raw("]")?;
    if let Some(judged) = judged {
        j.raw(",\"state\":")?;
        j.str(judged.state.as_str())?;
        j.raw(",\"levels\":")?;
        j.floats(&[
            ("slow_ms", judged.slow_ms),
            ("lossy", judged.lossy),
            ("baseline_ms", judged.baseline_ms.unwrap_or(f64::NAN)),
        ])?;
    }
    j.raw("}")?;
    if let Some(message) = &r.error {
        j.raw(",\"error\":{\"message\":")?;
        j.str(message)?;
        j.raw("}")?;
    }
    if let Some(s) = synthetics {
        j.raw(",\"meta\":{\"space_id\":")?;
        j.str(s.space_id)?;
        j.raw("},\"data_stream\":{\"type\":\"synthetics\",\"dataset\":")?;
        j.str(CHECK_DATASET)?;
        j.raw(",\"namespace\":")?;
        j.str(s.namespace)?;
        j.raw("}")?;
        if let Some(state) = &s.state {
            j.raw(",\"state\":")?;
            j.value(state)?;
        }
    }
    j.raw("}")
}

/// Writes a document's JSON text: keys and punctuation as the constant
/// fragments they are, values through serde_json (its escaping and number
/// formatting). Field order is the order written; Elasticsearch does not
/// care, people reading a document do. (This runs once per result:
/// serializing a tree of structs spent half of intake's time escaping
/// keys and walking options.)
struct Json<'a>(&'a mut Vec<u8>);

impl Json<'_> {
    /// Punctuation and keys, written as they are.
    fn raw(&mut self, text: &str) -> Result<(), DocumentError> {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }

    /// A string, quoted and escaped.
    fn str(&mut self, text: &str) -> Result<(), DocumentError> {
        self.value(text)
    }

    /// `prefix` and `text` as one string (`prefix` needs no escaping).
    fn concat(&mut self, prefix: &str, text: &str) -> Result<(), DocumentError> {
        let start = self.0.len();
        self.str(text)?;
        // After the opening quote of the escaped text.
        let at = start.saturating_add(1).min(self.0.len());
        self.0.splice(at..at, prefix.bytes());
        Ok(())
    }

    /// `"key":"value"`, both escaped.
    fn entry(&mut self, key: &str, value: &str) -> Result<(), DocumentError> {
        self.str(key)?;
        self.raw(":")?;
        self.str(value)
    }

    /// An object of the finite ones of `fields` (`{}` if none is).
    fn floats(&mut self, fields: &[(&str, f64)]) -> Result<(), DocumentError> {
        self.raw("{")?;
        let mut first = true;
        for (key, x) in fields.iter().filter(|(_, x)| x.is_finite()) {
            if !first {
                self.raw(",")?;
            }
            first = false;
            self.str(key)?;
            self.raw(":")?;
            self.value(x)?;
        }
        self.raw("}")
    }

    /// A value's `Display` text as a string, escaped (no copy first).
    fn display(&mut self, value: &impl std::fmt::Display) -> Result<(), DocumentError> {
        use serde::Serializer;
        serde_json::Serializer::new(&mut *self.0)
            .collect_str(value)
            .map_err(|e| DocumentError::Encode(e.to_string()))
    }

    /// Any value, as serde_json writes it.
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DocumentError> {
        serde_json::to_writer(&mut *self.0, value).map_err(|e| DocumentError::Encode(e.to_string()))
    }
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

#[cfg(test)]
mod tests {
    use super::super::{geo_location, url_domain, GEO_LABEL};
    use super::*;
    use crate::protocol::RttStats;
    use serde_json::json;
    use std::collections::BTreeMap;

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
    fn hostile_text_is_escaped_in_every_field() {
        let nasty = "q\"b\\c\u{1}\n\u{7f}é\u{2028}}{";
        let mut r = sample();
        r.agent = nasty.into();
        r.target = nasty.into();
        r.labels = BTreeMap::from([(nasty.to_owned(), nasty.to_owned())]);
        r.error = Some(nasty.into());
        let d = result_document(&r).unwrap();
        assert_eq!(d["monitor"]["id"], format!("icmp-{nasty}"));
        assert_eq!(d["monitor"]["name"], nasty);
        assert_eq!(d["url"]["domain"], nasty);
        assert_eq!(d["url"]["full"], format!("icmp://{nasty}"));
        assert_eq!(d["observer"]["name"], nasty);
        assert_eq!(d["observer"]["geo"]["name"], nasty);
        assert_eq!(d["labels"][nasty], nasty);
        assert_eq!(d["error"]["message"], nasty);
    }

    /// The document `write` gives, parsed (Synthetics flavour when
    /// `state` is given).
    fn written(
        r: &PingResult,
        judged: Option<&Classified>,
        synthetics: Option<Option<StreakState>>,
    ) -> Value {
        let (start, r) = with_canonical_timestamp(r).unwrap();
        let id = result_id(&r.agent, &r.target, &r.timestamp);
        let part = synthetics.map(|state| SyntheticsPart {
            namespace: "ns",
            space_id: "space",
            state,
        });
        let mut out = Vec::new();
        write(&mut out, &r, start, id.as_str(), part, judged).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn every_optional_part_is_written_or_left_out_whole() {
        use crate::protocol::RoundState;
        let judged = Classified {
            state: RoundState::Slow,
            slow_ms: 20.0,
            lossy: 0.25,
            baseline_ms: Some(9.5),
        };
        let streak = StreakState {
            id: "s1".into(),
            started_at: "2026-11-25T11:00:00.000Z".into(),
            duration_ms: 3_600_000,
            status: "up",
            checks: 61,
            up: 61,
            down: 0,
        };
        let d = written(&sample(), Some(&judged), Some(Some(streak)));
        assert_eq!(d["ping"]["state"], "slow");
        assert_eq!(
            d["ping"]["levels"],
            json!({"slow_ms": 20.0, "lossy": 0.25, "baseline_ms": 9.5})
        );
        assert_eq!(d["summary"]["status"], "up");
        assert_eq!(d["summary"]["final_attempt"], true);
        assert_eq!(d["summary"]["retry_group"], d["monitor"]["check_group"]);
        assert_eq!(d["meta"]["space_id"], "space");
        assert_eq!(
            d["data_stream"],
            json!({"type": "synthetics", "dataset": "icmp", "namespace": "ns"})
        );
        assert_eq!(d["state"]["checks"], 61);
        assert_eq!(d["monitor"]["timespan"]["lt"], "2026-11-25T12:01:00.000Z");
        // Non-finite levels and rtt statistics are left out one by one (an
        // object of none is empty); no address, an error, no streak.
        let judged = Classified {
            slow_ms: f64::NAN,
            lossy: f64::INFINITY,
            baseline_ms: None,
            ..judged
        };
        let mut r = sample();
        r.addr = None;
        r.error = Some("sendto: \"no route\"".into());
        r.rtt = Some(RttStats {
            min: f64::NAN,
            avg: f64::NAN,
            max: f64::INFINITY,
            stddev: f64::NAN,
        });
        let d = written(&r, Some(&judged), Some(None));
        assert_eq!(d["ping"]["levels"], json!({}));
        assert_eq!(d["ping"]["rtt"], json!({}));
        assert_eq!(d["error"]["message"], "sendto: \"no route\"");
        assert!(d["monitor"].get("ip").is_none() && d.get("resolve").is_none());
        assert!(d.get("state").is_none() && d["meta"]["space_id"] == "space");
        // Uptime flavour, not judged: none of those parts.
        let d = written(&sample(), None, None);
        for part in ["meta", "data_stream", "state", "error"] {
            assert!(d.get(part).is_none(), "{part}");
        }
        assert!(d["ping"].get("state").is_none() && d["ping"].get("levels").is_none());
        assert!(d["summary"].get("final_attempt").is_none());
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
