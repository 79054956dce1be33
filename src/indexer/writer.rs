//! The durable writer: accepted documents go to the spool (for
//! Elasticsearch) and the file output, both flushed to disk, before their
//! brokers get the PUBACK.
//!
//! Disk policy: a failed write is retried with backoff (100 ms doubling to
//! 5 s), logged and counted, and nothing of the batch is acknowledged until
//! it is durable. On a full disk the brokers therefore keep the results
//! (their in-flight window fills, then their queues); the drain keeps
//! emptying the spool into Elasticsearch, which frees space. Blocking I/O
//! (write, fdatasync, rotation) runs on the blocking pool, the spool and the
//! file output side by side.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::elasticsearch::BulkDoc;
use crate::file_output::FileOutput;
use crate::spool::{SharedSpool, SpoolStats};

use super::session::Item;
use super::stats::IndexerStats;
use super::supervisor::Component;

/// Documents written per batch at most (one fdatasync per output each).
pub const WRITE_BATCH: usize = 2000;
/// Recent document ids remembered to skip duplicates from several brokers.
const RECENT_IDS: usize = 100_000;

/// A document id as a number: its first 128 bits (ids are hex SHA-1), so
/// remembering one costs no allocation. Any other text is hashed first.
fn id_key(id: &str) -> u128 {
    match id.get(..32).map(|h| u128::from_str_radix(h, 16)) {
        Some(Ok(k)) => k,
        _ => {
            let d = sha1_smol::Sha1::from(id).digest().bytes();
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            u128::from_be_bytes(b)
        }
    }
}

/// Ids of documents made durable recently, oldest forgotten first.
#[derive(Default)]
struct RecentIds {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl RecentIds {
    fn contains(&self, id: u128) -> bool {
        self.set.contains(&id)
    }

    /// Remembers ids once they are durable (never before: a failed write
    /// must not turn the redelivered copy into a "duplicate").
    fn remember(&mut self, id: u128) {
        if self.order.len() >= RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        if self.set.insert(id) {
            self.order.push_back(id);
        }
    }
}

/// The outputs the writer makes documents durable in.
#[derive(Clone)]
pub struct Outputs {
    pub spool: Option<SharedSpool>,
    pub file: Option<Arc<Mutex<FileOutput>>>,
}

/// Publishes spool counters as plain fields.
pub fn publish_spool_stats(stats: &IndexerStats, st: &SpoolStats) {
    stats.spool_pending.store(st.pending, Ordering::Relaxed);
    stats.spool_bytes.store(st.bytes, Ordering::Relaxed);
    stats.spool_dropped.store(st.dropped, Ordering::Relaxed);
    if st.pending == 0 {
        stats.spool_oldest_unix.store(0, Ordering::Relaxed);
    } else if stats.spool_oldest_unix.load(Ordering::Relaxed) == 0 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        stats.spool_oldest_unix.store(now, Ordering::Relaxed);
    }
}

/// Takes items until `drain` (then writes what is queued and returns).
pub async fn run(
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Item>>>,
    outputs: Outputs,
    stats: Arc<IndexerStats>,
    comp: Arc<Component>,
    drain: CancellationToken,
) -> Result<(), String> {
    let mut rx = rx.lock().await;
    let mut recent = RecentIds::default();
    loop {
        comp.set_idle(true);
        let first = tokio::select! {
            biased;
            i = rx.recv() => i,
            _ = drain.cancelled() => rx.try_recv().ok(),
        };
        comp.set_idle(false);
        let Some(first) = first else {
            return Ok(());
        };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        write(batch, &outputs, &stats, &mut recent, &comp, &drain).await;
        comp.progress();
    }
}

/// Makes one batch durable (retrying), then acknowledges it.
async fn write(
    batch: Vec<Item>,
    outputs: &Outputs,
    stats: &IndexerStats,
    recent: &mut RecentIds,
    comp: &Component,
    drain: &CancellationToken,
) {
    let mut ids = Vec::with_capacity(batch.len());
    let mut docs = Vec::with_capacity(batch.len());
    let mut acks = Vec::with_capacity(batch.len());
    let mut in_batch = HashSet::with_capacity(batch.len());
    for item in batch {
        let key = id_key(item.doc.id());
        if recent.contains(key) || !in_batch.insert(key) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            if let Some(ack) = &item.ack {
                ack.broker().duplicates.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            ids.push(key);
            docs.push(item.doc);
        }
        acks.extend(item.ack);
    }
    if !ids.is_empty() {
        // Shared, not copied, between the outputs and the attempts: the
        // spool stores each document's record, the file its source.
        let docs: Arc<[BulkDoc]> = docs.into();
        let mut retried = false;
        let mut spool_done = outputs.spool.is_none();
        let mut file_done = outputs.file.is_none();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let (s, f) = tokio::join!(
                async {
                    match (&outputs.spool, spool_done) {
                        (Some(spool), false) => Some(spool.append(docs.clone()).await),
                        _ => None,
                    }
                },
                async {
                    match (&outputs.file, file_done) {
                        (Some(file), false) => Some(write_file(file.clone(), docs.clone()).await),
                        _ => None,
                    }
                }
            );
            let mut failure = None;
            match s {
                Some(Ok(st)) => {
                    spool_done = true;
                    publish_spool_stats(stats, &st);
                }
                Some(Err(e)) => failure = Some(format!("spool: {e}")),
                None => {}
            }
            match f {
                Some(Ok(())) => file_done = true,
                Some(Err(e)) => failure = Some(format!("file output: {e}")),
                None => {}
            }
            let Some(why) = failure else {
                break;
            };
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            retried = true;
            if drain.is_cancelled() {
                tracing::error!(error = %why, batch = ids.len(),
                    "cannot write at shutdown: results left unacknowledged, the brokers redeliver them");
                return;
            }
            let delay = backoff.next_delay();
            comp.degraded(format!("cannot write ({why}); retrying"));
            tracing::error!(error = %why, batch = ids.len(), retry_ms = delay.as_millis() as u64,
                "cannot write: results kept unacknowledged, retrying");
            comp.set_idle(true);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = drain.cancelled() => {}
            }
            comp.set_idle(false);
            comp.progress();
        }
        if retried {
            tracing::info!(batch = ids.len(), "write succeeded again");
        }
        comp.ok();
    }
    let n = ids.len() as u64;
    for id in ids {
        recent.remember(id);
    }
    let total = stats.written.fetch_add(n, Ordering::Relaxed) + n;
    tracing::debug!(batch = n, total, "documents written");
    for ack in acks {
        ack.send();
    }
}

/// Appends and syncs lines in the file output, on the blocking pool.
async fn write_file(file: Arc<Mutex<FileOutput>>, docs: Arc<[BulkDoc]>) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let lines: Vec<&str> = docs.iter().map(BulkDoc::source).collect();
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        f.write(&lines).and_then(|()| f.sync())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::default();
        for i in 0..RECENT_IDS + 10 {
            r.remember(id_key(&i.to_string()));
        }
        assert!(!r.contains(id_key("0")));
        assert!(r.contains(id_key(&(RECENT_IDS + 9).to_string())));
        assert_eq!(r.order.len(), RECENT_IDS);
    }

    #[test]
    fn id_keys_are_the_ids_first_128_bits() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(id_key(id), 0x0123456789abcdef0123456789abcdef);
        assert_ne!(id_key("x"), id_key("y"));
        assert_eq!(id_key("x"), id_key("x"));
    }
}
