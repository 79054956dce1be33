//! The indexer's HTTP endpoint for operators (`http.listen`, loopback by
//! default): `/` a live page of the agent x target matrix, `/api/state` the
//! same as JSON, `/metrics` for Prometheus. Read-only; the page and its
//! script are compiled into the binary.

pub mod agent;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::indexer::{EsState, IndexerStats};
use crate::spool::SharedSpool;
use crate::swarm_state::SwarmState;

pub use metrics::MAX_TARGET_SERIES;

/// Longest a stop waits for open connections (a browser keeps its own).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the spool backlog is sampled and old state pruned.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// What the endpoint reads: the indexer's counters and outputs, and the
/// swarm state its intake feeds.
#[derive(Clone)]
pub struct Sources {
    pub swarm: Arc<SwarmState>,
    pub stats: Arc<IndexerStats>,
    pub es: watch::Receiver<EsState>,
    pub spool: Option<SharedSpool>,
    /// The retained verdicts the indexer publishes, by topic.
    pub verdicts: Option<watch::Receiver<Arc<crate::indexer::insight::VerdictBook>>>,
    /// When the spool was last seen non-empty after being empty.
    backlog_since: Arc<Mutex<Option<Instant>>>,
}

impl Sources {
    pub fn new(
        swarm: Arc<SwarmState>,
        stats: Arc<IndexerStats>,
        es: watch::Receiver<EsState>,
        spool: Option<SharedSpool>,
    ) -> Sources {
        Sources {
            swarm,
            stats,
            es,
            spool,
            verdicts: None,
            backlog_since: Arc::new(Mutex::new(None)),
        }
    }

    fn sample(&self) {
        let pending = self.stats.spool_pending.load(Ordering::Relaxed);
        let mut since = self.backlog_since.lock().unwrap_or_else(|p| p.into_inner());
        match (*since, pending) {
            (_, 0) => *since = None,
            (None, _) => *since = Some(Instant::now()),
            (Some(_), _) => {}
        }
    }

    fn backlog_seconds(&self) -> f64 {
        self.backlog_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A running endpoint.
pub struct HttpServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen` and serves the indexer's routes until
    /// [`HttpServer::stop`]. A bind error (address in use, not a local
    /// address) is returned.
    pub async fn start(listen: SocketAddr, sources: Sources) -> std::io::Result<HttpServer> {
        let app = routes::router(sources.clone());
        let sampler = async move {
            let mut tick = tokio::time::interval(SAMPLE_PERIOD);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                sources.sample();
                n = n.wrapping_add(1);
                if n % 60 == 0 {
                    sources.swarm.prune(SystemTime::now());
                }
            }
        };
        let server = Self::serve(listen, app, sampler).await?;
        let addr = server.addr;
        tracing::info!(listen = %addr, "http endpoint: page on http://{addr}/, metrics on /metrics");
        Ok(server)
    }

    /// Serves `app` on `listen`, with `background` running beside it in the
    /// same task (it ends with the server).
    pub async fn serve(
        listen: SocketAddr,
        app: axum::Router,
        background: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            tokio::select! {
                r = serve => {
                    if let Err(e) = r {
                        tracing::error!(listen = %addr, error = %e, "http endpoint failed");
                    }
                }
                _ = background => {}
            }
        });
        Ok(HttpServer { addr, cancel, task })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// True while the server task runs.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops accepting, gives open requests `STOP_TIMEOUT`, then drops
    /// the rest.
    pub async fn stop(self) {
        self.cancel.cancel();
        let mut task = self.task;
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Starts an endpoint for the indexer's settings; a failure is logged, not
/// fatal (the indexer's job is the results). `None` when off or failed.
pub async fn start_logged(listen: Option<SocketAddr>, sources: Sources) -> Option<HttpServer> {
    let listen = listen?;
    match HttpServer::start(listen, sources).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(listen = %listen, error = %e, "http endpoint: cannot listen (set http.listen to a free address, or off)");
            None
        }
    }
}

/// Applies a reload: restarts the endpoint when the address changed or it
/// is not running; the new one is bound before the old one stops (a bad
/// address keeps the old endpoint).
pub async fn reload_with<F, Fut>(
    current: Option<HttpServer>,
    configured_before: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    start: F,
) -> Option<HttpServer>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<HttpServer>>,
{
    let running = current.as_ref().is_some_and(HttpServer::is_running);
    if running && listen == configured_before {
        return current;
    }
    let Some(addr) = listen else {
        if let Some(old) = current {
            old.stop().await;
            tracing::info!("http endpoint: off");
        }
        return None;
    };
    // The same address cannot be bound twice: stop first then.
    let same_addr = current.as_ref().is_some_and(|c| c.local_addr() == addr);
    let current = if same_addr {
        if let Some(old) = current {
            old.stop().await;
        }
        None
    } else {
        current
    };
    match start(addr).await {
        Ok(new) => {
            if let Some(old) = current {
                old.stop().await;
            }
            Some(new)
        }
        Err(e) => {
            tracing::error!(listen = %addr, error = %e, "http endpoint: cannot listen; keeping the previous one");
            current
        }
    }
}

/// The endpoint as the indexer holds it: its sources, its server, and the
/// settings it runs on. Three calls attach it to the indexer: `start`,
/// `reload`, `stop`.
pub struct Endpoint {
    sources: Sources,
    listen: Option<SocketAddr>,
    server: Option<HttpServer>,
}

impl Endpoint {
    /// Tells the swarm state the configuration and starts the server.
    pub async fn start(
        swarm: Arc<SwarmState>,
        settings: &crate::config::IndexerSettings,
        view: &crate::indexer::IndexerView,
        spool: Option<SharedSpool>,
    ) -> Endpoint {
        let mut sources = Sources::new(swarm, view.stats.clone(), view.es.clone(), spool);
        sources.verdicts = Some(view.verdicts());
        configure(&sources.swarm, settings);
        let server = start_logged(settings.http, sources.clone()).await;
        Endpoint {
            sources,
            listen: settings.http,
            server,
        }
    }

    /// New targets and brokers; a new address restarts the server.
    pub async fn reload(&mut self, settings: &crate::config::IndexerSettings) {
        configure(&self.sources.swarm, settings);
        let current = self.server.take();
        let sources = &self.sources;
        self.server = reload_with(current, self.listen, settings.http, |a| {
            HttpServer::start(a, sources.clone())
        })
        .await;
        self.listen = settings.http;
    }

    /// What is wrong with the endpoint, for `STATUS=`: configured but not
    /// listening (the address was taken, or the server ended).
    pub fn problem(&self) -> Option<String> {
        let listen = self.listen?;
        match &self.server {
            Some(s) if s.is_running() => None,
            _ => Some(format!("http endpoint not listening on {listen}")),
        }
    }

    /// The address served, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(HttpServer::local_addr)
    }

    pub async fn stop(self) {
        if let Some(s) = self.server {
            s.stop().await;
        }
    }
}

fn configure(swarm: &SwarmState, settings: &crate::config::IndexerSettings) {
    let version = crate::protocol::WatchList::parse(&crate::indexer::watch_payload(
        &settings.targets,
        &settings.target_levels,
    ))
    .ok()
    .and_then(|w| w.version);
    swarm.set_targets(&settings.targets, version);
    swarm.set_brokers(&settings.brokers);
}
