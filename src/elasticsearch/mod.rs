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
//!
//! Private modules: `client` (HTTP), `server` (detection), `templates`
//! (index template and lifecycle policy), `bulk` (documents, `_bulk`,
//! retries), `dead_letter`.

mod bulk;
mod client;
mod dead_letter;
mod server;
mod templates;
#[cfg(test)]
mod tests;

pub use bulk::{BulkDoc, DeliverReport, ItemOutcome, RetryPolicy};
pub use client::EsClient;
pub use dead_letter::DeadLetter;
pub use server::{Distribution, ServerInfo};
pub use templates::{ilm_policy, index_template, ism_policy};

/// Name of our composable index template.
pub const TEMPLATE_NAME: &str = crate::kibana::UPTIME_TEMPLATE;
/// Name of our ILM (Elasticsearch) or ISM (OpenSearch) policy.
pub const POLICY_NAME: &str = "swarming";
/// The composable index template (`PUT _index_template/swarming`).
pub const INDEX_TEMPLATE: &str = include_str!("../../packaging/elasticsearch/index-template.json");
/// The Elasticsearch ILM policy (`PUT _ilm/policy/swarming`).
pub const ILM_POLICY: &str = include_str!("../../packaging/elasticsearch/ilm-policy.json");
/// The OpenSearch ISM policy (`PUT _plugins/_ism/policies/swarming`).
pub const ISM_POLICY: &str = include_str!("../../packaging/opensearch/ism-policy.json");
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
