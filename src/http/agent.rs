//! The agent's optional `/metrics` (`http.listen` in agent.yaml, off by
//! default): rounds, the target count, the outbox (queued, dropped), the
//! broker link, rejected lists and targets, from the agent's live view.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::{counter, gauge};
use super::HttpServer;
use crate::agent::AgentView;
use crate::mqtt::LinkState;

/// The text of one scrape.
pub fn render(v: &AgentView) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("swarming_agent");
    counter(
        &mut r,
        "rounds",
        "Ping rounds completed",
        v.engine.rounds.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "slots_skipped",
        "Round slots that could not start in time (skipped, never replayed)",
        v.engine.skipped.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "echoes_sent",
        "ICMP echo requests sent",
        v.engine.sent.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "echoes_received",
        "ICMP echo replies received",
        v.engine.received.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "targets_refused_by_rules",
        "Targets refused by allow/deny or as forbidden addresses (never pinged)",
        v.guard.refused(),
    );
    counter(
        &mut r,
        "watch_rejected",
        "Target lists (watch messages) refused as a whole",
        v.stats.watch_rejected.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "targets_rejected",
        "Targets refused from lists (never pinged)",
        v.stats.targets_rejected.load(Ordering::Relaxed),
    );
    gauge(
        &mut r,
        "targets",
        "Targets being pinged",
        None,
        *v.targets.borrow() as f64,
    );
    gauge(
        &mut r,
        "outbox_queued_results",
        "Results waiting for a broker",
        None,
        v.outbox.len() as f64,
    );
    counter(
        &mut r,
        "outbox_dropped",
        "Results dropped, oldest first, because the outbox was full",
        v.outbox.dropped(),
    );
    counter(
        &mut r,
        "broker_connect_attempts",
        "Broker connection attempts",
        *v.attempts.borrow(),
    );
    let connected = Family::<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>::default();
    if let LinkState::Connected(b) = &*v.link.borrow() {
        connected
            .get_or_create(&vec![("broker", b.to_string())])
            .set(1.0);
    }
    r.register(
        "broker_connected",
        "1 for the broker the agent is connected to (absent while none is)",
        connected,
    );
    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

fn router(view: AgentView) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let view = view.clone();
            async move {
                match render(&view) {
                    Ok(text) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response(),
                }
            }
        }),
    )
}

async fn start_one(listen: SocketAddr, view: AgentView) -> std::io::Result<HttpServer> {
    let s = HttpServer::serve(listen, router(view), std::future::pending()).await?;
    let addr = s.local_addr();
    tracing::info!(listen = %addr, "http endpoint: metrics on http://{addr}/metrics");
    Ok(s)
}

/// Starts the endpoint when configured; a failure is logged, not fatal
/// (the agent's job is pinging).
pub async fn start(listen: Option<SocketAddr>, view: AgentView) -> Option<HttpServer> {
    let listen = listen?;
    match start_one(listen, view).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(listen = %listen, error = %e, "http endpoint: cannot listen (set http.listen to a free address, or remove the section)");
            None
        }
    }
}

/// Applies a reload (see [`super::reload_with`]).
pub async fn reload(
    current: Option<HttpServer>,
    before: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    view: AgentView,
) -> Option<HttpServer> {
    super::reload_with(current, before, listen, |a| start_one(a, view.clone())).await
}
