//! The index template and the lifecycle policy (ILM or ISM), built for
//! the server found and installed idempotently.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::client::status_error;
use super::*;

/// Whether `name` matches a simple `*` wildcard pattern.
pub(super) fn pattern_matches(pattern: &str, name: &str) -> bool {
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
pub(super) fn add_index_pattern(doc: &mut Value, pointer: &str, index: &str) {
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

pub(super) fn builtin(text: &str, what: &str) -> Result<Value, EsError> {
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

impl EsClient {
    pub(super) async fn put_json(&self, path: &str, body: &Value) -> Result<Value, EsError> {
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
    pub(super) async fn install_ism(&self) -> Result<(), EsError> {
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
}
