//! The HTTP client: authentication, requests, error messages.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use crate::config::{EsAuth, EsSettings};

use super::*;

/// Client of one Elasticsearch or OpenSearch cluster, writing to one data
/// stream.
#[derive(Debug, Clone)]
pub struct EsClient {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) auth: Auth,
    pub(super) index: String,
    pub(super) retry: RetryPolicy,
    /// gzip level of bulk bodies; 0: sent uncompressed.
    pub(super) compression_level: u32,
    /// What the last delivery attempt failed on, until one succeeds.
    pub(super) trouble: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

#[derive(Clone)]
pub(super) enum Auth {
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

/// At most this many bytes of an error body go into messages.
pub(super) const SNIPPET: usize = 300;

pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(SNIPPET) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// The error text of an answer: `type: reason` when it is an ES error.
pub(super) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(error_reason))
        .unwrap_or_else(|| snippet(body))
}

/// `type: reason (caused by: type: reason)` of an ES error object.
pub(super) fn error_reason(e: &Value) -> String {
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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
pub(super) fn status_error(what: &str, status: StatusCode, body: &[u8]) -> EsError {
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
            compression_level: settings.compression_level,
            trouble: Default::default(),
        })
    }

    /// The same client with another backoff policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> EsClient {
        self.retry = retry;
        self
    }

    /// Why documents are being retried right now, if they are (for
    /// `STATUS=`: a server that keeps failing is not "ok").
    pub fn trouble(&self) -> Option<String> {
        self.trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_trouble(&self, why: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// The data stream documents go to.
    pub fn index(&self) -> &str {
        &self.index
    }

    pub(super) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => rb,
            Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
            Auth::Header(v) => rb.header(AUTHORIZATION, v.clone()),
        }
    }

    /// Sends a request and reads the whole answer; transport failures are
    /// retryable.
    pub(super) async fn send(
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
}
