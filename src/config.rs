//! Configuration files: strict serde structs (`Raw*`, unknown keys refused)
//! validated once into the settings the daemons run on.
//!
//! Every error names the file and the key (`ping.interval`), and maps to exit
//! status 78 (EX_CONFIG) at start.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::protocol::Target;

/// Default location of the agent's file.
pub const AGENT_CONFIG_PATH: &str = "/etc/swarming/agent.yaml";
/// Default location of the indexer's file.
pub const INDEXER_CONFIG_PATH: &str = "/etc/swarming/indexer.yaml";
/// Default MQTT port.
pub const MQTT_PORT: u16 = 1883;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    fn invalid(file: &Path, key: &str, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message: message.to_string(),
        }
    }
}

/// A duration written `500ms`, `2s`, `1m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. 500ms, 2s, 1m"
            ))
        })
    }
}

/// An MQTT broker address: `host`, `host:port`, `[v6]:port` or
/// `mqtt://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Broker {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Broker {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let rest = if let Some((scheme, rest)) = s.split_once("://") {
            match scheme {
                "mqtt" | "tcp" => rest,
                "mqtts" | "ssl" | "tls" => {
                    return Err(format!(
                        "{s:?}: TLS brokers ({scheme}://) are not supported yet; use mqtt://"
                    ))
                }
                _ => return Err(format!("{s:?}: unknown scheme {scheme:?}; use mqtt://")),
            }
        } else {
            s
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: missing ']' after IPv6 address"))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{s:?}: unexpected {after:?} after ']'")),
            }
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 address without a port.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        if host.contains(['/', '@', ' ', '?', '#']) {
            return Err(format!("{s:?}: invalid host {host:?}"));
        }
        let port = match port {
            None => MQTT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("{s:?}: invalid port {p:?}")),
                Ok(p) => p,
            },
        };
        Ok(Broker {
            host: host.to_owned(),
            port,
        })
    }
}

/// Parses a list of broker strings, naming the key of the first bad one.
pub fn parse_brokers(file: &Path, key: &str, raw: &[String]) -> Result<Vec<Broker>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::invalid(file, key, "the broker list is empty"));
    }
    let mut out: Vec<Broker> = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let broker = b
            .parse::<Broker>()
            .map_err(|e| ConfigError::invalid(file, &format!("{key}[{i}]"), e))?;
        if !out.contains(&broker) {
            out.push(broker);
        }
    }
    Ok(out)
}

/// Log destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// journald when stderr is the journal, else stderr.
    #[default]
    Auto,
    Journald,
    Stderr,
    Syslog,
}

/// `log:` section, common to both daemons.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter.
    pub level: String,
    pub target: LogTarget,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            target: LogTarget::Auto,
        }
    }
}

/// Reads and deserializes a YAML file strictly. A missing file at the
/// default path yields the defaults (`missing_ok`).
fn read_yaml<T: DeserializeOwned + Default>(
    file: &Path,
    missing_ok: bool,
) -> Result<T, ConfigError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                file: file.to_owned(),
                source,
            })
        }
    };
    parse_yaml(file, &text)
}

/// Deserializes YAML text; the error names the key path.
pub fn parse_yaml<T: DeserializeOwned + Default>(
    file: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    // A file holding only comments is an empty document: defaults.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
    {
        return Ok(T::default());
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            "(top level)".to_owned()
        } else {
            path
        };
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_yaml prefixes its own (shorter) path: drop it, ours is better.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') && key.starts_with(prefix) {
                message = rest.to_owned();
            }
        }
        // serde_yaml appends " at line L column C"; keep it: it helps.
        if let Some(loc) = inner.location() {
            if !message.contains("line") {
                message = format!("{message} (line {}, column {})", loc.line(), loc.column());
            }
        }
        ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        }
    })
}

/// The machine's host name, the default agent and indexer name.
pub fn hostname() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A name usable in a topic level and a client id.
fn check_name(file: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::invalid(
            file,
            key,
            "must not be empty (the host name is used when absent)",
        ));
    }
    if name.len() > 128 {
        return Err(ConfigError::invalid(file, key, "longer than 128 bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/' | '$') || c.is_control() || c.is_whitespace())
    {
        return Err(ConfigError::invalid(
            file,
            key,
            format!("contains {c:?}, which cannot stand in an MQTT topic"),
        ));
    }
    Ok(())
}

fn positive(file: &Path, key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(file, key, "must be greater than zero"));
    }
    Ok(d)
}

/// MQTT keepalive: rumqttc takes whole seconds, at least 1.
fn keepalive(file: &Path, key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d < Duration::from_secs(1) || d > Duration::from_secs(65535) {
        return Err(ConfigError::invalid(
            file,
            key,
            "must be between 1s and 65535s",
        ));
    }
    Ok(Duration::from_secs(d.as_secs()))
}

// ---------------------------------------------------------------- agent

/// `/etc/swarming/agent.yaml` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAgentConfig {
    /// Agent name; default: the host name.
    pub name: Option<String>,
    /// Copied into every result.
    pub labels: BTreeMap<String, String>,
    /// Brokers, tried in a shuffled order; default `[localhost]`.
    pub brokers: Vec<String>,
    /// MQTT keepalive; a broker silent for about twice this is left.
    pub keepalive: Dur,
    pub ping: RawPingConfig,
    pub limits: RawLimits,
    pub log: LogConfig,
}

impl Default for RawAgentConfig {
    fn default() -> Self {
        RawAgentConfig {
            name: None,
            labels: BTreeMap::new(),
            brokers: vec!["localhost".into()],
            keepalive: Dur(Duration::from_secs(15)),
            ping: RawPingConfig::default(),
            limits: RawLimits::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPingConfig {
    /// Time between two rounds towards one target.
    pub interval: Dur,
    /// Echo requests per round.
    pub count: u32,
    /// How long to wait for each reply.
    pub timeout: Dur,
}

impl Default for RawPingConfig {
    fn default() -> Self {
        RawPingConfig {
            interval: Dur(Duration::from_secs(60)),
            count: 5,
            timeout: Dur(Duration::from_secs(2)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Targets beyond this many are cut (and logged).
    pub max_targets: usize,
    /// Echo requests per second, whole agent.
    pub max_rate: f64,
    /// Results kept in memory while no broker is connected; oldest dropped.
    pub max_queued: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_targets: 1000,
            max_rate: 50.0,
            max_queued: 10_000,
        }
    }
}

/// Ping settings, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingSettings {
    pub interval: Duration,
    pub count: u32,
    pub timeout: Duration,
}

impl PingSettings {
    /// Time between two echoes of one round: one second like ping(8), less
    /// when the round would not fit in the interval.
    pub fn spacing(&self) -> Duration {
        let budget = self.interval.saturating_sub(self.timeout);
        Duration::from_secs(1).min(budget / self.count.max(1))
    }
}

/// The agent's validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub file: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub brokers: Vec<Broker>,
    pub keepalive: Duration,
    pub ping: PingSettings,
    pub max_targets: usize,
    pub max_rate: f64,
    pub max_queued: usize,
    pub log: LogConfig,
}

impl AgentSettings {
    /// Loads and validates `file`. A missing file is fine when
    /// `missing_ok` (the default path): defaults apply.
    pub fn load(file: &Path, missing_ok: bool) -> Result<Self, ConfigError> {
        let raw: RawAgentConfig = read_yaml(file, missing_ok)?;
        Self::validate(file, raw)
    }

    /// Parses YAML text as if read from `file`.
    pub fn from_str(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::validate(file, parse_yaml(file, text)?)
    }

    pub fn validate(file: &Path, raw: RawAgentConfig) -> Result<Self, ConfigError> {
        let name = raw.name.unwrap_or_else(hostname);
        check_name(file, "name", &name)?;
        for k in raw.labels.keys() {
            if k.is_empty() || k.contains(['.', ' ']) {
                return Err(ConfigError::invalid(
                    file,
                    &format!("labels.{k}"),
                    "label names must be non-empty, without dots or spaces",
                ));
            }
        }
        let brokers = parse_brokers(file, "brokers", &raw.brokers)?;
        let keepalive = keepalive(file, "keepalive", raw.keepalive.0)?;
        let interval = positive(file, "ping.interval", raw.ping.interval.0)?;
        let timeout = positive(file, "ping.timeout", raw.ping.timeout.0)?;
        if raw.ping.count == 0 || raw.ping.count > 100 {
            return Err(ConfigError::invalid(
                file,
                "ping.count",
                "must be between 1 and 100",
            ));
        }
        if timeout >= interval {
            return Err(ConfigError::invalid(
                file,
                "ping.timeout",
                "must be shorter than ping.interval",
            ));
        }
        if interval > Duration::from_secs(86_400) {
            return Err(ConfigError::invalid(
                file,
                "ping.interval",
                "must be at most 1 day",
            ));
        }
        if raw.limits.max_targets == 0 {
            return Err(ConfigError::invalid(
                file,
                "limits.max_targets",
                "must be at least 1",
            ));
        }
        if !(raw.limits.max_rate.is_finite() && raw.limits.max_rate >= 0.1) {
            return Err(ConfigError::invalid(
                file,
                "limits.max_rate",
                "must be at least 0.1 echo requests per second",
            ));
        }
        if raw.limits.max_queued == 0 {
            return Err(ConfigError::invalid(
                file,
                "limits.max_queued",
                "must be at least 1",
            ));
        }
        Ok(AgentSettings {
            file: file.to_owned(),
            name,
            labels: raw.labels,
            brokers,
            keepalive,
            ping: PingSettings {
                interval,
                count: raw.ping.count,
                timeout,
            },
            max_targets: raw.limits.max_targets,
            max_rate: raw.limits.max_rate,
            max_queued: raw.limits.max_queued,
            log: raw.log,
        })
    }
}

// ---------------------------------------------------------------- indexer

/// `/etc/swarming/indexer.yaml` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIndexerConfig {
    /// Indexer name, used in MQTT client ids; default: the host name.
    pub name: Option<String>,
    /// Every broker; the indexer connects to all of them.
    pub brokers: Vec<String>,
    /// MQTT keepalive.
    pub keepalive: Dur,
    /// Published on `watch` (retained) on every broker.
    pub targets: Vec<String>,
    /// Where documents go; absent: no Elasticsearch output.
    pub elasticsearch: Option<RawElasticsearch>,
    /// Optional NDJSON file output.
    pub file: Option<RawFileOutput>,
    /// Durable spool and other state.
    pub state_dir: PathBuf,
    /// Spool size budget; the oldest results are dropped past it.
    pub spool_max_bytes: u64,
    pub log: LogConfig,
}

impl Default for RawIndexerConfig {
    fn default() -> Self {
        RawIndexerConfig {
            name: None,
            brokers: vec!["localhost".into()],
            keepalive: Dur(Duration::from_secs(15)),
            targets: Vec::new(),
            elasticsearch: None,
            file: None,
            state_dir: PathBuf::from("/var/lib/swarming"),
            spool_max_bytes: 1024 * 1024 * 1024,
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawElasticsearch {
    /// Base URL, e.g. `http://localhost:9200`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Elasticsearch API key (the base64 `id:key` form).
    pub api_key: Option<String>,
    /// Destination data stream; `heartbeat-8*` is what Kibana 8's Uptime app reads by default.
    pub index: String,
    /// Documents per bulk request.
    pub batch_size: usize,
    /// Bytes per bulk request (uncompressed).
    pub batch_bytes: usize,
    /// Longest a document waits before its batch is sent.
    pub flush_interval: Dur,
    /// Per-request timeout.
    pub timeout: Dur,
}

impl Default for RawElasticsearch {
    fn default() -> Self {
        RawElasticsearch {
            url: "http://localhost:9200".into(),
            username: None,
            password: None,
            api_key: None,
            index: "heartbeat-8-swarming".into(),
            batch_size: 1000,
            batch_bytes: 5 * 1024 * 1024,
            flush_interval: Dur(Duration::from_secs(1)),
            timeout: Dur(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFileOutput {
    /// NDJSON file; rotated to `PATH.1` ... when it reaches `max_bytes`.
    pub path: PathBuf,
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

impl Default for RawFileOutput {
    fn default() -> Self {
        RawFileOutput {
            path: PathBuf::from("/var/lib/swarming/results.ndjson"),
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// Credentials for Elasticsearch.
#[derive(Clone, PartialEq, Eq)]
pub enum EsAuth {
    None,
    Basic { username: String, password: String },
    ApiKey(String),
}

impl fmt::Debug for EsAuth {
    // Never print secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EsAuth::None => f.write_str("None"),
            EsAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            EsAuth::ApiKey(_) => f.write_str("ApiKey(***)"),
        }
    }
}

/// Elasticsearch output, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EsSettings {
    /// Base URL without a trailing slash.
    pub url: String,
    pub auth: EsAuth,
    pub index: String,
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub flush_interval: Duration,
    pub timeout: Duration,
}

/// File output, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSettings {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
}

/// The indexer's validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexerSettings {
    pub file: PathBuf,
    pub name: String,
    pub brokers: Vec<Broker>,
    pub keepalive: Duration,
    pub targets: Vec<Target>,
    pub elasticsearch: Option<EsSettings>,
    pub file_output: Option<FileSettings>,
    pub state_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub log: LogConfig,
}

impl IndexerSettings {
    pub fn load(file: &Path, missing_ok: bool) -> Result<Self, ConfigError> {
        let raw: RawIndexerConfig = read_yaml(file, missing_ok)?;
        Self::validate(file, raw)
    }

    pub fn from_str(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::validate(file, parse_yaml(file, text)?)
    }

    pub fn validate(file: &Path, raw: RawIndexerConfig) -> Result<Self, ConfigError> {
        let name = raw.name.unwrap_or_else(hostname);
        check_name(file, "name", &name)?;
        let brokers = parse_brokers(file, "brokers", &raw.brokers)?;
        let keepalive = keepalive(file, "keepalive", raw.keepalive.0)?;
        let mut targets: Vec<Target> = Vec::with_capacity(raw.targets.len());
        for (i, t) in raw.targets.iter().enumerate() {
            let t = t.parse::<Target>().map_err(|e| {
                ConfigError::invalid(file, &format!("targets[{i}]"), format!("{t:?}: {e}"))
            })?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        // Agents refuse a `watch` payload over MAX_WATCH_BYTES: say so now,
        // not when every agent ignores the list.
        let watch_bytes: usize = targets.iter().map(|t| t.as_str().len() + 3).sum::<usize>() + 64;
        if watch_bytes > crate::protocol::MAX_WATCH_BYTES {
            return Err(ConfigError::invalid(
                file,
                "targets",
                format!(
                    "{} targets make a watch message of about {watch_bytes} bytes, over the {}-byte limit agents accept",
                    targets.len(),
                    crate::protocol::MAX_WATCH_BYTES
                ),
            ));
        }
        let elasticsearch = raw
            .elasticsearch
            .map(|es| validate_es(file, es))
            .transpose()?;
        let file_output = raw
            .file
            .map(|f| {
                if f.max_bytes < 4096 {
                    return Err(ConfigError::invalid(
                        file,
                        "file.max_bytes",
                        "must be at least 4096",
                    ));
                }
                if f.path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(file, "file.path", "must not be empty"));
                }
                Ok(FileSettings {
                    path: f.path,
                    max_bytes: f.max_bytes,
                    keep: f.keep,
                })
            })
            .transpose()?;
        if raw.spool_max_bytes < 1024 * 1024 {
            return Err(ConfigError::invalid(
                file,
                "spool_max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !raw.state_dir.is_absolute() {
            return Err(ConfigError::invalid(
                file,
                "state_dir",
                "must be an absolute path",
            ));
        }
        Ok(IndexerSettings {
            file: file.to_owned(),
            name,
            brokers,
            keepalive,
            targets,
            elasticsearch,
            file_output,
            state_dir: raw.state_dir,
            spool_max_bytes: raw.spool_max_bytes,
            log: raw.log,
        })
    }
}

fn validate_es(file: &Path, es: RawElasticsearch) -> Result<EsSettings, ConfigError> {
    let url = es.url.trim().trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len()
    {
        return Err(ConfigError::invalid(
            file,
            "elasticsearch.url",
            format!("{:?}: must be an http:// or https:// URL", es.url),
        ));
    }
    let auth = match (es.username, es.password, es.api_key) {
        (None, None, None) => EsAuth::None,
        (Some(username), Some(password), None) => EsAuth::Basic { username, password },
        (None, None, Some(key)) => EsAuth::ApiKey(key),
        (Some(_), None, _) => {
            return Err(ConfigError::invalid(
                file,
                "elasticsearch.password",
                "username given without password",
            ))
        }
        (None, Some(_), _) => {
            return Err(ConfigError::invalid(
                file,
                "elasticsearch.username",
                "password given without username",
            ))
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                "elasticsearch.api_key",
                "give either api_key or username/password, not both",
            ))
        }
    };
    let index = es.index;
    if index.is_empty()
        || index != index.to_lowercase()
        || index.starts_with(['-', '_', '+', '.'])
        || index.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':'])
    {
        return Err(ConfigError::invalid(
            file,
            "elasticsearch.index",
            format!("{index:?} is not a valid index or data stream name"),
        ));
    }
    if es.batch_size == 0 {
        return Err(ConfigError::invalid(
            file,
            "elasticsearch.batch_size",
            "must be at least 1",
        ));
    }
    if es.batch_bytes < 1024 {
        return Err(ConfigError::invalid(
            file,
            "elasticsearch.batch_bytes",
            "must be at least 1024",
        ));
    }
    Ok(EsSettings {
        url,
        auth,
        index,
        batch_size: es.batch_size,
        batch_bytes: es.batch_bytes,
        flush_interval: positive(file, "elasticsearch.flush_interval", es.flush_interval.0)?,
        timeout: positive(file, "elasticsearch.timeout", es.timeout.0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(text: &str) -> Result<AgentSettings, ConfigError> {
        AgentSettings::from_str(Path::new("/etc/swarming/agent.yaml"), text)
    }

    fn err(text: &str) -> String {
        agent(text).unwrap_err().to_string()
    }

    #[test]
    fn brokers_parse_in_every_documented_form() {
        let b = |s: &str| s.parse::<Broker>();
        assert_eq!(
            b("mqtt1.example.net").unwrap(),
            Broker {
                host: "mqtt1.example.net".into(),
                port: 1883
            }
        );
        assert_eq!(b("h:1884").unwrap().port, 1884);
        assert_eq!(b("mqtt://10.0.0.3:1883").unwrap().host, "10.0.0.3");
        assert_eq!(
            b("[::1]:1884").unwrap(),
            Broker {
                host: "::1".into(),
                port: 1884
            }
        );
        assert_eq!(b("::1").unwrap().port, 1883);
        assert!(b("mqtts://h:8883").unwrap_err().contains("TLS"));
        assert!(b("h:0").is_err());
        assert!(b("h:99999").is_err());
        assert!(b("").is_err());
        assert!(b("http://h").is_err());
    }

    #[test]
    fn the_issue_example_parses() {
        let s = agent(
            "name: probe-paris-1\nlabels: {provider: ovh, location: Paris}\nbrokers: [mqtt1.example.net, \"mqtt2.example.net:1884\", \"mqtt://10.0.0.3:1883\"]\nkeepalive: 15s\nping: {interval: 60s, count: 5, timeout: 2s}\nlimits: {max_targets: 1000, max_rate: 50}\n",
        )
        .unwrap();
        assert_eq!(s.name, "probe-paris-1");
        assert_eq!(s.brokers.len(), 3);
        assert_eq!(s.ping.interval, Duration::from_secs(60));
        assert_eq!(s.labels["location"], "Paris");
        assert_eq!(s.max_rate, 50.0);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = err("ping: {interval: 60s, cuont: 5}\n");
        assert!(
            e.starts_with("/etc/swarming/agent.yaml: ping.cuont: unknown field"),
            "{e}"
        );
        let e = err("ping: {interval: soon}\n");
        assert!(
            e.starts_with("/etc/swarming/agent.yaml: ping.interval: "),
            "{e}"
        );
        let e = err("brokers: []\n");
        assert!(e.contains(": brokers: "), "{e}");
        let e = err("brokers: [ok, \"mqtts://x\"]\n");
        assert!(e.contains(": brokers[1]: "), "{e}");
        let e = err("bogus: 1\n");
        assert!(e.contains(": bogus: unknown field"), "{e}");
        let e = err("ping: {interval: 1s, timeout: 2s}\n");
        assert!(e.contains(": ping.timeout: "), "{e}");
        let e = err("name: a/b\n");
        assert!(e.contains(": name: "), "{e}");
    }

    #[test]
    fn empty_file_and_missing_default_file_give_defaults() {
        let s = agent("# nothing\n").unwrap();
        assert_eq!(
            s.brokers,
            vec![Broker {
                host: "localhost".into(),
                port: 1883
            }]
        );
        assert_eq!(s.ping.count, 5);
        let s = AgentSettings::load(Path::new("/nonexistent/agent.yaml"), true).unwrap();
        assert_eq!(s.ping.timeout, Duration::from_secs(2));
        assert!(AgentSettings::load(Path::new("/nonexistent/agent.yaml"), false).is_err());
    }

    #[test]
    fn spacing_fits_the_round_in_the_interval() {
        let p = PingSettings {
            interval: Duration::from_secs(60),
            count: 5,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(p.spacing(), Duration::from_secs(1));
        let p = PingSettings {
            interval: Duration::from_secs(1),
            count: 2,
            timeout: Duration::from_millis(500),
        };
        assert_eq!(p.spacing(), Duration::from_millis(250));
    }

    #[test]
    fn indexer_validation() {
        let f = Path::new("/etc/swarming/indexer.yaml");
        let s = IndexerSettings::from_str(f, "brokers: [a, b]\ntargets: [example.com, 192.0.2.7]\nelasticsearch: {url: \"http://es:9200/\", api_key: k}\n").unwrap();
        assert_eq!(s.targets.len(), 2);
        let es = s.elasticsearch.unwrap();
        assert_eq!(es.url, "http://es:9200");
        assert_eq!(es.auth, EsAuth::ApiKey("k".into()));
        assert_eq!(es.index, "heartbeat-8-swarming");
        let e = IndexerSettings::from_str(f, "targets: [ok, \"a/b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(": targets[1]: "), "{e}");
        let long = "a".repeat(200);
        let many: Vec<String> = (0..6_000)
            .map(|i| format!("{long}-{i}.example.net"))
            .collect();
        let e = IndexerSettings::from_str(f, &format!("targets: [{}]\n", many.join(", ")))
            .unwrap_err()
            .to_string();
        assert!(e.contains(": targets: ") && e.contains("limit"), "{e}");
        let e = IndexerSettings::from_str(f, "elasticsearch: {url: es:9200}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(": elasticsearch.url: "), "{e}");
        let e = IndexerSettings::from_str(f, "elasticsearch: {username: u}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(": elasticsearch.password: "), "{e}");
        assert!(!format!(
            "{:?}",
            EsAuth::Basic {
                username: "u".into(),
                password: "secret".into()
            }
        )
        .contains("secret"));
    }
}
