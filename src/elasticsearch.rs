//! The one module that talks to Elasticsearch or OpenSearch.
//!
//! - [`EsClient::probe`] tells Elasticsearch from OpenSearch and refuses
//!   versions we do not support.
//! - [`EsClient::install_templates`] installs (idempotently) the composable
//!   index template of our data stream and its lifecycle policy.
//! - [`EsClient::bulk`] sends one batch (split in halves on HTTP 413) and
//!   classifies every item by status: done, retry, or dead.
//! - [`EsClient::deliver`] retries the not-yet-done items with exponential
//!   backoff and jitter until every item is done or dead-lettered.
//!
//! Bulk contract (see `/docs/documents.md`): `create` actions with our stable
//! ids; 2xx and 409 (already stored) are done; 429 and 5xx are retried; other
//! 4xx are written to the [`DeadLetter`] file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{EsAuth, EsSettings};
use crate::document::{self, DocumentError};
use crate::protocol::{PingResult, Rip};

/// Name of our composable index template.
pub const TEMPLATE_NAME: &str = crate::kibana::UPTIME_TEMPLATE;
/// Name of our ILM (Elasticsearch) or ISM (OpenSearch) policy.
pub const POLICY_NAME: &str = "swarming";
/// The composable index template (`PUT _index_template/swarming`).
pub const INDEX_TEMPLATE: &str = include_str!("../packaging/elasticsearch/index-template.json");
/// The Elasticsearch ILM policy (`PUT _ilm/policy/swarming`).
pub const ILM_POLICY: &str = include_str!("../packaging/elasticsearch/ilm-policy.json");
/// The OpenSearch ISM policy (`PUT _plugins/_ism/policies/swarming`).
pub const ISM_POLICY: &str = include_str!("../packaging/opensearch/ism-policy.json");
/// File name of the dead-letter file inside the state directory.
pub const DEAD_LETTER_FILE: &str = "dead-letter.ndjson";

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    /// The settings cannot be used (bad URL, bad header characters...). Fatal.
    #[error("elasticsearch settings: {0}")]
    Config(String),
    /// The server is not a supported Elasticsearch or OpenSearch. Fatal.
    #[error("{0}")]
    Unsupported(String),
    /// 401/403: credentials refused or privileges missing. Keep the data and
    /// say so loudly; it will not fix itself until an operator acts.
    #[error(
        "the server refused our credentials or privileges (HTTP {status}): {message}; check \
         elasticsearch.username/password or api_key, and that the role may create documents in \
         the data stream and manage index templates and lifecycle policies"
    )]
    Auth { status: u16, message: String },
    /// A request other than `_bulk` was refused for good (4xx).
    #[error("{what} refused (HTTP {status}): {message}")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
    /// Connection failure, timeout, 429, 5xx, unexpected status: try again later.
    #[error("{0}")]
    Retryable(String),
    /// The server answered something we cannot understand; try again later.
    #[error("malformed answer: {0}")]
    Protocol(String),
}

impl EsError {
    /// Whether trying again later may succeed without an operator.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EsError::Retryable(_) | EsError::Protocol(_))
    }
}

/// `deliver` was cancelled before every item was done or dead. Documents
/// may be delivered again: their ids make duplicates harmless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery cancelled with {pending} documents not stored")]
pub struct Cancelled {
    /// Documents neither done nor dead when cancelled.
    pub pending: usize,
    /// What had been achieved before cancellation.
    pub partial: DeliverReport,
}

/// Which server software answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Elasticsearch,
    OpenSearch,
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distribution::Elasticsearch => "Elasticsearch",
            Distribution::OpenSearch => "OpenSearch",
        })
    }
}

/// What `GET /` told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub distribution: Distribution,
    /// `version.number` as sent.
    pub version: String,
    pub major: u32,
    pub minor: u32,
}

impl ServerInfo {
    /// Tells the distribution and checks the version from the answer to
    /// `GET /` (its `X-Elastic-Product` header and JSON body).
    pub fn from_response(
        elastic_product: Option<&str>,
        body: &Value,
    ) -> Result<ServerInfo, EsError> {
        let number = body
            .pointer("/version/number")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                EsError::Unsupported(
                    "GET / answered without version.number: the URL does not point at \
                     Elasticsearch or OpenSearch"
                        .into(),
                )
            })?;
        let (major, minor) = parse_version(number).ok_or_else(|| {
            EsError::Unsupported(format!("cannot read the server version {number:?}"))
        })?;
        let distribution = body
            .pointer("/version/distribution")
            .and_then(Value::as_str);
        let tagline = body.get("tagline").and_then(Value::as_str);
        let info = |distribution| ServerInfo {
            distribution,
            version: number.to_owned(),
            major,
            minor,
        };
        if distribution == Some("opensearch") {
            // Major 7 is OpenSearch's `compatibility.override_main_response_version`.
            if (1..=3).contains(&major) || (major, minor) == (7, 10) {
                return Ok(info(Distribution::OpenSearch));
            }
            return Err(EsError::Unsupported(format!(
                "OpenSearch {number} is not supported: swarming needs OpenSearch 1.x, 2.x or 3.x \
                 (or Elasticsearch 7.10+, 8.x, 9.x)"
            )));
        }
        let is_es = elastic_product == Some("Elasticsearch")
            || (distribution.is_none() && tagline == Some("You Know, for Search"));
        if !is_es {
            return Err(EsError::Unsupported(format!(
                "the server (version {number}, distribution {}) is neither Elasticsearch nor \
                 OpenSearch",
                distribution.unwrap_or("unknown")
            )));
        }
        if (major == 7 && minor >= 10) || major == 8 || major == 9 {
            Ok(info(Distribution::Elasticsearch))
        } else {
            Err(EsError::Unsupported(format!(
                "Elasticsearch {number} is not supported: swarming needs Elasticsearch 7.10 or \
                 later 7.x, 8.x or 9.x (or OpenSearch 1.x-3.x)"
            )))
        }
    }

    /// Whether the server runs ILM (Elasticsearch) rather than ISM.
    pub fn has_ilm(&self) -> bool {
        self.distribution == Distribution::Elasticsearch
    }
}

fn parse_version(number: &str) -> Option<(u32, u32)> {
    let mut parts = number.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `name` matches a simple `*` wildcard pattern.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return pattern == name,
    };
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    if rest.is_empty() {
        return remaining.is_empty();
    }
    let (last, middle) = match rest.split_last() {
        Some(x) => x,
        None => return remaining.is_empty(),
    };
    for part in middle {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last)
}

/// Adds `index` to the `index_patterns` at `pointer` unless one matches it.
fn add_index_pattern(doc: &mut Value, pointer: &str, index: &str) {
    if let Some(Value::Array(patterns)) = doc.pointer_mut(pointer) {
        let matched = patterns
            .iter()
            .filter_map(Value::as_str)
            .any(|p| pattern_matches(p, index));
        if !matched {
            patterns.push(json!(index));
        }
    }
}

fn builtin(text: &str, what: &str) -> Result<Value, EsError> {
    serde_json::from_str(text).map_err(|e| EsError::Config(format!("built-in {what}: {e}")))
}

/// The index template to install for data stream `index` on `info`'s
/// server: the packaged one, with `index` added to its patterns when none
/// matches it, and without the ILM setting on OpenSearch.
pub fn index_template(info: &ServerInfo, index: &str) -> Result<Value, EsError> {
    let mut t = builtin(INDEX_TEMPLATE, "index template")?;
    add_index_pattern(&mut t, "/index_patterns", index);
    crate::kibana::adapt_template(&mut t, index);
    if !info.has_ilm() {
        if let Some(Value::Object(settings)) = t.pointer_mut("/template/settings/index") {
            settings.remove("lifecycle");
        }
    }
    Ok(t)
}

/// The ILM policy for `info` (Elasticsearch before 7.13 has no
/// `max_primary_shard_size`: it gets `max_size`).
pub fn ilm_policy(info: &ServerInfo) -> Result<Value, EsError> {
    let mut p = builtin(ILM_POLICY, "ILM policy")?;
    if info.major == 7 && info.minor < 13 {
        if let Some(Value::Object(r)) = p.pointer_mut("/policy/phases/hot/actions/rollover") {
            if let Some(size) = r.remove("max_primary_shard_size") {
                r.insert("max_size".into(), size);
            }
        }
    }
    Ok(p)
}

/// The ISM policy matching data stream `index`.
pub fn ism_policy(index: &str) -> Result<Value, EsError> {
    let mut p = builtin(ISM_POLICY, "ISM policy")?;
    add_index_pattern(&mut p, "/policy/ism_template/0/index_patterns", index);
    Ok(p)
}

/// One document to index: its id and its JSON source, serialized once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkDoc {
    id: String,
    source: String,
}

impl BulkDoc {
    /// A document with the given id and source.
    pub fn new(id: impl Into<String>, source: &Value) -> BulkDoc {
        BulkDoc {
            id: id.into(),
            // `Value`'s Display is compact JSON on one line.
            source: source.to_string(),
        }
    }

    /// A document from JSON text (re-serialized compactly, so it fits one
    /// NDJSON line).
    pub fn from_json(id: impl Into<String>, source: &str) -> Result<BulkDoc, serde_json::Error> {
        let v: Value = serde_json::from_str(source)?;
        Ok(BulkDoc::new(id, &v))
    }

    /// The check document of a ping result, with its stable id.
    pub fn from_result(result: &PingResult) -> Result<BulkDoc, DocumentError> {
        let source = document::result_document(result)?;
        Ok(BulkDoc::new(document::doc_id(result), &source))
    }

    /// The check document of a ping result shaped by `shaper` (mode uptime
    /// or synthetics), with its stable id.
    pub fn from_result_as(
        result: &PingResult,
        shaper: &document::CheckShaper,
    ) -> Result<BulkDoc, DocumentError> {
        let source = shaper.document(result)?;
        Ok(BulkDoc::new(document::doc_id(result), &source))
    }

    /// The lifecycle document of an agent notice received at `at`.
    pub fn from_rip(rip: &Rip, at: SystemTime) -> BulkDoc {
        BulkDoc::new(
            document::rip_doc_id(rip, at),
            &document::rip_document(rip, at),
        )
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The source as compact JSON text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// What became of one item of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Stored: now (2xx) or before (`duplicate`: 409 on `create`).
    Done { duplicate: bool },
    /// Not stored yet; worth trying again (429, 5xx, or the request failed
    /// part-way through a split, `status` None).
    Retry { status: Option<u16>, reason: String },
    /// Refused for good (other 4xx, or 413 for a single document).
    Dead { status: u16, reason: String },
}

/// Counts of one [`EsClient::deliver`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliverReport {
    /// Documents stored by this call.
    pub indexed: usize,
    /// Documents that were already stored (409).
    pub duplicates: usize,
    /// Documents refused for good and sent to the dead-letter file.
    pub dead: usize,
    /// Bulk attempts after the first.
    pub retries: usize,
    /// Dead documents that could not be written to the dead-letter file.
    pub dead_letter_errors: usize,
}

/// Exponential backoff between delivery attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(64),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (0-based): `initial * 2^attempt`
    /// capped at `max`, with jitter taking it down to half that.
    pub fn delay(&self, attempt: u32) -> Duration {
        crate::backoff::delay(self.initial, self.max, attempt)
    }
}

/// Appends refused documents to an NDJSON file, one line each:
/// `{"time", "reason", "status", "id", "document"}`.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    file: File,
    count: u64,
}

impl DeadLetter {
    /// Opens (creating it if needed) `path` for appending.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<DeadLetter> {
        let path = path.into();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(DeadLetter {
            path,
            file,
            count: 0,
        })
    }

    /// Opens `<state_dir>/dead-letter.ndjson`.
    pub fn in_state_dir(state_dir: &Path) -> std::io::Result<DeadLetter> {
        DeadLetter::open(state_dir.join(DEAD_LETTER_FILE))
    }

    /// Appends one refused document.
    pub fn write(&mut self, doc: &BulkDoc, status: u16, reason: &str) -> std::io::Result<()> {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        // `doc.source` is compact JSON by construction; the rest is escaped.
        let line = format!(
            "{{\"time\":{},\"reason\":{},\"status\":{},\"id\":{},\"document\":{}}}\n",
            json!(time),
            json!(reason),
            status,
            json!(doc.id),
            doc.source
        );
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        self.count += 1;
        Ok(())
    }

    /// Documents written through this handle.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Client of one Elasticsearch or OpenSearch cluster, writing to one data
/// stream.
#[derive(Debug, Clone)]
pub struct EsClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    index: String,
    retry: RetryPolicy,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic { username: String, password: String },
    Header(HeaderValue),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Basic { .. } => "Basic(***)",
            Auth::Header(_) => "ApiKey(***)",
        })
    }
}

/// Why one bulk request (not split) did not give item outcomes.
enum OnceError {
    TooLarge,
    Other(EsError),
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default, rename = "_id")]
    id: Option<String>,
}

/// At most this many bytes of an error body go into messages.
const SNIPPET: usize = 300;

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(SNIPPET) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// The error text of an answer: `type: reason` when it is an ES error.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(error_reason))
        .unwrap_or_else(|| snippet(body))
}

/// `type: reason (caused by: type: reason)` of an ES error object.
fn error_reason(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let ty = o.get("type").and_then(Value::as_str).unwrap_or("error");
            let reason = o.get("reason").and_then(Value::as_str).unwrap_or("");
            let mut s = format!("{ty}: {reason}");
            if let Some(c) = o.get("caused_by") {
                s.push_str(&format!(" (caused by {})", error_reason(c)));
            }
            s
        }
        other => other.to_string(),
    }
}

/// The message of an error and its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Classifies a non-2xx answer to a request other than `_bulk`.
fn status_error(what: &str, status: StatusCode, body: &[u8]) -> EsError {
    let message = error_message(body);
    let code = status.as_u16();
    match code {
        401 | 403 => EsError::Auth {
            status: code,
            message,
        },
        408 | 429 | 500..=599 => {
            EsError::Retryable(format!("{what}: HTTP {code} from the server: {message}"))
        }
        _ => EsError::Rejected {
            what: what.to_owned(),
            status: code,
            message,
        },
    }
}

fn item_outcome(status: u16, reason: String) -> ItemOutcome {
    match status {
        200..=299 => ItemOutcome::Done { duplicate: false },
        409 => ItemOutcome::Done { duplicate: true },
        429 | 500..=599 => ItemOutcome::Retry {
            status: Some(status),
            reason,
        },
        400..=499 => ItemOutcome::Dead { status, reason },
        _ => ItemOutcome::Retry {
            status: Some(status),
            reason: format!("unexpected item status {status}: {reason}"),
        },
    }
}

impl EsClient {
    /// A client for `settings` (no request is sent yet).
    pub fn new(settings: &EsSettings) -> Result<EsClient, EsError> {
        let auth = match &settings.auth {
            EsAuth::None => Auth::None,
            EsAuth::Basic { username, password } => Auth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            EsAuth::ApiKey(key) => {
                let mut v =
                    HeaderValue::from_str(&format!("ApiKey {}", key.trim())).map_err(|_| {
                        EsError::Config(
                            "elasticsearch.api_key contains characters not allowed in an HTTP \
                             header"
                                .into(),
                        )
                    })?;
                v.set_sensitive(true);
                Auth::Header(v)
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("swarming/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // Loading the system's roots is only needed for https://.
            .tls_built_in_root_certs(settings.url.starts_with("https://"))
            .build()
            .map_err(|e| EsError::Config(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(EsClient {
            http,
            base: settings.url.trim_end_matches('/').to_owned(),
            auth,
            index: settings.index.clone(),
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another backoff policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> EsClient {
        self.retry = retry;
        self
    }

    /// The data stream documents go to.
    pub fn index(&self) -> &str {
        &self.index
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => rb,
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Header(v) => rb.header(AUTHORIZATION, v.clone()),
        }
    }

    /// Sends a request and reads the whole answer; transport failures are
    /// retryable.
    async fn send(
        &self,
        rb: RequestBuilder,
        what: &str,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), EsError> {
        let transport = |e: reqwest::Error| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "failed"
            };
            EsError::Retryable(format!("{what} {kind}: {}", error_chain(&e)))
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport)?;
        Ok((status, headers, body.to_vec()))
    }

    /// `GET /`: which server, which version; refuses unsupported ones.
    pub async fn probe(&self) -> Result<ServerInfo, EsError> {
        let (status, headers, body) = self.send(self.request(Method::GET, "/"), "GET /").await?;
        if !status.is_success() {
            return Err(status_error("GET /", status, &body));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|_| {
            EsError::Unsupported(format!(
                "GET {}/ did not answer JSON: not Elasticsearch or OpenSearch ({})",
                self.base,
                snippet(&body)
            ))
        })?;
        let product = headers
            .get("x-elastic-product")
            .and_then(|v| v.to_str().ok());
        let info = ServerInfo::from_response(product, &value)?;
        info!(
            distribution = %info.distribution,
            version = %info.version,
            url = %self.base,
            "connected to the search server"
        );
        Ok(info)
    }

    async fn put_json(&self, path: &str, body: &Value) -> Result<Value, EsError> {
        let what = format!("PUT {path}");
        let rb = self
            .request(Method::PUT, path)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, _, answer) = self.send(rb, &what).await?;
        if !status.is_success() {
            return Err(status_error(&what, status, &answer));
        }
        Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null))
    }

    /// Installs the index template and the lifecycle policy. Idempotent:
    /// running it again overwrites them with the same content (the OpenSearch
    /// ISM policy is created once and then left alone).
    pub async fn install_templates(&self, info: &ServerInfo) -> Result<(), EsError> {
        // Kibana runs the Elasticsearch line; OpenSearch Dashboards has no
        // Uptime or Synthetics app.
        let notes = match info.distribution {
            Distribution::Elasticsearch => {
                crate::kibana::startup_notes(&self.index, info.major, info.minor)
            }
            Distribution::OpenSearch => Vec::new(),
        };
        for (level, note) in notes {
            match level {
                crate::kibana::Level::Warn => warn!(index = %self.index, "{note}"),
                crate::kibana::Level::Info => info!(index = %self.index, "{note}"),
            }
        }
        match info.distribution {
            Distribution::Elasticsearch => {
                let policy = ilm_policy(info)?;
                self.put_json(&format!("/_ilm/policy/{POLICY_NAME}"), &policy)
                    .await?;
                info!(policy = POLICY_NAME, "ILM policy installed");
            }
            Distribution::OpenSearch => self.install_ism().await?,
        }
        let template = index_template(info, &self.index)?;
        let name = crate::kibana::template_name(&self.index);
        self.put_json(&format!("/_index_template/{name}"), &template)
            .await?;
        info!(template = name, index = %self.index, "index template installed");
        Ok(())
    }

    /// Creates the ISM policy unless it exists; a cluster without ISM is
    /// logged and skipped.
    async fn install_ism(&self) -> Result<(), EsError> {
        let path = format!("/_plugins/_ism/policies/{POLICY_NAME}");
        let what = format!("GET {path}");
        let (status, _, body) = self.send(self.request(Method::GET, &path), &what).await?;
        if status.is_success() {
            info!(
                policy = POLICY_NAME,
                "ISM policy already present, left as it is"
            );
            return Ok(());
        }
        if status != StatusCode::NOT_FOUND {
            return match status_error(&what, status, &body) {
                EsError::Rejected { message, .. } => {
                    warn!(status = status.as_u16(), %message,
                        "cannot read the ISM policy (no ISM plugin?): indices are kept until deleted by hand");
                    Ok(())
                }
                e => Err(e),
            };
        }
        match self.put_json(&path, &ism_policy(&self.index)?).await {
            Ok(_) => {
                info!(policy = POLICY_NAME, "ISM policy installed");
                Ok(())
            }
            Err(EsError::Rejected { status: 409, .. }) => Ok(()),
            Err(EsError::Rejected {
                status, message, ..
            }) => {
                warn!(status, %message,
                    "cannot install the ISM policy: indices are kept until deleted by hand");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn bulk_body(&self, docs: &[BulkDoc]) -> Vec<u8> {
        let mut body = Vec::with_capacity(docs.iter().map(|d| d.source.len() + 100).sum());
        for d in docs {
            let action = json!({ "create": { "_index": self.index, "_id": d.id } });
            body.extend_from_slice(action.to_string().as_bytes());
            body.push(b'\n');
            body.extend_from_slice(d.source.as_bytes());
            body.push(b'\n');
        }
        body
    }

    /// One `POST /_bulk`, no splitting.
    async fn bulk_once(&self, docs: &[BulkDoc]) -> Result<Vec<ItemOutcome>, OnceError> {
        let body = self.bulk_body(docs);
        let plain_len = body.len();
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(plain_len / 4),
            flate2::Compression::fast(),
        );
        let gz = gz
            .write_all(&body)
            .and_then(|()| gz.finish())
            .map_err(|e| OnceError::Other(EsError::Protocol(format!("gzip: {e}"))))?;
        let gz_len = gz.len();
        let rb = self
            .request(Method::POST, "/_bulk")
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(CONTENT_ENCODING, "gzip")
            .body(gz);
        let (status, _, answer) = self
            .send(rb, "POST /_bulk")
            .await
            .map_err(OnceError::Other)?;
        let code = status.as_u16();
        debug!(
            docs = docs.len(),
            bytes = plain_len,
            gzip_bytes = gz_len,
            status = code,
            "bulk request"
        );
        match code {
            200..=299 => {}
            413 => return Err(OnceError::TooLarge),
            401 | 403 => {
                return Err(OnceError::Other(EsError::Auth {
                    status: code,
                    message: error_message(&answer),
                }))
            }
            429 | 500..=599 => {
                return Err(OnceError::Other(EsError::Retryable(format!(
                    "bulk request refused with HTTP {code}: {}",
                    error_message(&answer)
                ))))
            }
            _ => {
                return Err(OnceError::Other(EsError::Retryable(format!(
                    "bulk request answered with unexpected HTTP {code}: {}",
                    error_message(&answer)
                ))))
            }
        }
        let parsed: BulkResponse = serde_json::from_slice(&answer).map_err(|e| {
            OnceError::Other(EsError::Protocol(format!("bulk answer is not JSON: {e}")))
        })?;
        if parsed.items.len() != docs.len() {
            return Err(OnceError::Other(EsError::Protocol(format!(
                "bulk answer has {} items for {} documents",
                parsed.items.len(),
                docs.len()
            ))));
        }
        let mut out = Vec::with_capacity(docs.len());
        for (doc, item) in docs.iter().zip(parsed.items) {
            let Some(item) = item.into_values().next() else {
                return Err(OnceError::Other(EsError::Protocol(
                    "bulk answer has an empty item".into(),
                )));
            };
            if let Some(id) = &item.id {
                if id != &doc.id {
                    return Err(OnceError::Other(EsError::Protocol(format!(
                        "bulk answer items out of order: got id {id}, expected {}",
                        doc.id
                    ))));
                }
            }
            let reason = item
                .error
                .as_ref()
                .map(error_reason)
                .unwrap_or_else(|| format!("HTTP {}", item.status));
            out.push(item_outcome(item.status, reason));
        }
        Ok(out)
    }

    /// Sends `docs` in one bulk request (split in halves while the server
    /// answers 413) and gives one outcome per document, in order.
    ///
    /// Fails as a whole when the first request fails (connection, timeout,
    /// 401/403, 429, 5xx, malformed answer); when a later half fails, the
    /// documents it held are [`ItemOutcome::Retry`].
    pub async fn bulk(&self, docs: &[BulkDoc]) -> Result<Vec<ItemOutcome>, EsError> {
        let mut out: Vec<Option<ItemOutcome>> = vec![None; docs.len()];
        let mut stack = vec![(0, docs.len())];
        let mut answered = false;
        while let Some((lo, hi)) = stack.pop() {
            if lo >= hi {
                continue;
            }
            match self.bulk_once(&docs[lo..hi]).await {
                Ok(items) => {
                    answered = true;
                    for (slot, item) in out[lo..hi].iter_mut().zip(items) {
                        *slot = Some(item);
                    }
                }
                Err(OnceError::TooLarge) if hi - lo == 1 => {
                    answered = true;
                    warn!(id = %docs[lo].id, bytes = docs[lo].source.len(),
                        "document too large for the server (HTTP 413)");
                    out[lo] = Some(ItemOutcome::Dead {
                        status: 413,
                        reason: format!(
                            "request entity too large: a bulk request with only this document \
                             ({} bytes) exceeds the server's http.max_content_length",
                            docs[lo].source.len()
                        ),
                    });
                }
                Err(OnceError::TooLarge) => {
                    let mid = lo + (hi - lo) / 2;
                    debug!(
                        docs = hi - lo,
                        "bulk request too large (HTTP 413), splitting"
                    );
                    stack.push((mid, hi));
                    stack.push((lo, mid));
                }
                Err(OnceError::Other(e)) if !answered => return Err(e),
                Err(OnceError::Other(e)) => {
                    let reason = e.to_string();
                    for slot in &mut out[lo..hi] {
                        *slot = Some(ItemOutcome::Retry {
                            status: None,
                            reason: reason.clone(),
                        });
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or(ItemOutcome::Retry {
                    status: None,
                    reason: "not sent".into(),
                })
            })
            .collect())
    }

    /// Sends `docs` until every one is stored or dead-lettered, retrying
    /// with backoff: failed items after a partial failure, everything after
    /// a failed request. Authentication failures are logged as errors and
    /// retried too (the data is kept). Returns [`Cancelled`] when `cancel`
    /// fires first; the caller keeps the documents.
    pub async fn deliver(
        &self,
        docs: Vec<BulkDoc>,
        dead: &mut DeadLetter,
        cancel: &CancellationToken,
    ) -> Result<DeliverReport, Cancelled> {
        let mut report = DeliverReport::default();
        let mut pending = docs;
        let mut attempt: u32 = 0;
        while !pending.is_empty() {
            if cancel.is_cancelled() {
                return Err(Cancelled {
                    pending: pending.len(),
                    partial: report,
                });
            }
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    return Err(Cancelled { pending: pending.len(), partial: report });
                }
                r = self.bulk(&pending) => r,
            };
            match result {
                Ok(outcomes) => {
                    let sent = pending.len();
                    let mut retry = Vec::new();
                    let mut last_reason = None;
                    for (doc, outcome) in pending.into_iter().zip(outcomes) {
                        match outcome {
                            ItemOutcome::Done { duplicate: false } => report.indexed += 1,
                            ItemOutcome::Done { duplicate: true } => report.duplicates += 1,
                            ItemOutcome::Dead { status, reason } => {
                                report.dead += 1;
                                warn!(id = %doc.id, status, %reason, "document refused, dead-lettered");
                                if let Err(e) = dead.write(&doc, status, &reason) {
                                    report.dead_letter_errors += 1;
                                    error!(id = %doc.id, path = %dead.path().display(), error = %e,
                                        source = %doc.source, "cannot write the dead-letter file: document lost");
                                }
                            }
                            ItemOutcome::Retry { status, reason } => {
                                last_reason = Some((status, reason));
                                retry.push(doc);
                            }
                        }
                    }
                    if let Some((status, reason)) = last_reason {
                        warn!(sent, failed = retry.len(), status, %reason,
                            "some documents not stored, retrying them");
                    }
                    pending = retry;
                }
                Err(e @ EsError::Auth { .. }) => {
                    error!(error = %e, pending = pending.len(),
                        "Elasticsearch refuses our credentials: documents kept, retrying");
                }
                Err(e) => {
                    warn!(error = %e, pending = pending.len(), "bulk request failed, retrying");
                }
            }
            if pending.is_empty() {
                break;
            }
            let delay = self.retry.delay(attempt);
            attempt = attempt.saturating_add(1);
            report.retries += 1;
            debug!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                attempt, "waiting before the next bulk attempt"
            );
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    return Err(Cancelled { pending: pending.len(), partial: report });
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
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
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let e = EsClient::new(&settings).unwrap_err();
        assert!(matches!(e, EsError::Config(_)));
        assert!(!e.to_string().contains("bad\nkey"));
    }
}
