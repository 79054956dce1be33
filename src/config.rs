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

use crate::guard::Rules;
use crate::protocol::Target;
use crate::tls::{ClientAuth, Login, RawTls, TlsSettings};
use crate::watch_sign::{PublicKey, SigningKey};

/// Default location of the agent's file.
pub const AGENT_CONFIG_PATH: &str = "/etc/swarming/agent.yaml";
/// Default location of the indexer's file.
pub const INDEXER_CONFIG_PATH: &str = "/etc/swarming/indexer.yaml";
/// Default MQTT port.
pub const MQTT_PORT: u16 = 1883;
/// Default MQTT-over-TLS port (`mqtts://`).
pub const MQTTS_PORT: u16 = 8883;

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

/// An MQTT broker address: `host`, `host:port`, `[v6]:port`,
/// `mqtt://host:port` or `mqtts://host[:port]` (TLS, port 8883 by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    /// MQTT over TLS.
    pub tls: bool,
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("mqtts://")?;
        }
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
        let (rest, tls) = if let Some((scheme, rest)) = s.split_once("://") {
            match scheme {
                "mqtt" | "tcp" => (rest, false),
                "mqtts" | "ssl" | "tls" => (rest, true),
                _ => {
                    return Err(format!(
                        "{s:?}: unknown scheme {scheme:?}; use mqtt:// or mqtts://"
                    ))
                }
            }
        } else {
            (s, false)
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
            None if tls => MQTTS_PORT,
            None => MQTT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("{s:?}: invalid port {p:?}")),
                Ok(p) => p,
            },
        };
        Ok(Broker {
            host: host.to_owned(),
            port,
            tls,
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

/// Largest configuration file read, in bytes: a target list at the `watch`
/// limit fits several times over.
pub const MAX_CONFIG_BYTES: u64 = 8 * 1024 * 1024;

/// Reads a configuration file: a regular file (a FIFO or `/dev/zero` would
/// block or never end) of at most [`MAX_CONFIG_BYTES`]. `Ok(None)` when it
/// does not exist.
pub fn read_config_file(file: &Path) -> Result<Option<String>, ConfigError> {
    use std::io::Read;
    let err = |source: std::io::Error| ConfigError::Read {
        file: file.to_owned(),
        source,
    };
    let not_regular = || {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    };
    // Checked before opening: opening a FIFO for reading blocks until a
    // writer appears.
    match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => return Err(not_regular()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    let f = std::fs::File::open(file).map_err(err)?;
    // Checked again on what was opened (the path may have changed since).
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} bytes, over the {MAX_CONFIG_BYTES}-byte limit",
                meta.len()
            ),
        )));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("grew over the {MAX_CONFIG_BYTES}-byte limit while read"),
        )));
    }
    Ok(Some(text))
}

/// Reads and deserializes a YAML file strictly. A missing file at the
/// default path yields the defaults (`missing_ok`).
fn read_yaml<T: DeserializeOwned + Default>(
    file: &Path,
    missing_ok: bool,
) -> Result<T, ConfigError> {
    match read_config_file(file)? {
        Some(text) => parse_yaml(file, &text),
        None if missing_ok => Ok(T::default()),
        None => Err(ConfigError::Read {
            file: file.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
        }),
    }
}

/// Log levels accepted in `log.level`, alone or as `module=level`.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks `log.level`: a level, or comma-separated `level` / `module=level`
/// directives. A typo (`eror`) would otherwise read as a module name and
/// silence every log line, warnings included.
fn check_log_level(file: &Path, level: &str) -> Result<(), ConfigError> {
    let bad = |d: &str| {
        ConfigError::invalid(
            file,
            "log.level",
            format!(
                "{d:?} is not a level; write one of {} (or module=level, comma-separated)",
                LOG_LEVELS.join(", ")
            ),
        )
    };
    if level.trim().is_empty() {
        return Err(bad(level));
    }
    for directive in level.split(',') {
        let directive = directive.trim();
        let lvl = match directive.rsplit_once('=') {
            Some((module, lvl)) if !module.trim().is_empty() => lvl,
            Some(_) => return Err(bad(directive)),
            None => directive,
        };
        if !LOG_LEVELS.contains(&lvl.trim().to_ascii_lowercase().as_str()) {
            return Err(bad(directive));
        }
    }
    Ok(())
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

/// Why `name` cannot be an agent or indexer name (a topic level and a
/// client id), or `None` when it can. The indexer refuses results whose
/// `agent` fails this, so both sides agree on what a name is.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty (the host name is used when absent)".into());
    }
    if name.len() > 128 {
        return Some("longer than 128 bytes".into());
    }
    name.chars()
        .find(|c| matches!(c, '+' | '#' | '/' | '$') || c.is_control() || c.is_whitespace())
        .map(|c| format!("contains {c:?}, which cannot stand in an MQTT topic"))
}

/// A name usable in a topic level and a client id.
fn check_name(file: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
    match name_problem(name) {
        Some(why) => Err(ConfigError::invalid(file, key, why)),
        None => Ok(()),
    }
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

/// `tls`, `username` and `password_file`, loaded (files read, key and
/// certificate checked against each other).
/// [`client_auth`] for an indexer: its client certificate must carry the
/// CN the brokers' ACL gives an indexer's rights to (an agent's would
/// connect, then see no results and be refused `watch`).
fn indexer_auth(
    file: &Path,
    tls: Option<RawTls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<ClientAuth, ConfigError> {
    let auth = client_auth(file, tls, username, password_file)?;
    if let Some(cn) = auth.tls.as_ref().and_then(|t| t.cn.as_deref()) {
        if cn != crate::tls::INDEXER_CN {
            return Err(ConfigError::invalid(
                file,
                "tls.cert",
                format!(
                    "the client certificate's CN is {cn:?}; an indexer's must be {:?}, the name the brokers' ACL gives an indexer's rights to (`swarming-certs indexer` makes one)",
                    crate::tls::INDEXER_CN
                ),
            ));
        }
    }
    Ok(auth)
}

fn client_auth(
    file: &Path,
    tls: Option<RawTls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<ClientAuth, ConfigError> {
    let err = |e: crate::tls::TlsError| {
        let key = e.key();
        let text = e.to_string();
        let message = text
            .strip_prefix(&format!("{key}: "))
            .unwrap_or(&text)
            .to_owned();
        ConfigError::invalid(file, key, message)
    };
    let tls = tls.map(TlsSettings::load).transpose().map_err(err)?;
    let login = match (username, password_file) {
        (None, None) => None,
        (Some(u), Some(p)) => {
            if u.is_empty() {
                return Err(ConfigError::invalid(file, "username", "must not be empty"));
            }
            Some(Login::load(u, &p).map_err(err)?)
        }
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                file,
                "password_file",
                "username given without password_file",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                file,
                "username",
                "password_file given without username",
            ))
        }
    };
    Ok(ClientAuth { tls, login })
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
    /// Optional `/metrics` endpoint; absent: off.
    pub http: Option<RawAgentHttp>,
    pub log: LogConfig,
    /// Client certificate, key and CA for `mqtts://` brokers.
    pub tls: Option<RawTls>,
    /// MQTT username; the password is the first line of `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Public keys (`ed25519:BASE64`) whose signed `watch` lists are
    /// applied; empty: any list from anyone is applied.
    pub watch_keys: Vec<String>,
    /// CIDR prefixes the agent may ping; empty: everything not denied.
    pub allow: Vec<String>,
    /// CIDR prefixes the agent never pings, whatever `allow` says.
    pub deny: Vec<String>,
    /// Where the agent keeps the running signed list's sequence.
    pub state_dir: PathBuf,
}

/// The agent's default state directory (systemd's `StateDirectory=`).
pub const AGENT_STATE_DIR: &str = "/var/lib/swarming-agent";

/// Default address of the agent's optional `/metrics` endpoint (next to
/// the indexer's [`INDEXER_HTTP_LISTEN`]).
pub const AGENT_HTTP_LISTEN: &str = "127.0.0.1:7884";

/// The agent's `http:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAgentHttp {
    /// `address:port` (an IP literal), or `off`.
    pub listen: String,
}

impl Default for RawAgentHttp {
    fn default() -> Self {
        RawAgentHttp {
            listen: AGENT_HTTP_LISTEN.into(),
        }
    }
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
            http: None,
            log: LogConfig::default(),
            tls: None,
            username: None,
            password_file: None,
            watch_keys: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            state_dir: PathBuf::from(AGENT_STATE_DIR),
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
    /// Where the optional `/metrics` endpoint listens; `None`: off.
    pub http: Option<std::net::SocketAddr>,
    pub log: LogConfig,
    pub auth: ClientAuth,
    /// Empty: any publisher's list is applied.
    pub watch_keys: Vec<PublicKey>,
    pub rules: Rules,
    /// Where the running signed list's sequence is kept.
    pub state_dir: PathBuf,
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
        let auth = client_auth(file, raw.tls, raw.username, raw.password_file)?;
        // The broker knows the agent by its certificate's CN (the ACL's
        // %u): the name must be that CN, or the agent could not publish
        // its own notices.
        let cn = auth.tls.as_ref().and_then(|t| t.cn.clone());
        let name = match (raw.name, cn) {
            (Some(n), Some(cn)) if n != cn => {
                return Err(ConfigError::invalid(
                    file,
                    "name",
                    format!("{n:?} differs from the CN {cn:?} of the client certificate (tls.cert); remove name or make them equal"),
                ))
            }
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => hostname(),
        };
        check_name(file, "name", &name)?;
        if name == crate::tls::INDEXER_CN {
            return Err(ConfigError::invalid(
                file,
                "name",
                format!("{name:?} is reserved for indexers"),
            ));
        }
        let mut watch_keys = Vec::with_capacity(raw.watch_keys.len());
        for (i, k) in raw.watch_keys.iter().enumerate() {
            watch_keys.push(
                k.parse::<PublicKey>()
                    .map_err(|e| ConfigError::invalid(file, &format!("watch_keys[{i}]"), e))?,
            );
        }
        let prefixes = |key: &str, list: &[String]| {
            Rules::parse_list(list)
                .map_err(|(i, m)| ConfigError::invalid(file, &format!("{key}[{i}]"), m))
        };
        let rules = Rules {
            allow: prefixes("allow", &raw.allow)?,
            deny: prefixes("deny", &raw.deny)?,
        };
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
        check_log_level(file, &raw.log.level)?;
        if !raw.state_dir.is_absolute() {
            return Err(ConfigError::invalid(
                file,
                "state_dir",
                "must be an absolute path",
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
            http: match raw.http {
                Some(h) => parse_listen(file, "http.listen", &h.listen)?,
                None => None,
            },
            log: raw.log,
            auth,
            watch_keys,
            rules,
            state_dir: raw.state_dir,
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
    /// Published on `watch` (retained) on every broker: host names or
    /// addresses, or objects `{host, slow, lossy}` with the target's levels.
    pub targets: Vec<RawTarget>,
    /// Default levels: when a round counts as slow or lossy.
    pub levels: RawLevels,
    /// Where documents go; absent: no Elasticsearch output.
    pub elasticsearch: Option<RawElasticsearch>,
    /// Optional NDJSON file output.
    pub file: Option<RawFileOutput>,
    /// Durable spool and other state.
    pub state_dir: PathBuf,
    /// Spool size budget; the oldest results are dropped past it.
    pub spool_max_bytes: u64,
    /// The operator's HTTP endpoint: page, `/api/state`, `/metrics`.
    pub http: RawHttp,
    pub log: LogConfig,
    /// Client certificate (CN `swarming-indexer`), key and CA for `mqtts://` brokers.
    pub tls: Option<RawTls>,
    /// MQTT username; the password is the first line of `password_file`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Ed25519 private key (PEM) that signs `watch`; absent: unsigned lists.
    pub watch_key: Option<PathBuf>,
}

/// One item of the indexer's `targets`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawTarget {
    Host(String),
    Object(RawTargetLevels),
}

/// A target with its own levels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetLevels {
    pub host: String,
    /// Average rtt over which a round of this target is slow.
    pub slow: Option<Dur>,
    /// Fraction of echoes lost over which a round is lossy (0 to 1).
    pub lossy: Option<f64>,
}

/// `levels:` of indexer.yaml: the defaults for targets that set none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLevels {
    pub slow: Dur,
    pub lossy: f64,
}

impl Default for RawLevels {
    fn default() -> Self {
        RawLevels {
            slow: Dur(Duration::from_millis(
                crate::insight::levels::DEFAULT_SLOW_MS as u64,
            )),
            lossy: crate::insight::levels::DEFAULT_LOSSY,
        }
    }
}

/// A target's own levels, as listed; `None` fields take the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TargetLevels {
    pub slow: Option<Duration>,
    pub lossy: Option<f64>,
}

impl TargetLevels {
    /// These levels over `defaults`.
    pub fn over(&self, defaults: &crate::insight::Levels) -> crate::insight::Levels {
        crate::insight::Levels {
            slow_ms: self
                .slow
                .map_or(defaults.slow_ms, |d| d.as_secs_f64() * 1000.0),
            lossy: self.lossy.unwrap_or(defaults.lossy),
            explicit_slow: self.slow.is_some(),
        }
    }
}

fn slow_level(file: &Path, key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            file,
            key,
            "must be more than 0 and at most 60s",
        ));
    }
    Ok(d)
}

fn lossy_level(file: &Path, key: &str, x: f64) -> Result<f64, ConfigError> {
    if !(0.0..1.0).contains(&x) {
        return Err(ConfigError::invalid(
            file,
            key,
            "must be a fraction of the echoes, from 0 up to (not including) 1",
        ));
    }
    Ok(x)
}

impl Default for RawIndexerConfig {
    fn default() -> Self {
        RawIndexerConfig {
            name: None,
            brokers: vec!["localhost".into()],
            keepalive: Dur(Duration::from_secs(15)),
            targets: Vec::new(),
            levels: RawLevels::default(),
            elasticsearch: None,
            file: None,
            state_dir: PathBuf::from("/var/lib/swarming"),
            spool_max_bytes: 1024 * 1024 * 1024,
            http: RawHttp::default(),
            log: LogConfig::default(),
            tls: None,
            username: None,
            password_file: None,
            watch_key: None,
        }
    }
}

/// Default address of the indexer's HTTP endpoint. Port 7883: outside
/// 9100-9999, the range the Prometheus wiki's "default port allocations"
/// has given out to exporters (all of it), and not in /etc/services.
pub const INDEXER_HTTP_LISTEN: &str = "127.0.0.1:7883";

/// `http:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    /// `address:port` (an IP literal, no name), or `off`.
    pub listen: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: INDEXER_HTTP_LISTEN.into(),
        }
    }
}

/// Parses `http.listen`: an IP literal with a port, or `off` (`None`).
pub fn parse_listen(
    file: &Path,
    key: &str,
    raw: &str,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let raw = raw.trim();
    if raw == "off" {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        ConfigError::invalid(
            file,
            key,
            format!("{raw:?}: write an address and a port, e.g. {INDEXER_HTTP_LISTEN} or [::1]:7883, or off"),
        )
    })
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
    /// Which Kibana app the documents are shaped for: `uptime` (Heartbeat's
    /// shape, `heartbeat-*` data streams) or `synthetics` (plus the fields
    /// the Synthetics app queries, in a `synthetics-icmp-<namespace>` data
    /// stream). See docs/documents.md.
    pub mode: EsMode,
    /// Destination data stream. Default: `heartbeat-8-swarming` (mode
    /// uptime), `synthetics-icmp-swarming` (mode synthetics).
    pub index: Option<String>,
    /// Mode synthetics: the Kibana space whose Synthetics app shows the
    /// checks (`meta.space_id`).
    pub space_id: String,
    /// Documents per bulk request.
    pub batch_size: usize,
    /// Bytes per bulk request (uncompressed).
    pub batch_bytes: usize,
    /// gzip level of bulk request bodies: 1 (fastest) to 9 (smallest), or
    /// 0 to send them uncompressed (less CPU, about 8 times the bytes).
    pub compression_level: u32,
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
            mode: EsMode::Uptime,
            index: None,
            space_id: "default".into(),
            batch_size: 1000,
            batch_bytes: 5 * 1024 * 1024,
            compression_level: 1,
            flush_interval: Dur(Duration::from_secs(1)),
            timeout: Dur(Duration::from_secs(30)),
        }
    }
}

/// Key `elasticsearch.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EsMode {
    #[default]
    Uptime,
    Synthetics,
}

/// Default data stream of mode uptime: Uptime's default index setting
/// covers `heartbeat-8*` in Kibana 8.x and `heartbeat-*` from 8.11 on.
pub const UPTIME_DEFAULT_INDEX: &str = "heartbeat-8-swarming";
/// Default data stream of mode synthetics (namespace `swarming`, apart
/// from Fleet's own `synthetics-icmp-default`).
pub const SYNTHETICS_DEFAULT_INDEX: &str = "synthetics-icmp-swarming";
/// Prefix every mode-synthetics data stream has.
pub const SYNTHETICS_PREFIX: &str = "synthetics-icmp-";

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
    /// Document shape (mode uptime or synthetics, with its namespace and
    /// space).
    pub flavor: crate::document::Flavor,
    pub batch_size: usize,
    pub batch_bytes: usize,
    /// gzip level of bulk bodies (1-9); 0: uncompressed.
    pub compression_level: u32,
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
    /// Levels set per target (targets absent here use `levels`).
    pub target_levels: BTreeMap<Target, TargetLevels>,
    /// Default levels.
    pub levels: crate::insight::Levels,
    pub elasticsearch: Option<EsSettings>,
    pub file_output: Option<FileSettings>,
    pub state_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Where the HTTP endpoint listens; `None`: off.
    pub http: Option<std::net::SocketAddr>,
    pub log: LogConfig,
    pub auth: ClientAuth,
    pub watch_key: Option<std::sync::Arc<SigningKey>>,
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
        let mut target_levels = BTreeMap::new();
        for (i, item) in raw.targets.iter().enumerate() {
            let (host, own) = match item {
                RawTarget::Host(h) => (h, TargetLevels::default()),
                RawTarget::Object(o) => (
                    &o.host,
                    TargetLevels {
                        slow: o
                            .slow
                            .as_ref()
                            .map(|d| slow_level(file, &format!("targets[{i}].slow"), d.0))
                            .transpose()?,
                        lossy: o
                            .lossy
                            .map(|x| lossy_level(file, &format!("targets[{i}].lossy"), x))
                            .transpose()?,
                    },
                ),
            };
            let t = host.parse::<Target>().map_err(|e| {
                ConfigError::invalid(file, &format!("targets[{i}]"), format!("{host:?}: {e}"))
            })?;
            if !targets.contains(&t) {
                if own != TargetLevels::default() {
                    target_levels.insert(t.clone(), own);
                }
                targets.push(t);
            }
        }
        let levels = crate::insight::Levels {
            slow_ms: slow_level(file, "levels.slow", raw.levels.slow.0)?.as_secs_f64() * 1000.0,
            lossy: lossy_level(file, "levels.lossy", raw.levels.lossy)?,
            explicit_slow: false,
        };
        // Agents refuse a `watch` payload over MAX_WATCH_BYTES: say so now,
        // not when every agent ignores the list.
        let watch_bytes: usize = targets.iter().map(|t| t.as_str().len() + 3).sum::<usize>()
            + target_levels.len() * 48
            + 64;
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
        if elasticsearch.is_none() && file_output.is_none() {
            return Err(ConfigError::invalid(
                file,
                "elasticsearch",
                "no output: set elasticsearch (or file) or results are received and dropped",
            ));
        }
        check_log_level(file, &raw.log.level)?;
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
            target_levels,
            levels,
            elasticsearch,
            file_output,
            state_dir: raw.state_dir,
            spool_max_bytes: raw.spool_max_bytes,
            http: parse_listen(file, "http.listen", &raw.http.listen)?,
            log: raw.log,
            auth: indexer_auth(file, raw.tls, raw.username, raw.password_file)?,
            watch_key: raw
                .watch_key
                .map(|k| SigningKey::load(&k).map(std::sync::Arc::new))
                .transpose()
                .map_err(|e| ConfigError::invalid(file, "watch_key", e))?,
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
    let index = es.index.unwrap_or_else(|| {
        match es.mode {
            EsMode::Uptime => UPTIME_DEFAULT_INDEX,
            EsMode::Synthetics => SYNTHETICS_DEFAULT_INDEX,
        }
        .to_owned()
    });
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
    let flavor = match es.mode {
        // The synthetics-icmp-* names get the Synthetics template: only for
        // documents of that shape.
        EsMode::Uptime if index.starts_with(SYNTHETICS_PREFIX) => {
            return Err(ConfigError::invalid(
                file,
                "elasticsearch.index",
                format!(
                    "{index:?} is a Synthetics data stream: set elasticsearch.mode: synthetics"
                ),
            ));
        }
        EsMode::Uptime => crate::document::Flavor::Uptime,
        EsMode::Synthetics => {
            // Data stream naming scheme: type-dataset-namespace, and the
            // namespace has no '-'.
            let namespace = index.strip_prefix(SYNTHETICS_PREFIX).unwrap_or("");
            if namespace.is_empty() || namespace.contains('-') {
                return Err(ConfigError::invalid(
                    file,
                    "elasticsearch.index",
                    format!(
                        "{index:?}: mode synthetics needs a data stream named \
                         {SYNTHETICS_PREFIX}<namespace> (namespace without '-'), e.g. \
                         {SYNTHETICS_DEFAULT_INDEX}"
                    ),
                ));
            }
            let space = &es.space_id;
            if space.is_empty()
                || !space
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            {
                return Err(ConfigError::invalid(
                    file,
                    "elasticsearch.space_id",
                    format!("{space:?} is not a Kibana space id (a-z, 0-9, '_', '-')"),
                ));
            }
            crate::document::Flavor::Synthetics {
                namespace: namespace.to_owned(),
                space_id: space.clone(),
            }
        }
    };
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
    if es.compression_level > 9 {
        return Err(ConfigError::invalid(
            file,
            "elasticsearch.compression_level",
            "must be 0 (uncompressed) to 9",
        ));
    }
    Ok(EsSettings {
        url,
        auth,
        index,
        flavor,
        batch_size: es.batch_size,
        batch_bytes: es.batch_bytes,
        compression_level: es.compression_level,
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
                port: 1883,
                tls: false
            }
        );
        assert_eq!(b("h:1884").unwrap().port, 1884);
        assert_eq!(b("mqtt://10.0.0.3:1883").unwrap().host, "10.0.0.3");
        assert_eq!(
            b("[::1]:1884").unwrap(),
            Broker {
                host: "::1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(b("::1").unwrap().port, 1883);
        assert_eq!(
            b("mqtts://mqtt1.example.net").unwrap(),
            Broker {
                host: "mqtt1.example.net".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(b("ssl://[::1]:8884").unwrap().port, 8884);
        assert_eq!(b("mqtts://h:9").unwrap().to_string(), "mqtts://h:9");
        assert!(b("mqtts://").is_err());
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
        let e = err("brokers: [ok, \"https://x\"]\n");
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
                port: 1883,
                tls: false
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
    fn compression_level_is_gzip_1_by_default_and_0_to_9() {
        let f = Path::new("/etc/swarming/indexer.yaml");
        let es = |text: &str| {
            IndexerSettings::from_str(f, &format!("elasticsearch: {{{text}}}\n"))
                .map(|s| s.elasticsearch.unwrap().compression_level)
                .map_err(|e| e.to_string())
        };
        assert_eq!(es("url: \"http://es:9200\""), Ok(1));
        assert_eq!(es("compression_level: 0"), Ok(0));
        assert_eq!(es("compression_level: 9"), Ok(9));
        for bad in ["10", "-1", "fast"] {
            let e = es(&format!("compression_level: {bad}")).unwrap_err();
            assert!(
                e.starts_with("/etc/swarming/indexer.yaml: elasticsearch.compression_level"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn synthetics_mode_picks_its_data_stream_and_space() {
        let f = Path::new("/etc/swarming/indexer.yaml");
        let es = |text: &str| {
            IndexerSettings::from_str(f, &format!("elasticsearch: {{{text}}}\n"))
                .map(|s| s.elasticsearch.unwrap())
                .map_err(|e| e.to_string())
        };
        let s = es("mode: synthetics").unwrap();
        assert_eq!(s.index, "synthetics-icmp-swarming");
        assert_eq!(
            s.flavor,
            crate::document::Flavor::Synthetics {
                namespace: "swarming".into(),
                space_id: "default".into()
            }
        );
        let s = es("mode: synthetics, index: synthetics-icmp-probes, space_id: ops").unwrap();
        assert_eq!(
            s.flavor,
            crate::document::Flavor::Synthetics {
                namespace: "probes".into(),
                space_id: "ops".into()
            }
        );
        // The uptime default is unchanged; space_id is ignored there.
        assert_eq!(es("mode: uptime").unwrap().index, "heartbeat-8-swarming");
        for (text, key) in [
            (
                "mode: synthetics, index: heartbeat-8-swarming",
                "elasticsearch.index",
            ),
            (
                "mode: synthetics, index: synthetics-icmp-",
                "elasticsearch.index",
            ),
            (
                "mode: synthetics, index: synthetics-icmp-a-b",
                "elasticsearch.index",
            ),
            ("mode: synthetics, space_id: \"\"", "elasticsearch.space_id"),
            ("mode: synthetics, space_id: Ops", "elasticsearch.space_id"),
            ("mode: browser", "elasticsearch.mode"),
            ("index: synthetics-icmp-swarming", "elasticsearch.index"),
        ] {
            let e = es(text).unwrap_err();
            assert!(
                e.starts_with(&format!("/etc/swarming/indexer.yaml: {key}: ")),
                "{text}: {e}"
            );
        }
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
        assert_eq!(es.flavor, crate::document::Flavor::Uptime);
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

    #[test]
    fn log_level_typos_are_errors() {
        for ok in [
            "info",
            "WARN",
            "off",
            "debug,rumqttc=info",
            "swarming::agent=trace",
        ] {
            agent(&format!("log: {{level: \"{ok}\"}}\n")).unwrap();
        }
        for bad in ["eror", "", "info,=debug", "rumqttc=loud", "info,"] {
            let e = agent(&format!("log: {{level: \"{bad}\"}}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(": log.level: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_indexer_without_output_is_a_config_error() {
        let f = Path::new("/etc/swarming/indexer.yaml");
        let e = IndexerSettings::from_str(f, "brokers: [a]\ntargets: [x]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/swarming/indexer.yaml: elasticsearch: no output"),
            "{e}"
        );
        IndexerSettings::from_str(f, "file: {path: /tmp/x.ndjson}\n").unwrap();
    }

    #[test]
    fn http_listens_on_loopback_unless_told_otherwise() {
        let f = Path::new("/etc/swarming/indexer.yaml");
        let out = "file: {path: /tmp/x.ndjson}\n";
        let s = IndexerSettings::from_str(f, out).unwrap();
        assert_eq!(s.http, Some(INDEXER_HTTP_LISTEN.parse().unwrap()));
        assert!(s.http.unwrap().ip().is_loopback());
        let s = IndexerSettings::from_str(f, &format!("{out}http: {{listen: off}}\n")).unwrap();
        assert_eq!(s.http, None);
        let s =
            IndexerSettings::from_str(f, &format!("{out}http: {{listen: \"[::1]:9\"}}\n")).unwrap();
        assert_eq!(s.http, Some("[::1]:9".parse().unwrap()));
        for bad in ["localhost:7883", "127.0.0.1", ""] {
            let e = IndexerSettings::from_str(f, &format!("{out}http: {{listen: \"{bad}\"}}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(": http.listen: "), "{e}");
        }
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // A FIFO would block the open, /dev/zero would never end.
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for p in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let e = AgentSettings::load(p, false).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{}: {e}", p.display());
        }
        let big = dir.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = AgentSettings::load(&big, false).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        assert!(read_config_file(&dir.path().join("absent"))
            .unwrap()
            .is_none());
    }
}
