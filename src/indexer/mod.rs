//! The indexer: one persistent MQTT session per broker (all concurrent),
//! the target list published retained on `watch`, every result made durable
//! (spool and/or file) before its broker gets the PUBACK, and the spool
//! drained into Elasticsearch.
//!
//! Modules: [`session`] (broker sessions), [`intake`] (validation, the one
//! entry point of accepted messages), [`agents`] (bounded per-agent state),
//! [`writer`] (durable writer and acks), [`drain`] (spool to Elasticsearch),
//! [`output_thread`] (the drain's own thread), [`supervisor`] (restarts,
//! liveness), [`stats`] (counters).

pub mod agents;
pub mod drain;
pub mod insight;
pub mod intake;
pub mod output_thread;
pub mod session;
pub mod stats;
pub mod supervisor;
pub mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Broker, FileSettings, IndexerSettings, TargetLevels};
use crate::elasticsearch::EsClient;
use crate::file_output::FileOutput;
use crate::mqtt;
use crate::protocol::{Target, TargetSpec, WatchList};
use crate::spool::SharedSpool;

pub use agents::AgentSeen;
pub use drain::EsState;
pub use stats::{BrokerStats, IndexerStats};

use intake::Intake;
use output_thread::OutputThread;
use session::{Item, SessionConfig};
use supervisor::{Component, Supervisor};
use writer::{Outputs, WRITE_BATCH};

/// Longest SIGTERM waits for the spool to drain into Elasticsearch.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Items queued between the sessions and the writer: one full batch, so
/// the writer always finds the next batch ready. When full, sessions wait
/// (no cycle: the writer never waits on them), and the brokers keep the
/// rest. Memory: at most this many documents of at most 64 KiB of payload.
const QUEUE: usize = WRITE_BATCH;

/// The `watch` payload for a target list, targets with their own levels in
/// the object form (`{"host", "slow", "lossy"}`); its version changes with
/// the list and the levels.
pub fn watch_payload(targets: &[Target], levels: &BTreeMap<Target, TargetLevels>) -> Vec<u8> {
    let mut h = sha1_smol::Sha1::new();
    let mut list = WatchList::new(targets, String::new());
    for (t, spec) in targets.iter().zip(list.targets.iter_mut()) {
        h.update(t.as_str().as_bytes());
        if let Some(l) = levels.get(t) {
            let slow = l.slow.map(|d| humantime::format_duration(d).to_string());
            h.update(format!("\t{slow:?}\t{:?}", l.lossy).as_bytes());
            *spec = TargetSpec::Object {
                host: t.as_str().to_owned(),
                slow,
                lossy: l.lossy,
            };
        }
        h.update(b"\n");
    }
    list.version = Some(h.digest().to_string()[..12].to_owned());
    serde_json::to_vec(&list).unwrap_or_default()
}

/// What the indexer publishes on `watch`: [`watch_payload`], signed with
/// `key` when one is configured (see `watch_sign`).
fn published_watch(settings: &IndexerSettings) -> Vec<u8> {
    let payload = watch_payload(&settings.targets, &settings.target_levels);
    let key = settings.watch_key.as_deref();
    let Some(key) = key else { return payload };
    crate::watch_sign::sign(&payload, key, crate::watch_sign::next_sequence()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot sign the target list: publishing it unsigned");
        payload
    })
}

/// Pause between two insight ticks (s), unless a tick takes long.
const INSIGHT_TICK: Duration = Duration::from_secs(1);
/// A tick that took `spent` is followed by at least `spent` times this.
const INSIGHT_PAUSE_PER_TICK: u32 = 20;
/// Longest pause (s): verdicts and expiry still come within a minute.
const INSIGHT_PAUSE_MAX: Duration = Duration::from_secs(60);

/// The pause after a tick that took `spent`. Why not always a second: a
/// tick holds the correlator, which every result of a listed target needs
/// on the intake thread, for a time that grows with agents x targets
/// (10 to 15 ms at 100,000 pairs, `packaging/bench/insight-scale.sh`), so
/// ticks may take at most a twenty-first of that thread (up to ticks of
/// 3 s, when the pause stops growing).
fn insight_pause(spent: Duration) -> Duration {
    INSIGHT_TICK
        .max(spent.saturating_mul(INSIGHT_PAUSE_PER_TICK))
        .min(INSIGHT_PAUSE_MAX)
}

/// About once a second: wills whose grace is over are judged, the
/// correlator ticks (silent agents expire), the verdict book is updated for
/// the sessions to publish, and the documents of both are handed to the
/// writer (which never waits on us: no cycle).
async fn run_insight(
    intake: Arc<Intake>,
    writer: mpsc::Sender<Item>,
    comp: Arc<Component>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut pause = INSIGHT_TICK;
    loop {
        comp.set_idle(true);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        comp.set_idle(false);
        let started = Instant::now();
        let now = std::time::SystemTime::now();
        let mut docs = intake.settle_wills(now);
        docs.extend(intake.insight.tick(now));
        let spent = started.elapsed();
        pause = insight_pause(spent);
        if pause > INSIGHT_TICK {
            tracing::debug!(
                tick_ms = spent.as_millis() as u64,
                pause_ms = pause.as_millis() as u64,
                "insight tick took long: pausing longer"
            );
        }
        comp.progress();
        for doc in docs {
            comp.set_idle(true);
            let sent = writer.send(Item { doc, ack: None }).await;
            comp.set_idle(false);
            if sent.is_err() {
                return Ok(());
            }
        }
    }
}

/// Live view of a running indexer.
#[derive(Clone)]
pub struct IndexerView {
    pub stats: Arc<IndexerStats>,
    pub es: watch::Receiver<EsState>,
    /// Moves only while every component is live (see [`supervisor`]).
    pub heartbeat: Arc<AtomicU64>,
    intake: Arc<Intake>,
    supervisor: Arc<Supervisor>,
    es_client: watch::Receiver<Option<EsClient>>,
}

impl IndexerView {
    /// What the indexer knows of each agent.
    pub fn agents(&self) -> BTreeMap<String, AgentSeen> {
        self.intake.snapshot()
    }

    /// The retained verdicts published, by topic.
    pub fn verdicts(&self) -> watch::Receiver<Arc<insight::VerdictBook>> {
        self.intake.insight.book()
    }

    /// `component: problem` for every part not ok (empty when all are).
    pub fn problems(&self) -> Vec<String> {
        self.supervisor.problems()
    }
}

/// The Elasticsearch drain and how to stop it.
struct EsTask {
    comp: Arc<Component>,
    drain: CancellationToken,
    stop: CancellationToken,
}

/// A running indexer.
pub struct Indexer {
    settings: IndexerSettings,
    shared: Arc<session::Shared>,
    watch_tx: watch::Sender<Arc<Vec<u8>>>,
    supervisor: Arc<Supervisor>,
    /// Running broker sessions, each stopped by its token.
    sessions: HashMap<Broker, (CancellationToken, Arc<Component>)>,
    writer: Arc<Component>,
    writer_drain: CancellationToken,
    es_task: Option<EsTask>,
    es_state: watch::Sender<EsState>,
    es_client: watch::Sender<Option<EsClient>>,
    spool: Option<SharedSpool>,
    pub view: IndexerView,
    started: Instant,
    // http: hook
    pub http: Option<crate::http::Endpoint>,
    /// Runs the drain; last, so dropped after everything it serves.
    output: OutputThread,
}

impl Indexer {
    /// Opens the outputs and connects to every broker.
    pub async fn start(settings: IndexerSettings) -> anyhow::Result<Indexer> {
        use anyhow::Context;
        let stats = Arc::new(IndexerStats::default());
        let spool = match &settings.elasticsearch {
            Some(_) => Some(
                SharedSpool::open(settings.state_dir.join("spool"), settings.spool_max_bytes)
                    .await
                    .with_context(|| {
                        format!("cannot open the spool in {}", settings.state_dir.display())
                    })?,
            ),
            None => None,
        };
        if let Some(spool) = &spool {
            if let Ok(st) = spool.stats().await {
                writer::publish_spool_stats(&stats, &st);
            }
        }
        let file = match &settings.file_output {
            Some(f) => Some(Arc::new(Mutex::new(open_file(f)?))),
            None => None,
        };
        if spool.is_none() && file.is_none() {
            tracing::warn!(
                "no output configured (elasticsearch or file): results are received and dropped"
            );
        }
        let output = OutputThread::start("es-output")
            .context("cannot start the Elasticsearch output's thread")?;
        let supervisor = Supervisor::new();
        let (tx, rx) = mpsc::channel::<Item>(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let shaper = crate::document::CheckShaper::new(
            settings
                .elasticsearch
                .as_ref()
                .map(|es| es.flavor.clone())
                .unwrap_or_default(),
        );
        let insight = Arc::new(insight::Insight::for_settings(&settings));
        let intake = Arc::new(Intake::new(stats.clone(), shaper, insight.clone()));
        let shared = Arc::new(session::Shared {
            intake: intake.clone(),
            writer: tx,
            tried: watch::channel(0).0,
            redeliver: watch::channel(0).0,
        });
        let writer_drain = CancellationToken::new();
        let writer = {
            let outputs = Outputs {
                spool: spool.clone(),
                file,
            };
            let stats = stats.clone();
            let drain = writer_drain.clone();
            let shared = shared.clone();
            let mut runs = 0u64;
            supervisor.spawn(
                "writer".into(),
                Duration::from_secs(5),
                writer_drain.clone(),
                move |comp| {
                    if runs > 0 {
                        // The failed run may have dropped messages it had
                        // taken: have the brokers send them again.
                        shared.redeliver.send_modify(|n| *n += 1);
                    }
                    runs += 1;
                    writer::run(
                        rx.clone(),
                        outputs.clone(),
                        stats.clone(),
                        comp,
                        drain.clone(),
                    )
                },
            )
        };
        {
            let writer = shared.writer.clone();
            let stop = writer_drain.clone();
            let intake = intake.clone();
            supervisor.spawn(
                "insight".into(),
                Duration::from_secs(5),
                writer_drain.clone(),
                move |comp| run_insight(intake.clone(), writer.clone(), comp, stop.clone()),
            );
        }
        let (watch_tx, _) = watch::channel(Arc::new(published_watch(&settings)));
        let (es_state, es_rx) = watch::channel(EsState::Disabled);
        let (es_client, es_client_rx) = watch::channel(None);
        let mut indexer = Indexer {
            view: IndexerView {
                stats,
                es: es_rx,
                heartbeat: supervisor.heartbeat.clone(),
                intake,
                supervisor: supervisor.clone(),
                es_client: es_client_rx,
            },
            settings,
            shared,
            watch_tx,
            supervisor,
            sessions: HashMap::new(),
            writer,
            writer_drain,
            es_task: None,
            es_state,
            es_client,
            spool,
            started: Instant::now(),
            http: None, // http: hook
            output,
        };
        // http: hook
        indexer.http = Some(
            crate::http::Endpoint::start(
                indexer.view.intake.swarm.clone(),
                &indexer.settings,
                &indexer.view,
                indexer.spool.clone(),
            )
            .await,
        );
        indexer.start_es();
        for b in indexer.settings.brokers.clone() {
            indexer.open_session(b);
        }
        // Ready once every broker was tried (not necessarily reached);
        // Elasticsearch is never waited for.
        let mut tried = indexer.shared.tried.subscribe();
        let n = indexer.settings.brokers.len();
        let _ = tokio::time::timeout(
            indexer.settings.keepalive + Duration::from_secs(2),
            tried.wait_for(|t| *t >= n),
        )
        .await;
        tracing::info!(
            brokers = indexer.settings.brokers.len(),
            targets = indexer.settings.targets.len(),
            "indexer started"
        );
        Ok(indexer)
    }

    fn open_session(&mut self, broker: Broker) {
        let cancel = CancellationToken::new();
        let cfg = SessionConfig {
            broker: broker.clone(),
            client_id: mqtt::client_id("swarming-indexer", &self.settings.name),
            keepalive: self.settings.keepalive,
            auth: self.settings.auth.clone(),
        };
        let shared = self.shared.clone();
        let watch_tx = self.watch_tx.clone();
        let c = cancel.clone();
        let comp = self.supervisor.spawn(
            format!("broker {broker}"),
            session::RECONNECT_MAX,
            cancel.clone(),
            move |comp| {
                session::run(
                    cfg.clone(),
                    shared.clone(),
                    watch_tx.subscribe(),
                    comp,
                    c.clone(),
                )
            },
        );
        self.sessions.insert(broker, (cancel, comp));
    }

    fn start_es(&mut self) {
        let (Some(es), Some(spool)) = (self.settings.elasticsearch.clone(), self.spool.clone())
        else {
            self.es_state.send_replace(EsState::Disabled);
            return;
        };
        let d = Arc::new(drain::Drain {
            settings: es,
            spool,
            stats: self.view.stats.clone(),
            state: self.es_state.clone(),
            client: self.es_client.clone(),
            state_dir: self.settings.state_dir.clone(),
        });
        let drain_token = CancellationToken::new();
        let stop = CancellationToken::new();
        let (dt, st) = (drain_token.clone(), stop.clone());
        let comp = self.supervisor.spawn_on(
            self.output.handle(),
            "elasticsearch".into(),
            Duration::from_secs(60),
            stop.clone(),
            move |comp| drain::run(d.clone(), comp, dt.clone(), st.clone()),
        );
        self.es_task = Some(EsTask {
            comp,
            drain: drain_token,
            stop,
        });
    }

    /// Stops the drain (at once) and waits for it.
    async fn stop_es(&mut self) {
        if let Some(t) = self.es_task.take() {
            t.stop.cancel();
            t.comp.ended().await;
            self.supervisor.remove(&t.comp);
        }
    }

    /// Applies new settings: targets republish `watch` everywhere, brokers
    /// open/close only the sessions that changed, Elasticsearch restarts its
    /// client. Outputs that appear or vanish (spool, file) need a restart.
    pub async fn reload(&mut self, mut new: IndexerSettings) -> Vec<&'static str> {
        let old = &self.settings;
        let mut changed = Vec::new();
        if new.targets != old.targets
            || new.target_levels != old.target_levels
            || new.watch_key != old.watch_key
        {
            self.watch_tx.send_replace(Arc::new(published_watch(&new)));
            changed.push("targets");
        }
        if new.targets != old.targets
            || new.target_levels != old.target_levels
            || new.levels != old.levels
        {
            self.view.intake.insight.set_targets(&new);
            if new.levels != old.levels {
                changed.push("levels");
            }
        }
        // A new name, keepalive, TLS or login changes every session.
        let all = new.name != old.name || new.keepalive != old.keepalive || new.auth != old.auth;
        let wanted: HashSet<&Broker> = new.brokers.iter().collect();
        let closing: Vec<Broker> = self
            .sessions
            .keys()
            .filter(|b| all || !wanted.contains(b))
            .cloned()
            .collect();
        for b in &closing {
            if let Some((cancel, comp)) = self.sessions.remove(b) {
                tracing::info!(broker = %b, "closing session");
                cancel.cancel();
                self.supervisor.remove(&comp);
            }
        }
        self.settings.name = new.name.clone();
        self.settings.keepalive = new.keepalive;
        self.settings.auth = new.auth.clone();
        let mut opened = false;
        for b in &new.brokers {
            if !self.sessions.contains_key(b) {
                tracing::info!(broker = %b, "opening session");
                self.open_session(b.clone());
                opened = true;
            }
        }
        if opened || !closing.is_empty() {
            changed.push("brokers");
        }
        let old = &self.settings;
        if let (Some(n), Some(o)) = (&mut new.elasticsearch, &old.elasticsearch) {
            // Documents are shaped on intake: the shape and its data stream
            // change together, at a restart.
            if n.flavor != o.flavor {
                tracing::warn!("elasticsearch.mode, space_id and a synthetics index take effect at the next restart");
                n.flavor = o.flavor.clone();
                n.index = o.index.clone();
            }
        }
        if new.elasticsearch != old.elasticsearch {
            if self.spool.is_some() && new.elasticsearch.is_some() {
                self.stop_es().await;
                self.settings.elasticsearch = new.elasticsearch.clone();
                self.start_es();
                changed.push("elasticsearch");
            } else {
                tracing::warn!("adding or removing the elasticsearch output needs a restart");
                new.elasticsearch = self.settings.elasticsearch.clone();
            }
        }
        let old = &self.settings;
        if new.file_output != old.file_output
            || new.state_dir != old.state_dir
            || new.spool_max_bytes != old.spool_max_bytes
        {
            tracing::warn!(
                "changes to file, state_dir or spool_max_bytes take effect at the next restart"
            );
            new.file_output = old.file_output.clone();
            new.state_dir = old.state_dir.clone();
            new.spool_max_bytes = old.spool_max_bytes;
        }
        if new.log != old.log {
            changed.push("log");
        }
        if new.http != old.http {
            changed.push("http");
        }
        if let Some(http) = &mut self.http {
            http.reload(&new).await; // http: hook
        }
        self.settings = new;
        changed
    }

    /// Disconnects from every broker, writes what was received, and gives
    /// Elasticsearch [`DRAIN_TIMEOUT`] to take the spool; the rest stays on
    /// disk for the next start.
    pub async fn shutdown(mut self) {
        if let Some(http) = self.http.take() {
            http.stop().await; // http: hook
        }
        let sessions: Vec<_> = self.sessions.drain().map(|(_, s)| s).collect();
        for (cancel, _) in &sessions {
            cancel.cancel();
        }
        // Sessions end quickly (their disconnect is bounded); then the
        // writer writes what is queued and stops.
        for (_, comp) in &sessions {
            comp.ended().await;
        }
        self.writer_drain.cancel();
        self.writer.ended().await;
        if let Some(t) = self.es_task.take() {
            t.drain.cancel();
            if tokio::time::timeout(DRAIN_TIMEOUT, t.comp.ended())
                .await
                .is_err()
            {
                t.stop.cancel();
                t.comp.ended().await;
            }
        }
        tracing::info!(status = %self.status(), "final counts");
        if let Some(spool) = &self.spool {
            if let Ok(s) = spool.stats().await {
                if s.pending > 0 {
                    tracing::warn!(
                        pending = s.pending,
                        "results kept in the spool for the next start"
                    );
                }
            }
        }
    }

    /// One human line for `STATUS=`: never "ok" about a part that is not.
    pub fn status(&self) -> String {
        let s = &self.view.stats;
        let secs = self.started.elapsed().as_secs_f64().max(1.0);
        let alive = self.view.intake.alive();
        let trouble = self
            .view
            .es_client
            .borrow()
            .as_ref()
            .and_then(EsClient::trouble);
        let es = match (&*self.view.es.borrow(), trouble) {
            (EsState::Disabled, _) => "elasticsearch off".to_owned(),
            (EsState::Connecting, _) => "elasticsearch connecting".to_owned(),
            (EsState::Ready(v), None) => format!("elasticsearch ok ({v})"),
            (EsState::Ready(v), Some(t)) => format!("elasticsearch ({v}) retrying: {t}"),
            (EsState::Failing(e), _) => format!("elasticsearch failing: {e}"),
        };
        let spool = self
            .spool
            .as_ref()
            .map(|_| format!("; spool {} docs", s.spool_pending.load(Ordering::Relaxed)))
            .unwrap_or_default();
        let mut problems = self.supervisor.problems();
        problems.extend(self.http.as_ref().and_then(crate::http::Endpoint::problem)); // http: hook
        let problems = if problems.is_empty() {
            String::new()
        } else {
            format!("; PROBLEMS: {}", problems.join("; "))
        };
        format!(
            "brokers up {}/{}; {} agents alive; {}; {} results ({:.1}/s avg); {} indexed, {} dead, {} bad messages; {es}{spool}{problems}",
            s.brokers_up.load(Ordering::Relaxed),
            self.sessions.len(),
            alive,
            self.view.intake.insight.summary(),
            s.received.load(Ordering::Relaxed),
            s.received.load(Ordering::Relaxed) as f64 / secs,
            s.indexed.load(Ordering::Relaxed),
            s.dead.load(Ordering::Relaxed),
            s.bad(),
        )
    }
}

fn open_file(f: &FileSettings) -> anyhow::Result<FileOutput> {
    use anyhow::Context;
    FileOutput::open(f).with_context(|| format!("cannot open the file output {}", f.path.display()))
}

impl crate::daemon::DaemonSettings for IndexerSettings {
    const IDENT: &'static str = "swarming-indexer";
    const ABOUT: &'static str = "Collects ping results from every MQTT broker, publishes the target list, stores the results in Elasticsearch";
    const DEFAULT_PATH: &'static str = crate::config::INDEXER_CONFIG_PATH;

    fn load(file: &std::path::Path, missing_ok: bool) -> Result<Self, crate::config::ConfigError> {
        IndexerSettings::load(file, missing_ok)
    }

    fn set_brokers(&mut self, brokers: Vec<Broker>) {
        self.brokers = brokers;
    }

    fn log(&self) -> &crate::config::LogConfig {
        &self.log
    }
}

impl crate::daemon::Service for Indexer {
    type Settings = IndexerSettings;
    /// One: intake on this thread, the drain on its own
    /// ([`output_thread`]), disk I/O on the blocking pool.
    const WORKER_THREADS: usize = 1;
    const HEARTBEAT_IS_LIVENESS: bool = true;

    async fn start(settings: IndexerSettings) -> Result<Self, crate::daemon::StartError> {
        if crate::daemon::is_root() {
            tracing::warn!(
                "running as root: the indexer needs no privilege; run it as an unprivileged user"
            );
        }
        Ok(Indexer::start(settings).await?)
    }

    fn status(&self) -> String {
        Indexer::status(self)
    }

    async fn reload(&mut self, new: IndexerSettings) -> Vec<&'static str> {
        Indexer::reload(self, new).await
    }

    fn heartbeat(&self) -> Arc<AtomicU64> {
        self.view.heartbeat.clone()
    }

    async fn shutdown(self) {
        Indexer::shutdown(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_insight_tick_takes_at_most_a_twenty_first_of_its_thread() {
        assert_eq!(insight_pause(Duration::ZERO), INSIGHT_TICK);
        assert_eq!(insight_pause(Duration::from_millis(20)), INSIGHT_TICK);
        let spent = Duration::from_millis(300);
        let pause = insight_pause(spent);
        assert_eq!(pause, Duration::from_secs(6));
        assert!(spent.as_secs_f64() / (spent + pause).as_secs_f64() <= 1.0 / 21.0 + 1e-9);
        // Verdicts still come within a minute, and nothing overflows.
        assert_eq!(insight_pause(Duration::from_secs(10)), INSIGHT_PAUSE_MAX);
        assert_eq!(insight_pause(Duration::MAX), INSIGHT_PAUSE_MAX);
    }

    #[test]
    fn watch_payload_version_follows_the_list() {
        let a: Vec<Target> = vec!["a".parse().unwrap(), "b".parse().unwrap()];
        let b: Vec<Target> = vec!["a".parse().unwrap()];
        let none = BTreeMap::new();
        let pa: serde_json::Value = serde_json::from_slice(&watch_payload(&a, &none)).unwrap();
        let pb: serde_json::Value = serde_json::from_slice(&watch_payload(&b, &none)).unwrap();
        assert_eq!(pa["targets"], serde_json::json!(["a", "b"]));
        assert_ne!(pa["version"], pb["version"]);
        assert_eq!(watch_payload(&a, &none), watch_payload(&a, &none));
        let parsed = WatchList::parse(&watch_payload(&a, &none)).unwrap();
        assert_eq!(parsed.targets, a);
        // Levels go in the object form, and change the version.
        let levels = BTreeMap::from([(
            a[1].clone(),
            TargetLevels {
                slow: Some(std::time::Duration::from_millis(40)),
                lossy: Some(0.05),
            },
        )]);
        let pl: serde_json::Value = serde_json::from_slice(&watch_payload(&a, &levels)).unwrap();
        assert_eq!(
            pl["targets"],
            serde_json::json!(["a", {"host": "b", "slow": "40ms", "lossy": 0.05}])
        );
        assert_ne!(pl["version"], pa["version"]);
        assert_eq!(
            WatchList::parse(&watch_payload(&a, &levels))
                .unwrap()
                .targets,
            a
        );
    }
}
