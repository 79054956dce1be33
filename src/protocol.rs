//! Wire contract v2 between agents and indexers (see `docs/protocol.md`).
//!
//! Topics:
//! - `watch`: retained target list, published by indexers ([`WatchList`]).
//! - `ping/{target}`: one [`PingResult`] per (agent, target, round).
//! - `rip/agent/{agent}`: last will or clean-shutdown notice ([`Rip`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Version of this wire contract (docs/protocol.md), shown by `--version`.
pub const CONTRACT_VERSION: u32 = 2;
/// Topic carrying the retained target list.
pub const WATCH_TOPIC: &str = "watch";
/// Prefix of result topics: `ping/{target}`.
pub const PING_PREFIX: &str = "ping/";
/// Prefix of agent lifecycle topics: `rip/agent/{agent}`.
pub const RIP_AGENT_PREFIX: &str = "rip/agent/";
/// Longest target text accepted, in bytes (the longest DNS name).
pub const MAX_TARGET_LEN: usize = 253;
/// Largest `watch` payload accepted, in bytes.
pub const MAX_WATCH_BYTES: usize = 1024 * 1024;
/// Largest `ping/...` or `rip/...` payload accepted, in bytes.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Topic of the results for `target`.
pub fn ping_topic(target: &str) -> String {
    format!("{PING_PREFIX}{target}")
}

/// Topic of the lifecycle notices of `agent`.
pub fn rip_topic(agent: &str) -> String {
    format!("{RIP_AGENT_PREFIX}{agent}")
}

/// A validated target: text usable as one MQTT topic level, not an address
/// that must never be pinged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target(String);

impl Target {
    /// The target exactly as written in `watch`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The literal address when the target is an IP literal (`[v6]` accepted).
    pub fn ip(&self) -> Option<IpAddr> {
        let s = self.0.as_str();
        let s = s
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(s);
        s.parse().ok()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a target text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty target")]
    Empty,
    #[error("target longer than {MAX_TARGET_LEN} bytes")]
    TooLong,
    #[error("target contains {0:?}, which cannot stand in an MQTT topic level")]
    BadChar(char),
    #[error("{0} is a multicast, broadcast or unspecified address")]
    ForbiddenAddress(IpAddr),
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if s.len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong);
        }
        // `+`, `#` and `/` would change the topic's meaning; NUL, control
        // characters and white space make mosquitto drop the publisher or
        // cannot be a host name at all.
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '+' | '#' | '/') || c.is_control() || c.is_whitespace())
        {
            return Err(TargetError::BadChar(c));
        }
        let target = Target(s.to_owned());
        if let Some(ip) = target.ip() {
            if forbidden_address(ip) {
                return Err(TargetError::ForbiddenAddress(ip));
            }
        }
        Ok(target)
    }
}

/// Addresses an agent must never send echo requests to: multicast,
/// broadcast and unspecified, also in their IPv4-mapped (`::ffff:a.b.c.d`)
/// and IPv4-compatible (`::a.b.c.d`) IPv6 forms.
pub fn forbidden_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_multicast()
                || v6.is_unspecified()
                || v6
                    .to_ipv4()
                    .is_some_and(|v4| forbidden_address(IpAddr::V4(v4)))
        }
    }
}

/// One item of the `watch` list: a host string or an object with `host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    Host(String),
    /// Unknown keys are ignored on purpose: room for per-target settings.
    /// `slow` and `lossy` are the target's levels (contract v2), read by
    /// indexers, ignored by agents; a value of the wrong type reads as
    /// absent, so a list never fails on them.
    Object {
        host: String,
        /// Slow level, a duration such as `"40ms"`.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient"
        )]
        slow: Option<String>,
        /// Lossy level, a fraction of the echoes (0 to 1).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient"
        )]
        lossy: Option<f64>,
    },
}

/// Reads a value of the wrong type as `None` instead of failing the whole
/// message: per-target settings are advice, the host list is what counts.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

impl TargetSpec {
    pub fn host(&self) -> &str {
        match self {
            TargetSpec::Host(h) | TargetSpec::Object { host: h, .. } => h,
        }
    }
}

/// Payload of the retained `watch` topic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WatchList {
    pub targets: Vec<TargetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Why a `watch` payload was ignored as a whole.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch payload of {0} bytes exceeds the {MAX_WATCH_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed watch payload: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("plain-text watch payload is not UTF-8")]
    NotText,
    #[error("JSON watch payload is not an object; publish {{\"targets\": [...]}} or host names separated by spaces")]
    NotAnObject,
}

/// A parsed `watch` message: the accepted targets (deduplicated, in order)
/// and the items that were refused, with the reason.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedWatch {
    pub targets: Vec<Target>,
    pub rejected: Vec<(String, TargetError)>,
    pub version: Option<String>,
}

impl WatchList {
    /// Builds the list an indexer publishes.
    pub fn new(targets: &[Target], version: String) -> Self {
        WatchList {
            targets: targets
                .iter()
                .map(|t| TargetSpec::Host(t.as_str().to_owned()))
                .collect(),
            version: Some(version),
        }
    }

    /// Parses a `watch` payload. An empty payload means no targets; invalid
    /// items are reported in `rejected`, never pinged.
    pub fn parse(payload: &[u8]) -> Result<ParsedWatch, WatchError> {
        if payload.len() > MAX_WATCH_BYTES {
            return Err(WatchError::TooLarge(payload.len()));
        }
        if payload.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(ParsedWatch::default());
        }
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Other JSON values (an array, a string) are mistakes, not host
            // names: say so instead of trying to resolve them.
            if matches!(first, Some(b'[' | b'"'))
                && serde_json::from_slice::<serde_json::Value>(payload).is_ok()
            {
                return Err(WatchError::NotAnObject);
            }
            return Self::parse_plain(payload);
        }
        let list: WatchList = serde_json::from_slice(payload)?;
        let mut parsed = ParsedWatch {
            version: list.version,
            ..ParsedWatch::default()
        };
        let mut seen = std::collections::HashSet::new();
        for spec in list.targets {
            match spec.host().parse::<Target>() {
                Ok(t) => {
                    if seen.insert(t.clone()) {
                        parsed.targets.push(t);
                    }
                }
                Err(e) => parsed.rejected.push((spec.host().to_owned(), e)),
            }
        }
        Ok(parsed)
    }
}

impl WatchList {
    /// Parses the plain-text form, `host1 host2 host3` separated by white
    /// space (the seed's `mosquitto_pub -t watch -m "..."` workflow): the
    /// same validation as the JSON form, no version.
    pub fn parse_plain(payload: &[u8]) -> Result<ParsedWatch, WatchError> {
        if payload.len() > MAX_WATCH_BYTES {
            return Err(WatchError::TooLarge(payload.len()));
        }
        let text = std::str::from_utf8(payload).map_err(|_| WatchError::NotText)?;
        let mut parsed = ParsedWatch::default();
        let mut seen = std::collections::HashSet::new();
        for word in text.split_ascii_whitespace() {
            match word.parse::<Target>() {
                Ok(t) => {
                    if seen.insert(t.clone()) {
                        parsed.targets.push(t);
                    }
                }
                Err(e) => parsed.rejected.push((word.to_owned(), e)),
            }
        }
        Ok(parsed)
    }
}

/// Round-trip time statistics of one round, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttStats {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub stddev: f64,
}

impl RttStats {
    /// Statistics over the echoes that came back; `None` when none did.
    pub fn from_rtts(rtts: &[Option<f64>]) -> Option<Self> {
        let got: Vec<f64> = rtts.iter().flatten().copied().collect();
        if got.is_empty() {
            return None;
        }
        let n = got.len() as f64;
        let avg = got.iter().sum::<f64>() / n;
        let var = got.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / n;
        // Microsecond precision: more digits would be noise.
        let us = |x: f64| (x * 1000.0).round() / 1000.0;
        Some(RttStats {
            min: got.iter().copied().fold(f64::INFINITY, f64::min),
            avg: us(avg),
            max: got.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            stddev: us(var.sqrt()),
        })
    }
}

/// Payload of `ping/{target}`: one round of one agent towards one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    /// Agent name.
    pub agent: String,
    /// Agent labels, copied into every result.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Target exactly as written in `watch`.
    pub target: String,
    /// Address pinged this round; `None` when the name did not resolve.
    pub addr: Option<IpAddr>,
    /// Start of the round, RFC 3339 UTC.
    pub timestamp: String,
    /// Seconds between rounds.
    pub interval: f64,
    /// Echo requests sent; one that could not be sent (a local firewall,
    /// no route) counts too, as lost (`error` says why).
    pub sent: u32,
    /// Echo replies received.
    pub received: u32,
    /// Statistics in milliseconds; `None` when nothing came back.
    pub rtt: Option<RttStats>,
    /// One entry per echo in send order: milliseconds, or `None` if lost.
    pub rtts: Vec<Option<f64>>,
    /// Set when the name did not resolve or sending failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PingResult {
    /// The identity of a result: the same result delivered twice has the
    /// same key.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.agent, &self.target, &self.timestamp)
    }
}

/// Why an agent's lifecycle notice was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RipReason {
    /// The broker published the last will: the agent vanished.
    Lost,
    /// The agent stopped cleanly.
    Shutdown,
    /// The agent is connected (contract v2): published retained on every
    /// connect and after every applied `watch` list.
    #[default]
    Online,
}

impl RipReason {
    /// The wire name (`lost`, `shutdown`, `online`), as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RipReason::Lost => "lost",
            RipReason::Shutdown => "shutdown",
            RipReason::Online => "online",
        }
    }
}

/// Payload of `rip/agent/{agent}`: the agent's presence, retained (contract
/// v2; v1 agents send `lost` and `shutdown` only, without `instance`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rip {
    pub agent: String,
    pub reason: RipReason,
    /// When the agent's session with this broker started (RFC 3339 UTC,
    /// milliseconds): with `instance` it identifies the connection, and
    /// with `agent` and `reason` the notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Random per agent process: tells a restarted agent, or two agents of
    /// one name, apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The broker this session is on (`host:port`), in `online` notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// The `version` of the `watch` list the agent applied, in `online`
    /// notices (absent before the first list, and for plain-text lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_version: Option<String>,
}

/// Prefix of the retained verdicts on targets: `verdict/target/{target}`.
pub const VERDICT_TARGET_PREFIX: &str = "verdict/target/";
/// Prefix of the retained verdicts on agents: `verdict/agent/{agent}`.
pub const VERDICT_AGENT_PREFIX: &str = "verdict/agent/";

/// How one round looked from one agent (see `docs/protocol.md`, levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundState {
    /// Every echo answered (loss at or under the lossy level), rtt under the slow level.
    Up,
    /// Answered, but the average rtt is over the slow level.
    Slow,
    /// Some replies, but the loss is over the lossy level.
    Lossy,
    /// No reply at all, or no address.
    Down,
}

impl RoundState {
    /// Anything but `up`.
    pub fn is_bad(self) -> bool {
        self != RoundState::Up
    }

    /// The wire name (`up`, `slow`, `lossy`, `down`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoundState::Up => "up",
            RoundState::Slow => "slow",
            RoundState::Lossy => "lossy",
            RoundState::Down => "down",
        }
    }
}

/// State of a target in its verdict: a round state, or `unknown` when no
/// agent reported on it recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Up,
    Slow,
    Lossy,
    Down,
    Unknown,
}

impl From<RoundState> for TargetState {
    fn from(s: RoundState) -> Self {
        match s {
            RoundState::Up => TargetState::Up,
            RoundState::Slow => TargetState::Slow,
            RoundState::Lossy => TargetState::Lossy,
            RoundState::Down => TargetState::Down,
        }
    }
}

/// Whose fault a bad view of a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// Nothing is wrong (or nothing is known).
    None,
    /// Most agents, across providers, see the target bad.
    Target,
    /// The bad view is confined to single agents.
    Agent,
    /// The bad view is confined to the agents of one provider.
    Provider,
}

/// Payload of the retained `verdict/target/{target}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetVerdict {
    pub target: String,
    pub state: TargetState,
    pub cause: Cause,
    /// Agents whose latest round of this target was not `up`.
    pub agents_bad: u32,
    /// Agents that reported on this target recently.
    pub agents_total: u32,
    /// Distinct `provider` labels among the bad agents.
    pub providers_bad: u32,
    /// When this state began: RFC 3339 UTC, from the rounds' timestamps.
    pub since: String,
    /// The provider at fault, when `cause` is `provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// State of an agent in its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Its view agrees with its peers'.
    Ok,
    /// "It's me": most of its targets look bad to it while peers see them fine.
    Trouble,
    /// It vanished (last will, or silent for three intervals).
    Lost,
    /// It stopped cleanly.
    Stopped,
}

/// Payload of the retained `verdict/agent/{agent}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVerdict {
    pub agent: String,
    pub state: AgentState,
    /// When this state began, RFC 3339 UTC.
    pub since: String,
    /// A short human explanation.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_that_cannot_be_topic_levels_are_refused() {
        for bad in ["", "a+b", "a#", "a/b", "a\0b", "a b", "x\n"] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} accepted");
        }
        assert_eq!("a".repeat(254).parse::<Target>(), Err(TargetError::TooLong));
        assert!("a".repeat(253).parse::<Target>().is_ok());
    }

    #[test]
    fn multicast_broadcast_unspecified_are_refused() {
        for bad in [
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "ff02::1",
            "::",
            "[ff02::1]",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "::ffff:0.0.0.0",
            "[::ffff:224.0.0.1]",
            "::224.0.0.1",
            "::255.255.255.255",
        ] {
            assert!(
                matches!(bad.parse::<Target>(), Err(TargetError::ForbiddenAddress(_))),
                "{bad} accepted"
            );
        }
        for good in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "example.com",
            "192.0.2.7",
        ] {
            assert!(good.parse::<Target>().is_ok(), "{good} refused");
        }
    }

    #[test]
    fn watch_accepts_strings_and_objects_and_reports_rejects() {
        let p = WatchList::parse(
            br#"{"targets": ["example.com", "192.0.2.7", {"host": "debian.org", "x": 1}, "a/b", "example.com"], "version": "v1"}"#,
        )
        .unwrap();
        let names: Vec<_> = p.targets.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["example.com", "192.0.2.7", "debian.org"]);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.version.as_deref(), Some("v1"));
    }

    #[test]
    fn empty_watch_means_no_targets_and_garbage_is_an_error() {
        assert!(WatchList::parse(b"").unwrap().targets.is_empty());
        assert!(WatchList::parse(b"{not json").is_err());
        assert!(WatchList::parse(br#"{"targets": 3}"#).is_err());
        let big = vec![b' '; MAX_WATCH_BYTES + 1];
        assert!(matches!(
            WatchList::parse(&big),
            Err(WatchError::TooLarge(_))
        ));
    }

    #[test]
    fn plain_text_watch_is_validated_like_json() {
        let p = WatchList::parse(b"  example.com\t192.0.2.7\n a/b example.com [::1] 224.0.0.1\r\n")
            .unwrap();
        let names: Vec<_> = p.targets.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["example.com", "192.0.2.7", "[::1]"]);
        let bad: Vec<_> = p.rejected.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(bad, ["a/b", "224.0.0.1"]);
        assert_eq!(p.version, None);
        // Not text; too large; a word longer than a host name.
        assert!(matches!(
            WatchList::parse(b"a \xff\xfe b"),
            Err(WatchError::NotText)
        ));
        let mut big = b"a ".repeat(MAX_WATCH_BYTES / 2);
        big.push(b'b');
        assert!(matches!(
            WatchList::parse(&big),
            Err(WatchError::TooLarge(_))
        ));
        let long = "a".repeat(300);
        assert_eq!(
            WatchList::parse(long.as_bytes()).unwrap().rejected[0].1,
            TargetError::TooLong
        );
        assert!(matches!(
            WatchList::parse(br#" ["a", "b"]"#),
            Err(WatchError::NotAnObject)
        ));
        assert!(matches!(
            WatchList::parse(br#""a b""#),
            Err(WatchError::NotAnObject)
        ));
        // A JSON object stays JSON, even a broken one.
        assert!(WatchList::parse(b" {\"targets\": [").is_err());
    }

    #[test]
    fn rtt_stats() {
        assert_eq!(RttStats::from_rtts(&[None, None]), None);
        let s = RttStats::from_rtts(&[Some(1.0), None, Some(3.0)]).unwrap();
        assert_eq!((s.min, s.avg, s.max, s.stddev), (1.0, 2.0, 3.0, 1.0));
    }

    #[test]
    fn result_round_trips_and_rip_is_lowercase() {
        let r = PingResult {
            agent: "a".into(),
            labels: BTreeMap::new(),
            target: "t".into(),
            addr: None,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            interval: 60.0,
            sent: 0,
            received: 0,
            rtt: None,
            rtts: vec![],
            error: Some("resolve failed".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<PingResult>(&json).unwrap(), r);
        let rip = serde_json::to_string(&Rip {
            agent: "a".into(),
            reason: RipReason::Lost,
            ..Rip::default()
        })
        .unwrap();
        assert_eq!(rip, r#"{"agent":"a","reason":"lost"}"#);
        for r in [RipReason::Lost, RipReason::Shutdown, RipReason::Online] {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
