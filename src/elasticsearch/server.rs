//! Server detection: Elasticsearch or OpenSearch, and which version.

use reqwest::Method;
use serde_json::Value;
use tracing::info;

use super::client::{snippet, status_error};
use super::*;

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

pub(super) fn parse_version(number: &str) -> Option<(u32, u32)> {
    let mut parts = number.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl EsClient {
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
}
