//! The indexer: one persistent MQTT session per broker (all concurrent),
//! the target list published retained on `watch`, every result made durable
//! (spool and/or file) before its broker gets the PUBACK, and the spool
//! drained into Elasticsearch.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::{Broker, EsSettings, FileSettings, IndexerSettings};
use crate::elasticsearch::{BulkDoc, DeadLetter, EsClient, EsError};
use crate::file_output::FileOutput;
use crate::mqtt;
use crate::protocol::{self, PingResult, Rip, RipReason, Target, WatchList};
use crate::spool::SharedSpool;

/// Longest SIGTERM waits for the spool to drain into Elasticsearch.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Results written to disk per batch (one fsync each).
const WRITE_BATCH: usize = 1000;
/// Recent document ids remembered to skip duplicates from several brokers.
const RECENT_IDS: usize = 100_000;

/// Counters, for status lines, logs and tests.
#[derive(Debug, Default)]
pub struct IndexerStats {
    /// Results and notices accepted.
    pub received: AtomicU64,
    /// Duplicates skipped (same result through several brokers).
    pub duplicates: AtomicU64,
    /// Payloads that were not valid results or notices.
    pub malformed: AtomicU64,
    /// Payloads over the size limit.
    pub oversized: AtomicU64,
    /// Documents stored in Elasticsearch (new ones).
    pub indexed: AtomicU64,
    /// Documents Elasticsearch already had (409).
    pub already_stored: AtomicU64,
    /// Documents refused for good (dead-letter file).
    pub dead: AtomicU64,
    /// Documents made durable (spool and/or file output), duplicates not
    /// counted.
    pub written: AtomicU64,
    /// Brokers currently connected.
    pub brokers_up: AtomicUsize,
    /// Documents waiting in the spool for Elasticsearch.
    pub spool_pending: AtomicU64,
}

/// Logs at most one line per period for a noisy condition, with the count
/// of what it did not log.
struct Throttled {
    period: Duration,
    last: Mutex<Option<(Instant, u64)>>,
}

impl Throttled {
    fn new(period: Duration) -> Self {
        Throttled {
            period,
            last: Mutex::new(None),
        }
    }

    /// Returns the number of suppressed events to report, or None to stay
    /// quiet this time.
    fn hit(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match &mut *last {
            Some((at, suppressed)) if now.duration_since(*at) < self.period => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let s = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(s)
            }
            None => {
                *last = Some((now, 0));
                Some(0)
            }
        }
    }
}

/// What the indexer knows of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSeen {
    pub last_result: Option<SystemTime>,
    /// Seconds between the agent's rounds (from its last result).
    pub interval: f64,
    pub last_rip: Option<(RipReason, SystemTime)>,
}

impl AgentSeen {
    /// An agent known by name only; `interval` is set by its first result.
    fn unseen() -> Self {
        AgentSeen {
            last_result: None,
            interval: 60.0,
            last_rip: None,
        }
    }

    /// Alive: a result within three intervals, and no notice since.
    pub fn alive(&self, now: SystemTime) -> bool {
        let Some(last) = self.last_result else {
            return false;
        };
        if let Some((_, rip)) = self.last_rip {
            if rip >= last {
                return false;
            }
        }
        now.duration_since(last)
            .map(|d| d.as_secs_f64() <= 3.0 * self.interval.max(1.0))
            .unwrap_or(true)
    }
}

/// One accepted message, on its way to disk.
struct Item {
    doc: BulkDoc,
    /// The PUBACK to send once the document is durable.
    ack: (AsyncClient, Publish),
}

/// State shared by the sessions.
struct Intake {
    tx: mpsc::Sender<Item>,
    stats: Arc<IndexerStats>,
    agents: Mutex<BTreeMap<String, AgentSeen>>,
    bad_log: Throttled,
    heartbeat: Arc<AtomicU64>,
    /// Sessions that made their first connection attempt.
    tried: watch::Sender<usize>,
    swarm: Arc<crate::swarm_state::SwarmState>, // http: hook
}

impl Intake {
    /// Turns a publish into a document, or counts and skips it.
    async fn accept(&self, client: &AsyncClient, p: Publish, broker: &Broker) {
        let now = SystemTime::now();
        let doc = if p.payload.len() > protocol::MAX_RESULT_BYTES {
            self.reject(
                &self.stats.oversized,
                broker,
                &p.topic,
                &format!(
                    "{} bytes, over the {}-byte limit",
                    p.payload.len(),
                    protocol::MAX_RESULT_BYTES
                ),
            );
            None
        } else if let Some(target) = p.topic.strip_prefix(protocol::PING_PREFIX) {
            match serde_json::from_slice::<PingResult>(&p.payload) {
                Ok(r) if r.target != target => {
                    self.reject(
                        &self.stats.malformed,
                        broker,
                        &p.topic,
                        "target field differs from the topic",
                    );
                    None
                }
                Ok(r) => match BulkDoc::from_result(&r) {
                    Ok(doc) => {
                        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
                        let seen = agents
                            .entry(r.agent.clone())
                            .or_insert_with(AgentSeen::unseen);
                        // First result, or first since a notice: say so
                        // once, not per result.
                        let back = seen.last_result.is_none()
                            || seen
                                .last_rip
                                .is_some_and(|(_, at)| Some(at) >= seen.last_result);
                        if back {
                            tracing::info!(agent = %r.agent, broker = %broker, "agent is sending results");
                        }
                        seen.last_result = Some(now);
                        seen.interval = r.interval;
                        self.swarm.record_result(&r, broker, now); // http: hook
                        Some(doc)
                    }
                    Err(e) => {
                        self.reject(&self.stats.malformed, broker, &p.topic, &e.to_string());
                        None
                    }
                },
                Err(e) => {
                    self.reject(&self.stats.malformed, broker, &p.topic, &e.to_string());
                    None
                }
            }
        } else if p.topic.starts_with(protocol::RIP_AGENT_PREFIX) {
            match serde_json::from_slice::<Rip>(&p.payload) {
                Ok(rip) => {
                    tracing::info!(agent = %rip.agent, reason = ?rip.reason, broker = %broker, "agent notice");
                    let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
                    let seen = agents
                        .entry(rip.agent.clone())
                        .or_insert_with(AgentSeen::unseen);
                    seen.last_rip = Some((rip.reason, now));
                    self.swarm.record_rip(&rip.agent, rip.reason, now); // http: hook
                    Some(BulkDoc::from_rip(&rip, now))
                }
                Err(e) => {
                    self.reject(&self.stats.malformed, broker, &p.topic, &e.to_string());
                    None
                }
            }
        } else {
            None
        };
        match doc {
            Some(doc) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                let item = Item {
                    doc,
                    ack: (client.clone(), p),
                };
                if self.tx.send(item).await.is_err() {
                    tracing::debug!("writer gone: message left unacknowledged");
                }
            }
            None => {
                // Garbage is acknowledged at once: redelivering it helps nobody.
                if let Err(e) = client.ack(&p).await {
                    tracing::debug!(error = %e, "cannot acknowledge");
                }
            }
        }
    }

    /// Counts a skipped message in `counter` and logs it (rate limited).
    fn reject(&self, counter: &AtomicU64, broker: &Broker, topic: &str, why: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.bad_log.hit() {
            let total = self.stats.malformed.load(Ordering::Relaxed)
                + self.stats.oversized.load(Ordering::Relaxed);
            tracing::warn!(broker = %broker, topic = %topic.escape_debug(), reason = %why, total_bad = total, suppressed, "message skipped");
        }
    }
}

/// The `watch` payload for a target list; its version changes with the list.
pub fn watch_payload(targets: &[Target]) -> Vec<u8> {
    let mut h = sha1_smol::Sha1::new();
    for t in targets {
        h.update(t.as_str().as_bytes());
        h.update(b"\n");
    }
    let version = h.digest().to_string()[..12].to_owned();
    serde_json::to_vec(&WatchList::new(targets, version)).unwrap_or_default()
}

/// One broker's session, until cancelled: connect (persistent session),
/// subscribe, publish `watch`, take messages; reconnect with backoff.
async fn broker_session(
    broker: Broker,
    client_id: String,
    keepalive: Duration,
    intake: Arc<Intake>,
    mut watch_rx: watch::Receiver<Arc<Vec<u8>>>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut first_attempt = true;
    loop {
        let mut opts = mqtt::options(client_id.clone(), &broker, keepalive, false);
        opts.set_manual_acks(true);
        let (client, mut el) = mqtt::client(opts, keepalive);
        let connected = tokio::select! {
            r = mqtt::connect(&mut el, keepalive) => r,
            _ = cancel.cancelled() => return,
        };
        if first_attempt {
            first_attempt = false;
            intake.tried.send_modify(|n| *n += 1);
        }
        if let Err(reason) = connected {
            let delay = backoff.next_delay();
            tracing::warn!(broker = %broker, %reason, retry_ms = delay.as_millis() as u64, "cannot connect to broker");
            tokio::select! {
                _ = tokio::time::sleep(delay) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        backoff.reset();
        intake.stats.brokers_up.fetch_add(1, Ordering::Relaxed);
        intake.swarm.broker_connected(&broker, true); // http: hook
        tracing::info!(broker = %broker, "connected to broker");
        let (mut events, poller) = mqtt::spawn_poller(el);
        // Subscriptions are restored by nobody but us; the persistent
        // session keeps what was queued while we were away.
        let subscribed = client.try_subscribe_many([
            SubscribeFilter::new(format!("{}+", protocol::PING_PREFIX), QoS::AtLeastOnce),
            SubscribeFilter::new("rip/#".to_owned(), QoS::AtLeastOnce),
        ]);
        let current = watch_rx.borrow_and_update().clone();
        let published = client.try_publish(
            protocol::WATCH_TOPIC,
            QoS::AtLeastOnce,
            true,
            current.to_vec(),
        );
        if let Err(e) = subscribed.and(published) {
            tracing::warn!(broker = %broker, error = %e, "cannot subscribe or publish");
        }
        let end = loop {
            tokio::select! {
                ev = events.recv() => {
                    intake.heartbeat.fetch_add(1, Ordering::Relaxed);
                    match ev {
                        Some(Ok(Event::Incoming(Packet::Publish(p)))) => intake.accept(&client, p, &broker).await,
                        Some(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            tracing::info!(broker = %broker, "subscribed to ping/+ and rip/#");
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Some(e.to_string()),
                        None => break Some("event loop ended".to_owned()),
                    }
                }
                changed = watch_rx.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                    let payload = watch_rx.borrow_and_update().clone();
                    tracing::info!(broker = %broker, "publishing the new target list");
                    if let Err(e) = client.try_publish(protocol::WATCH_TOPIC, QoS::AtLeastOnce, true, payload.to_vec()) {
                        tracing::warn!(broker = %broker, error = %e, "cannot publish watch");
                    }
                }
                _ = cancel.cancelled() => break None,
            }
        };
        intake.stats.brokers_up.fetch_sub(1, Ordering::Relaxed);
        intake.swarm.broker_connected(&broker, false); // http: hook
        match end {
            Some(reason) => {
                poller.abort();
                let delay = backoff.next_delay();
                tracing::warn!(broker = %broker, %reason, retry_ms = delay.as_millis() as u64, "lost broker");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return,
                }
            }
            None => {
                mqtt::disconnect(&client, &mut events, Duration::from_millis(500)).await;
                poller.abort();
                tracing::info!(broker = %broker, "disconnected");
                return;
            }
        }
    }
}

/// Writes accepted documents durably (spool for Elasticsearch, file
/// output), then acknowledges them to their brokers.
struct Writer {
    spool: Option<SharedSpool>,
    file: Option<FileOutput>,
    recent: HashSet<String>,
    recent_order: VecDeque<String>,
    stats: Arc<IndexerStats>,
}

impl Writer {
    fn seen(&self, id: &str) -> bool {
        self.recent.contains(id)
    }

    /// Remembers ids once they are durable (never before: a failed write
    /// must not turn the redelivered copy into a "duplicate").
    fn remember(&mut self, id: String) {
        if self.recent_order.len() >= RECENT_IDS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        self.recent.insert(id.clone());
        self.recent_order.push_back(id);
    }

    async fn write(&mut self, batch: Vec<Item>) {
        let mut ids = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        let mut lines = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut in_batch = HashSet::new();
        for item in batch {
            let id = item.doc.id();
            if self.seen(id) || !in_batch.insert(id.to_owned()) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                ids.push(id.to_owned());
                records.push(format!("{id}\n{}", item.doc.source()));
                lines.push(item.doc.source().to_owned());
            }
            acks.push(item.ack);
        }
        if !records.is_empty() {
            if let Some(spool) = &self.spool {
                if let Err(e) = spool.append(records).await {
                    // Unacknowledged messages come back when the session is
                    // resumed: nothing is lost, but nothing must be acked.
                    tracing::error!(error = %e, "cannot write to the spool: results left unacknowledged");
                    return;
                }
                if let Ok(st) = spool.stats().await {
                    self.stats
                        .spool_pending
                        .store(st.pending, Ordering::Relaxed);
                }
            }
            if let Some(file) = &mut self.file {
                if let Err(e) = file.write(&lines).and_then(|_| file.sync()) {
                    tracing::error!(error = %e, "cannot write the file output: results left unacknowledged");
                    return;
                }
            }
        }
        let n = ids.len() as u64;
        for id in ids {
            self.remember(id);
        }
        let total = self.stats.written.fetch_add(n, Ordering::Relaxed) + n;
        tracing::debug!(batch = n, total, "documents written");
        for (client, publish) in acks {
            if let Err(e) = client.ack(&publish).await {
                tracing::debug!(error = %e, "cannot acknowledge (session gone; the broker will redeliver)");
            }
        }
    }
}

async fn run_writer(mut rx: mpsc::Receiver<Item>, mut writer: Writer) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        writer.write(batch).await;
    }
}

/// Elasticsearch state, for status lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsState {
    Disabled,
    Connecting,
    Ready(String),
    Failing(String),
}

/// Drains the spool into Elasticsearch until `stop`; after `drain` it
/// stops once the spool is empty.
async fn run_es(
    settings: EsSettings,
    spool: SharedSpool,
    mut dead: DeadLetter,
    stats: Arc<IndexerStats>,
    state: watch::Sender<EsState>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let client = match EsClient::new(&settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "elasticsearch output disabled");
            state.send_replace(EsState::Failing(e.to_string()));
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    'connect: loop {
        state.send_replace(EsState::Connecting);
        // GET / and the template, at start and after every outage.
        let ready = async {
            let info = client.probe().await?;
            client.install_templates(&info).await?;
            Ok::<_, EsError>(info)
        };
        let info = tokio::select! {
            r = ready => r,
            _ = stop.cancelled() => return,
        };
        match info {
            Ok(info) => {
                tracing::info!(url = %settings.url, server = ?info, "elasticsearch ready");
                state.send_replace(EsState::Ready(format!(
                    "{:?} {}",
                    info.distribution, info.version
                )));
                backoff.reset();
            }
            Err(e) => {
                let delay = if e.is_retryable() {
                    backoff.next_delay()
                } else {
                    Duration::from_secs(60)
                };
                tracing::error!(url = %settings.url, error = %e, retry_ms = delay.as_millis() as u64, "elasticsearch not usable");
                state.send_replace(EsState::Failing(e.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue 'connect,
                    _ = stop.cancelled() => return,
                }
            }
        }
        loop {
            let records = match spool.read(settings.batch_size, settings.batch_bytes).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    return;
                }
            };
            let Some((last, _)) = records.last() else {
                if drain.is_cancelled() {
                    return;
                }
                tokio::select! {
                    r = spool.wait_for_records() => {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "spool failed");
                            return;
                        }
                    }
                    _ = drain.cancelled() => return,
                    _ = stop.cancelled() => return,
                }
                // Give the batch a moment to fill, unless stopping.
                tokio::select! {
                    _ = tokio::time::sleep(settings.flush_interval) => {}
                    _ = drain.cancelled() => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            };
            let last = *last;
            let docs: Vec<BulkDoc> = records
                .iter()
                .filter_map(|(_, rec)| {
                    let doc = std::str::from_utf8(rec)
                        .ok()
                        .and_then(|text| text.split_once('\n'))
                        .and_then(|(id, source)| BulkDoc::from_json(id, source).ok());
                    if doc.is_none() {
                        // The spool checks every record's CRC: this is a
                        // record we did not write. Skip it, loudly.
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(bytes = rec.len(), "unreadable spool record skipped");
                    }
                    doc
                })
                .collect();
            match client.deliver(docs, &mut dead, &stop).await {
                Ok(report) => {
                    stats
                        .indexed
                        .fetch_add(report.indexed as u64, Ordering::Relaxed);
                    stats
                        .already_stored
                        .fetch_add(report.duplicates as u64, Ordering::Relaxed);
                    stats.dead.fetch_add(report.dead as u64, Ordering::Relaxed);
                    if let Err(e) = spool.commit(last).await {
                        tracing::error!(error = %e, "cannot commit the spool");
                    }
                    if let Ok(st) = spool.stats().await {
                        stats.spool_pending.store(st.pending, Ordering::Relaxed);
                    }
                    if report.retries > 0 {
                        // There was an outage: check the server again.
                        continue 'connect;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// Live view of a running indexer.
#[derive(Clone)]
pub struct IndexerView {
    pub stats: Arc<IndexerStats>,
    pub es: watch::Receiver<EsState>,
    pub heartbeat: Arc<AtomicU64>,
    intake: Arc<Intake>,
}

impl IndexerView {
    /// What the indexer knows of each agent.
    pub fn agents(&self) -> BTreeMap<String, AgentSeen> {
        self.intake
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running indexer.
pub struct Indexer {
    settings: IndexerSettings,
    intake: Arc<Intake>,
    watch_tx: watch::Sender<Arc<Vec<u8>>>,
    /// Running broker sessions, each stopped by its token.
    sessions: HashMap<Broker, CancellationToken>,
    session_tasks: TaskTracker,
    writer: tokio::task::JoinHandle<()>,
    es_task: Option<(
        tokio::task::JoinHandle<()>,
        CancellationToken,
        CancellationToken,
    )>,
    es_state: watch::Sender<EsState>,
    spool: Option<SharedSpool>,
    pub view: IndexerView,
    started: Instant,
    pub http: Option<crate::http::Endpoint>, // http: hook
}

impl Indexer {
    /// Opens the outputs and connects to every broker.
    pub async fn start(settings: IndexerSettings) -> anyhow::Result<Indexer> {
        use anyhow::Context;
        let stats = Arc::new(IndexerStats::default());
        let heartbeat = Arc::new(AtomicU64::new(0));
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
        let file = match &settings.file_output {
            Some(f) => Some(open_file(f)?),
            None => None,
        };
        if spool.is_none() && file.is_none() {
            tracing::warn!(
                "no output configured (elasticsearch or file): results are received and dropped"
            );
        }
        let swarm = Arc::new(crate::swarm_state::SwarmState::new()); // http: hook
        let (tx, rx) = mpsc::channel(WRITE_BATCH * 4);
        let writer = tokio::spawn(run_writer(
            rx,
            Writer {
                spool: spool.clone(),
                file,
                recent: HashSet::new(),
                recent_order: VecDeque::new(),
                stats: stats.clone(),
            },
        ));
        let intake = Arc::new(Intake {
            tx,
            stats: stats.clone(),
            agents: Mutex::new(BTreeMap::new()),
            bad_log: Throttled::new(Duration::from_secs(10)),
            heartbeat: heartbeat.clone(),
            tried: watch::channel(0).0,
            swarm: swarm.clone(), // http: hook
        });
        let (watch_tx, _) = watch::channel(Arc::new(watch_payload(&settings.targets)));
        let (es_state, es_rx) = watch::channel(EsState::Disabled);
        let mut indexer = Indexer {
            view: IndexerView {
                stats,
                es: es_rx,
                heartbeat,
                intake: intake.clone(),
            },
            settings,
            intake,
            watch_tx,
            sessions: HashMap::new(),
            session_tasks: TaskTracker::new(),
            writer,
            es_task: None,
            es_state,
            spool,
            started: Instant::now(),
            http: None, // http: hook
        };
        indexer.http = Some(
            crate::http::Endpoint::start(
                swarm,
                &indexer.settings,
                &indexer.view,
                indexer.spool.clone(),
            )
            .await,
        ); // http: hook
        indexer.start_es()?;
        for b in indexer.settings.brokers.clone() {
            indexer.open_session(b);
        }
        // Ready once every broker was tried (not necessarily reached);
        // Elasticsearch is never waited for.
        let mut tried = indexer.intake.tried.subscribe();
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
        self.session_tasks.spawn(broker_session(
            broker.clone(),
            mqtt::client_id("swarming-indexer", &self.settings.name),
            self.settings.keepalive,
            self.intake.clone(),
            self.watch_tx.subscribe(),
            cancel.clone(),
        ));
        self.sessions.insert(broker, cancel);
    }

    fn start_es(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        let (Some(es), Some(spool)) = (self.settings.elasticsearch.clone(), self.spool.clone())
        else {
            self.es_state.send_replace(EsState::Disabled);
            return Ok(());
        };
        let dead = DeadLetter::in_state_dir(&self.settings.state_dir).with_context(|| {
            format!(
                "cannot open the dead-letter file in {}",
                self.settings.state_dir.display()
            )
        })?;
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_es(
            es,
            spool,
            dead,
            self.view.stats.clone(),
            self.es_state.clone(),
            drain.clone(),
            stop.clone(),
        ));
        self.es_task = Some((task, drain, stop));
        Ok(())
    }

    /// Applies new settings: targets republish `watch` everywhere, brokers
    /// open/close only the sessions that changed, Elasticsearch restarts its
    /// client. Outputs that appear or vanish (spool, file) need a restart.
    pub async fn reload(&mut self, mut new: IndexerSettings) -> Vec<&'static str> {
        let old = &self.settings;
        let mut changed = Vec::new();
        if new.targets != old.targets {
            self.watch_tx
                .send_replace(Arc::new(watch_payload(&new.targets)));
            changed.push("targets");
        }
        // A new name or keepalive changes every session.
        let all = new.name != old.name || new.keepalive != old.keepalive;
        let wanted: HashSet<&Broker> = new.brokers.iter().collect();
        let closing: Vec<Broker> = self
            .sessions
            .keys()
            .filter(|b| all || !wanted.contains(b))
            .cloned()
            .collect();
        for b in &closing {
            if let Some(cancel) = self.sessions.remove(b) {
                tracing::info!(broker = %b, "closing session");
                cancel.cancel();
            }
        }
        self.settings.name = new.name.clone();
        self.settings.keepalive = new.keepalive;
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
        if new.elasticsearch != old.elasticsearch {
            if self.spool.is_some() && new.elasticsearch.is_some() {
                if let Some((task, _, stop)) = self.es_task.take() {
                    stop.cancel();
                    let _ = task.await;
                }
                self.settings.elasticsearch = new.elasticsearch.clone();
                if let Err(e) = self.start_es() {
                    tracing::error!("{e:#}");
                }
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
        for (_, cancel) in self.sessions.drain() {
            cancel.cancel();
        }
        self.session_tasks.close();
        self.session_tasks.wait().await;
        // The sessions are gone; dropping the last holders of the intake
        // closes the writer's queue, and the writer finishes what it holds.
        let Indexer {
            intake,
            view,
            writer,
            es_task,
            spool,
            ..
        } = self;
        drop((intake, view));
        let _ = writer.await;
        if let Some((mut task, drain, stop)) = es_task {
            drain.cancel();
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                stop.cancel();
                let _ = task.await;
            }
        }
        if let Some(spool) = spool {
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

    /// One human line for `STATUS=`.
    pub fn status(&self) -> String {
        let s = &self.view.stats;
        let secs = self.started.elapsed().as_secs_f64().max(1.0);
        let now = SystemTime::now();
        let agents = self.view.agents();
        let alive = agents.values().filter(|a| a.alive(now)).count();
        let es = match &*self.view.es.borrow() {
            EsState::Disabled => "elasticsearch off".to_owned(),
            EsState::Connecting => "elasticsearch connecting".to_owned(),
            EsState::Ready(v) => format!("elasticsearch ok ({v})"),
            EsState::Failing(e) => format!("elasticsearch failing: {e}"),
        };
        let spool = self
            .spool
            .as_ref()
            .map(|_| format!("; spool {} docs", s.spool_pending.load(Ordering::Relaxed)))
            .unwrap_or_default();
        format!(
            "brokers up {}/{}; {} agents alive; {} results ({:.1}/s avg); {} indexed, {} dead, {} bad messages; {es}{spool}",
            s.brokers_up.load(Ordering::Relaxed),
            self.sessions.len(),
            alive,
            s.received.load(Ordering::Relaxed),
            s.received.load(Ordering::Relaxed) as f64 / secs,
            s.indexed.load(Ordering::Relaxed),
            s.dead.load(Ordering::Relaxed),
            s.malformed.load(Ordering::Relaxed) + s.oversized.load(Ordering::Relaxed),
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
    const WORKER_THREADS: usize = 2;

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
    fn alive_means_a_recent_result_and_no_notice_since() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut a = AgentSeen {
            last_result: Some(t0),
            interval: 60.0,
            last_rip: None,
        };
        assert!(a.alive(t0 + Duration::from_secs(170)));
        assert!(
            !a.alive(t0 + Duration::from_secs(190)),
            "silent for three intervals"
        );
        a.last_rip = Some((RipReason::Shutdown, t0 + Duration::from_secs(1)));
        assert!(!a.alive(t0 + Duration::from_secs(2)), "stopped");
        a.last_result = Some(t0 + Duration::from_secs(5));
        assert!(
            a.alive(t0 + Duration::from_secs(6)),
            "back after the notice"
        );
        let never = AgentSeen {
            last_result: None,
            interval: 60.0,
            last_rip: None,
        };
        assert!(!never.alive(t0));
    }

    #[test]
    fn throttled_logs_once_per_period_and_counts_the_rest() {
        let t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        let t = Throttled::new(Duration::ZERO);
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), Some(0));
    }

    #[test]
    fn watch_payload_version_follows_the_list() {
        let a: Vec<Target> = vec!["a".parse().unwrap(), "b".parse().unwrap()];
        let b: Vec<Target> = vec!["a".parse().unwrap()];
        let pa: serde_json::Value = serde_json::from_slice(&watch_payload(&a)).unwrap();
        let pb: serde_json::Value = serde_json::from_slice(&watch_payload(&b)).unwrap();
        assert_eq!(pa["targets"], serde_json::json!(["a", "b"]));
        assert_ne!(pa["version"], pb["version"]);
        assert_eq!(watch_payload(&a), watch_payload(&a));
        let parsed = WatchList::parse(&watch_payload(&a)).unwrap();
        assert_eq!(parsed.targets, a);
    }
}
