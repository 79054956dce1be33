//! The drain: spool -> Elasticsearch. Reads batches from the spool, sends
//! them with [`EsClient::deliver`] (which retries until every document is
//! stored or dead-lettered), then commits them in the spool.
//!
//! Faults: a failed spool read or commit is counted, shown in `STATUS=` and
//! retried after a backoff (the drain never ends on them); the index
//! template and policy are installed at start and again only after a
//! whole-request outage, never because some items were retried.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::EsSettings;
use crate::elasticsearch::{BulkDoc, DeadLetter, EsClient, EsError};
use crate::spool::SharedSpool;

use super::stats::IndexerStats;
use super::supervisor::Component;
use super::writer::publish_spool_stats;

/// Elasticsearch state, for status lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsState {
    Disabled,
    Connecting,
    Ready(String),
    Failing(String),
}

/// What the drain needs.
pub struct Drain {
    pub settings: EsSettings,
    pub spool: SharedSpool,
    pub stats: Arc<IndexerStats>,
    pub state: watch::Sender<EsState>,
    /// The client in use, for its live trouble report.
    pub client: watch::Sender<Option<EsClient>>,
    pub state_dir: std::path::PathBuf,
}

/// Drains the spool into Elasticsearch until `stop`; after `drain` it
/// stops once the spool is empty. `Err` only for what a restart may mend.
pub async fn run(
    d: Arc<Drain>,
    comp: Arc<Component>,
    drain: CancellationToken,
    stop: CancellationToken,
) -> Result<(), String> {
    let client = match EsClient::new(&d.settings) {
        Ok(c) => c,
        Err(e) => {
            // A configuration error: a restart would not mend it.
            tracing::error!(error = %e, "elasticsearch output disabled");
            d.state.send_replace(EsState::Failing(e.to_string()));
            comp.degraded(e.to_string());
            comp.set_idle(true);
            stop.cancelled().await;
            return Ok(());
        }
    };
    d.client.send_replace(Some(client.clone()));
    let mut dead = DeadLetter::in_state_dir(&d.state_dir).map_err(|e| {
        format!(
            "cannot open the dead-letter file in {}: {e}",
            d.state_dir.display()
        )
    })?;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut disk = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    // Waits `delay` (idle), or returns early on `stop`.
    let pause = |delay: Duration| {
        let comp = comp.clone();
        let stop = stop.clone();
        async move {
            comp.set_idle(true);
            let stopped = tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = stop.cancelled() => true,
            };
            comp.set_idle(false);
            comp.progress();
            stopped
        }
    };
    'connect: loop {
        d.state.send_replace(EsState::Connecting);
        // GET / and the template, at start and after every outage.
        let ready = async {
            let info = client.probe().await?;
            client.install_templates(&info).await?;
            Ok::<_, EsError>(info)
        };
        comp.set_idle(true);
        let info = tokio::select! {
            r = ready => r,
            _ = stop.cancelled() => return Ok(()),
        };
        comp.set_idle(false);
        match info {
            Ok(info) => {
                tracing::info!(url = %d.settings.url, server = ?info, "elasticsearch ready");
                d.state.send_replace(EsState::Ready(format!(
                    "{:?} {}",
                    info.distribution, info.version
                )));
                comp.ok();
                backoff.reset();
            }
            Err(e) => {
                let delay = if e.is_retryable() {
                    backoff.next_delay()
                } else {
                    Duration::from_secs(60)
                };
                tracing::error!(url = %d.settings.url, error = %e, retry_ms = delay.as_millis() as u64, "elasticsearch not usable");
                d.state.send_replace(EsState::Failing(e.to_string()));
                comp.degraded(format!("elasticsearch not usable: {e}"));
                if pause(delay).await {
                    return Ok(());
                }
                continue 'connect;
            }
        }
        loop {
            let records = match d
                .spool
                .read(d.settings.batch_size, d.settings.batch_bytes)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    let delay = spool_fault(&d.stats.read_errors, "read", &e, &mut disk, &comp);
                    if pause(delay).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            comp.progress();
            let Some((last, _)) = records.last() else {
                if drain.is_cancelled() {
                    return Ok(());
                }
                comp.set_idle(true);
                tokio::select! {
                    r = d.spool.wait_for_records() => {
                        if let Err(e) = r {
                            return Err(format!("cannot watch the spool: {e}"));
                        }
                    }
                    _ = drain.cancelled() => return Ok(()),
                    _ = stop.cancelled() => return Ok(()),
                }
                // Give the batch a moment to fill, unless stopping.
                tokio::select! {
                    _ = tokio::time::sleep(d.settings.flush_interval) => {}
                    _ = drain.cancelled() => {}
                    _ = stop.cancelled() => return Ok(()),
                }
                comp.set_idle(false);
                continue;
            };
            let last = *last;
            let docs: Vec<BulkDoc> = records
                .into_iter()
                .filter_map(|(_, rec)| {
                    let bytes = rec.len();
                    let doc = BulkDoc::from_spooled(rec);
                    if doc.is_none() {
                        // The spool checks every record's CRC: this is a
                        // record we did not write. Skip it, loudly.
                        d.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(bytes, "unreadable spool record skipped");
                    }
                    doc
                })
                .collect();
            // Waiting on the server (bounded by its timeouts and our
            // backoff) is not a wedge of ours.
            comp.set_idle(true);
            let delivered = client.deliver(docs, &mut dead, &stop).await;
            comp.set_idle(false);
            let Ok(report) = delivered else {
                return Ok(());
            };
            d.stats
                .indexed
                .fetch_add(report.indexed as u64, Ordering::Relaxed);
            d.stats
                .already_stored
                .fetch_add(report.duplicates as u64, Ordering::Relaxed);
            d.stats
                .dead
                .fetch_add(report.dead as u64, Ordering::Relaxed);
            d.stats
                .retried
                .fetch_add(report.retries as u64, Ordering::Relaxed);
            // A failed commit still moves the position in memory (see
            // `Spool::commit`), so the batch is never sent again by this
            // process; the retry after the backoff persists it.
            loop {
                match d.spool.commit(last).await {
                    Ok(st) => {
                        publish_spool_stats(&d.stats, &st);
                        disk.reset();
                        comp.ok();
                        break;
                    }
                    Err(e) => {
                        let delay =
                            spool_fault(&d.stats.commit_errors, "commit", &e, &mut disk, &comp);
                        if pause(delay).await {
                            return Ok(());
                        }
                    }
                }
            }
            comp.progress();
            if report.request_failures > 0 {
                // There was an outage: check the server again.
                continue 'connect;
            }
        }
    }
}

/// Counts, logs and shows a spool fault (`what`: read or commit); returns
/// how long to wait before trying again.
fn spool_fault(
    counter: &std::sync::atomic::AtomicU64,
    what: &str,
    e: &crate::spool::SpoolError,
    disk: &mut Backoff,
    comp: &Component,
) -> Duration {
    counter.fetch_add(1, Ordering::Relaxed);
    let delay = disk.next_delay();
    tracing::error!(error = %e, retry_ms = delay.as_millis() as u64, "cannot {what} the spool: retrying");
    comp.degraded(format!("cannot {what} the spool: {e}"));
    delay
}
