//! Routes of the HTTP endpoint. Everything is GET and read-only.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{metrics, Sources};
use crate::indexer::EsState;
use crate::swarm_state::Snapshot;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

pub fn router(sources: Sources) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/state", get(api_state))
        .route("/metrics", get(metrics_text))
        .with_state(sources)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `/api/state`: the swarm state plus the indexer's own.
#[derive(Serialize)]
struct ApiState {
    #[serde(flatten)]
    swarm: Snapshot,
    indexer: IndexerView,
    verdicts: Verdicts,
}

/// The verdicts as published on `verdict/target/...` and `verdict/agent/...`.
#[derive(Serialize, Default)]
struct Verdicts {
    targets: Vec<serde_json::Value>,
    agents: Vec<serde_json::Value>,
}

fn verdicts(src: &Sources) -> Verdicts {
    let mut v = Verdicts::default();
    let Some(book) = &src.verdicts else { return v };
    let book = book.borrow().clone();
    for (topic, payload) in book.iter() {
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(payload) else {
            continue;
        };
        if topic.starts_with(crate::protocol::VERDICT_TARGET_PREFIX) {
            v.targets.push(j);
        } else {
            v.agents.push(j);
        }
    }
    v
}

#[derive(Serialize)]
struct IndexerView {
    version: &'static str,
    /// `off`, `connecting`, `ready` or `failing`.
    elasticsearch: &'static str,
    elasticsearch_detail: Option<String>,
    spool_pending: u64,
}

async fn api_state(State(src): State<Sources>) -> Response {
    use std::sync::atomic::Ordering;
    let (es, detail) = match &*src.es.borrow() {
        EsState::Disabled => ("off", None),
        EsState::Connecting => ("connecting", None),
        EsState::Ready(v) => ("ready", Some(v.clone())),
        EsState::Failing(e) => ("failing", Some(e.clone())),
    };
    let body = ApiState {
        swarm: src.swarm.snapshot(SystemTime::now()),
        indexer: IndexerView {
            version: crate::daemon::version_line(),
            elasticsearch: es,
            elasticsearch_detail: detail,
            spool_pending: src.stats.spool_pending.load(Ordering::Relaxed),
        },
        verdicts: verdicts(&src),
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn metrics_text(State(src): State<Sources>) -> Response {
    match metrics::render(&src).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
