//! `/metrics`: the indexer's counters and the swarm's latest results in the
//! Prometheus text format (OpenMetrics), encoded by `prometheus-client`.
//!
//! The values live elsewhere (the indexer's atomics, the spool, the swarm
//! state): each scrape copies them into a fresh registry and encodes it, so
//! nothing here can drift from the numbers the status line shows.
//!
//! Labels: `broker` (`host:port`, one per configured broker), `agent` and
//! `target` (as in results; at most [`MAX_TARGET_SERIES`] pairs, the rest
//! counted in `swarming_target_series_omitted`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::Sources;
use crate::indexer::EsState;

/// Agent x target pairs exported per scrape (two series each).
pub const MAX_TARGET_SERIES: usize = 5_000;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

pub(super) fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

pub(super) fn gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: f64,
) {
    let g = FloatGauge::default();
    g.set(value);
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, g),
        None => registry.register(name, help, g),
    }
}

/// The text of one scrape.
pub async fn render(src: &Sources) -> Result<String, std::fmt::Error> {
    let now = SystemTime::now();
    let s = &src.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut r = Registry::with_prefix("swarming");

    counter(
        &mut r,
        "results_received",
        "Results and agent notices accepted (before de-duplication)",
        load(&s.received),
    );
    counter(&mut r, "duplicates", "Results skipped because they were already stored (same result through several brokers or redelivered)", load(&s.duplicates));
    counter(
        &mut r,
        "malformed",
        "Messages that were not valid results or notices",
        load(&s.malformed),
    );
    counter(
        &mut r,
        "oversized",
        "Messages over the size limit",
        load(&s.oversized),
    );
    counter(
        &mut r,
        "documents_written",
        "Documents made durable (spool and/or file output)",
        load(&s.written),
    );
    counter(
        &mut r,
        "elasticsearch_indexed",
        "Documents stored in Elasticsearch",
        load(&s.indexed),
    );
    counter(
        &mut r,
        "elasticsearch_already_stored",
        "Documents Elasticsearch already had (409 on create)",
        load(&s.already_stored),
    );
    counter(
        &mut r,
        "elasticsearch_dead_lettered",
        "Documents Elasticsearch refused for good (written to the dead-letter file)",
        load(&s.dead),
    );
    let es_up = matches!(&*src.es.borrow(), EsState::Ready(_));
    let es_on = !matches!(&*src.es.borrow(), EsState::Disabled);
    gauge(
        &mut r,
        "elasticsearch_enabled",
        "1 when the Elasticsearch output is configured",
        None,
        f64::from(u8::from(es_on)),
    );
    gauge(
        &mut r,
        "elasticsearch_up",
        "1 when Elasticsearch answered and took the templates",
        None,
        f64::from(u8::from(es_up)),
    );
    gauge(
        &mut r,
        "spool_pending_records",
        "Results in the spool not yet in Elasticsearch",
        None,
        load(&s.spool_pending) as f64,
    );
    let oldest = load(&s.spool_oldest_unix);
    let oldest_age = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if oldest > 0 => d.as_secs().saturating_sub(oldest) as f64,
        _ => 0.0,
    };
    gauge(
        &mut r,
        "spool_oldest_record_age",
        "Age of the oldest record still in the spool (0 when empty): how far Elasticsearch lags",
        Some(Unit::Seconds),
        oldest_age,
    );
    counter(
        &mut r,
        "elasticsearch_retried",
        "Bulk attempts after the first (items or whole requests retried)",
        load(&s.retried),
    );
    gauge(
        &mut r,
        "spool_backlog",
        "Time since the spool was last seen empty (sampled every second): an upper bound on the age of its oldest record, the Elasticsearch lag",
        Some(Unit::Seconds),
        src.backlog_seconds(),
    );
    if let Some(spool) = &src.spool {
        match spool.stats().await {
            Ok(st) => {
                gauge(
                    &mut r,
                    "spool",
                    "Bytes of spool segments on disk",
                    Some(Unit::Bytes),
                    st.bytes as f64,
                );
                counter(
                    &mut r,
                    "spool_dropped",
                    "Results dropped unread from the spool over its budget, since start",
                    st.dropped,
                );
                counter(
                    &mut r,
                    "spool_corrupt",
                    "Damaged spool regions cut off, since start",
                    st.corrupt,
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the spool statistics"),
        }
    }
    gauge(
        &mut r,
        "brokers_connected",
        "Brokers with a connected session",
        None,
        s.brokers_up.load(Ordering::Relaxed) as f64,
    );

    let snap = src.swarm.snapshot(now);
    let connected = Family::<Labels, FloatGauge>::default();
    let per_broker = Family::<Labels, Counter>::default();
    for b in &snap.brokers {
        let l = vec![("broker", b.broker.clone())];
        connected
            .get_or_create(&l)
            .set(f64::from(u8::from(b.connected)));
        per_broker.get_or_create(&l).inc_by(b.results);
    }
    r.register(
        "broker_connected",
        "1 while the session to this broker is connected",
        connected,
    );
    r.register(
        "broker_results_received",
        "Results received through this broker (duplicates included)",
        per_broker,
    );
    // The indexer's own per-session counters: what each broker delivered
    // that was already stored, or was not a valid message.
    let duplicates = Family::<Labels, Counter>::default();
    let malformed = Family::<Labels, Counter>::default();
    {
        let brokers = s.brokers.lock().unwrap_or_else(|p| p.into_inner());
        for (name, b) in brokers.iter() {
            let l = vec![("broker", name.clone())];
            duplicates.get_or_create(&l).inc_by(load(&b.duplicates));
            malformed.get_or_create(&l).inc_by(load(&b.malformed));
        }
    }
    r.register(
        "broker_duplicates",
        "Results from this broker already stored (through another broker, or redelivered)",
        duplicates,
    );
    r.register(
        "broker_malformed",
        "Messages from this broker skipped as malformed, oversized or out of the time window",
        malformed,
    );
    let alive = snap.agents.iter().filter(|a| a.alive).count();
    gauge(
        &mut r,
        "agents_alive",
        "Agents with a result within three of their rounds and no notice since",
        None,
        alive as f64,
    );
    gauge(
        &mut r,
        "agents_known",
        "Agents heard from in the last hour",
        None,
        snap.agents.len() as f64,
    );
    counter(
        &mut r,
        "state_dropped",
        "Results not kept in the in-memory matrix (a bound was reached)",
        snap.dropped,
    );

    let loss = Family::<Labels, FloatGauge>::default();
    let rtt = Family::<Labels, FloatGauge>::default();
    for c in snap.cells.iter().take(MAX_TARGET_SERIES) {
        let l = vec![("agent", c.agent.clone()), ("target", c.target.clone())];
        if let Some(x) = c.loss {
            loss.get_or_create(&l).set(x);
        }
        if let Some(ms) = c.rtt_ms {
            rtt.get_or_create(&l).set(ms / 1000.0);
        }
    }
    r.register(
        "target_loss_ratio",
        "Lost echoes (0 to 1) in the latest round of this agent towards this target",
        loss,
    );
    r.register_with_unit("target_rtt", "Average round-trip time in the latest round of this agent towards this target (absent when nothing came back)", Unit::Seconds, rtt);
    gauge(
        &mut r,
        "target_series_omitted",
        "Agent x target pairs left out of target_loss_ratio and target_rtt_seconds (bounded cardinality)",
        None,
        snap.cells.len().saturating_sub(MAX_TARGET_SERIES) as f64,
    );

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}
