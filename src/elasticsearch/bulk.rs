//! Documents, `_bulk` requests and their item outcomes, and delivery
//! with retries.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::document::{self, DocumentError};
use crate::protocol::{PingResult, Rip};

use super::client::{error_message, error_reason};
use super::*;

/// One document to index: its id and its JSON source, serialized once,
/// held as the spool record `id NEWLINE source` (so the writer stores it
/// and the drain takes it back without a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkDoc {
    record: String,
    /// Length of the id (where the newline is).
    split: usize,
}

impl BulkDoc {
    /// A document with the given id and source.
    pub fn new(id: impl Into<String>, source: &Value) -> BulkDoc {
        let mut record: String = id.into();
        let split = record.len();
        record.push('\n');
        // `Value`'s Display is compact JSON on one line.
        let _ = write!(record, "{source}");
        BulkDoc { record, split }
    }

    /// A document from JSON text (re-serialized compactly, so it fits one
    /// NDJSON line).
    pub fn from_json(id: impl Into<String>, source: &str) -> Result<BulkDoc, serde_json::Error> {
        let v: Value = serde_json::from_str(source)?;
        Ok(BulkDoc::new(id, &v))
    }

    /// The check document of a ping result, with its stable id.
    pub fn from_result(result: &PingResult) -> Result<BulkDoc, DocumentError> {
        BulkDoc::from_judged_result(result, &document::CheckShaper::default(), None)
    }

    /// The check document of a ping result shaped by `shaper` (mode uptime
    /// or synthetics), with its stable id.
    pub fn from_result_as(
        result: &PingResult,
        shaper: &document::CheckShaper,
    ) -> Result<BulkDoc, DocumentError> {
        BulkDoc::from_judged_result(result, shaper, None)
    }

    /// [`BulkDoc::from_result_as`] with how the round was judged.
    pub fn from_judged_result(
        result: &PingResult,
        shaper: &document::CheckShaper,
        judged: Option<&crate::insight::verdict::Classified>,
    ) -> Result<BulkDoc, DocumentError> {
        let (start, result) = document::with_canonical_timestamp(result)?;
        BulkDoc::check(&result, start, shaper, judged)
    }

    /// The check document of a result whose timestamp is already the
    /// canonical text of `start` (what intake has checked), shaped by
    /// `shaper`, with how the round was judged: the intake's one pass.
    pub fn check(
        result: &PingResult,
        start: SystemTime,
        shaper: &document::CheckShaper,
        judged: Option<&crate::insight::verdict::Classified>,
    ) -> Result<BulkDoc, DocumentError> {
        let id = document::result_id(&result.agent, &result.target, &result.timestamp);
        // Room for a usual document: one allocation.
        let mut record = Vec::with_capacity(1024);
        record.extend_from_slice(id.as_str().as_bytes());
        let split = record.len();
        record.push(b'\n');
        shaper.write(result, start, id.as_str(), judged, &mut record)?;
        let record = String::from_utf8(record).map_err(|e| DocumentError::Encode(e.to_string()))?;
        Ok(BulkDoc { record, split })
    }

    /// The lifecycle document of an agent notice received at `at`
    /// (`stale`: of an earlier connection, see [`document::rip_document`]).
    pub fn from_rip(rip: &Rip, at: SystemTime, stale: bool) -> BulkDoc {
        BulkDoc::new(
            document::rip_doc_id(rip, at),
            &document::rip_document(rip, at, stale),
        )
    }

    /// A document read back from the spool: `record` was written from
    /// [`BulkDoc::record`] (an id, a newline, compact JSON on one line), so
    /// it is taken as is, without a copy, instead of parsed again. `None`
    /// for bytes that cannot be that.
    pub fn from_spooled(record: Vec<u8>) -> Option<BulkDoc> {
        let record = String::from_utf8(record).ok()?;
        let (id, source) = record.split_once('\n')?;
        let one_object = source.starts_with('{') && source.ends_with('}');
        if id.is_empty() || id.contains(['"', '\\']) || !one_object || source.contains('\n') {
            return None;
        }
        let split = id.len();
        Some(BulkDoc { record, split })
    }

    pub fn id(&self) -> &str {
        self.record.get(..self.split).unwrap_or_default()
    }

    /// The source as compact JSON text.
    pub fn source(&self) -> &str {
        self.record.get(self.split + 1..).unwrap_or_default()
    }

    /// What the spool stores: the id, a newline, the source.
    pub fn record(&self) -> &[u8] {
        self.record.as_bytes()
    }
}

impl AsRef<[u8]> for BulkDoc {
    fn as_ref(&self) -> &[u8] {
        self.record()
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
    /// Whole requests that failed (connection, timeout, 5xx...): an outage,
    /// after which the server is probed again. Item retries are not counted.
    pub request_failures: usize,
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

/// Why one bulk request (not split) did not give item outcomes.
pub(super) enum OnceError {
    TooLarge,
    Other(EsError),
}

#[derive(Deserialize)]
pub(super) struct BulkResponse {
    #[serde(default)]
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
pub(super) struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default, rename = "_id")]
    id: Option<String>,
}

pub(super) fn item_outcome(status: u16, reason: String) -> ItemOutcome {
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
    pub(super) fn bulk_body(&self, docs: &[BulkDoc]) -> Vec<u8> {
        let mut body = Vec::with_capacity(docs.iter().map(|d| d.source().len() + 100).sum());
        // The action line, written directly (no JSON tree per document);
        // both strings are JSON-escaped.
        let index = Value::from(self.index.as_str()).to_string();
        for d in docs {
            body.extend_from_slice(b"{\"create\":{\"_index\":");
            body.extend_from_slice(index.as_bytes());
            body.extend_from_slice(b",\"_id\":");
            if d.id().bytes().all(|b| b.is_ascii_alphanumeric()) {
                // Our ids (hex): nothing to escape.
                body.push(b'"');
                body.extend_from_slice(d.id().as_bytes());
                body.push(b'"');
            } else {
                body.extend_from_slice(Value::from(d.id()).to_string().as_bytes());
            }
            body.extend_from_slice(b"}}\n");
            body.extend_from_slice(d.source().as_bytes());
            body.push(b'\n');
        }
        body
    }

    /// One `POST /_bulk`, no splitting.
    pub(super) async fn bulk_once(&self, docs: &[BulkDoc]) -> Result<Vec<ItemOutcome>, OnceError> {
        let body = self.bulk_body(docs);
        let plain_len = body.len();
        let rb = self
            .request(Method::POST, "/_bulk")
            .header(CONTENT_TYPE, "application/x-ndjson");
        let (rb, sent_len) = if self.compression_level == 0 {
            (rb.body(body), plain_len)
        } else {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain_len / 4),
                flate2::Compression::new(self.compression_level),
            );
            let gz = gz
                .write_all(&body)
                .and_then(|()| gz.finish())
                .map_err(|e| OnceError::Other(EsError::Protocol(format!("gzip: {e}"))))?;
            let gz_len = gz.len();
            (rb.header(CONTENT_ENCODING, "gzip").body(gz), gz_len)
        };
        let (status, _, answer) = self
            .send(rb, "POST /_bulk")
            .await
            .map_err(OnceError::Other)?;
        let code = status.as_u16();
        debug!(
            docs = docs.len(),
            bytes = plain_len,
            sent_bytes = sent_len,
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
                if id != doc.id() {
                    return Err(OnceError::Other(EsError::Protocol(format!(
                        "bulk answer items out of order: got id {id}, expected {}",
                        doc.id()
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
                    warn!(id = %docs[lo].id(), bytes = docs[lo].source().len(),
                        "document too large for the server (HTTP 413)");
                    out[lo] = Some(ItemOutcome::Dead {
                        status: 413,
                        reason: format!(
                            "request entity too large: a bulk request with only this document \
                             ({} bytes) exceeds the server's http.max_content_length",
                            docs[lo].source().len()
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
                                warn!(id = %doc.id(), status, %reason, "document refused, dead-lettered");
                                if let Err(e) = dead.write(&doc, status, &reason) {
                                    report.dead_letter_errors += 1;
                                    error!(id = %doc.id(), path = %dead.path().display(), error = %e,
                                        source = %doc.source(), "cannot write the dead-letter file: document lost");
                                }
                            }
                            ItemOutcome::Retry { status, reason } => {
                                last_reason = Some((status, reason));
                                retry.push(doc);
                            }
                        }
                    }
                    if let Some((status, reason)) = &last_reason {
                        self.set_trouble(Some(format!(
                            "{} of {sent} documents not stored: {reason}",
                            retry.len()
                        )));
                        warn!(sent, failed = retry.len(), status, %reason,
                            "some documents not stored, retrying them");
                    }
                    pending = retry;
                }
                Err(e @ EsError::Auth { .. }) => {
                    report.request_failures += 1;
                    self.set_trouble(Some(e.to_string()));
                    error!(error = %e, pending = pending.len(),
                        "Elasticsearch refuses our credentials: documents kept, retrying");
                }
                Err(e) => {
                    report.request_failures += 1;
                    self.set_trouble(Some(e.to_string()));
                    warn!(error = %e, pending = pending.len(), "bulk request failed, retrying");
                }
            }
            if pending.is_empty() {
                self.set_trouble(None);
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
