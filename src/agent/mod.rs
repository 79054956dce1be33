//! The agent: applies `watch` lists to the ICMP engine's schedule and hands
//! its results to the MQTT link.
//!
//! All targets run in one scheduling loop ([`crate::ping`]); rounds start at
//! wall-clock slots spread over the interval by a hash of (agent, instance,
//! target), so different agents do not hit a target at the same moment and
//! two agents of one name do not publish the same timestamps.

pub mod once;
pub mod self_check;
pub mod watch_state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentSettings;
use crate::mqtt::{self, LinkConfig, LinkHandles, LinkState, Message, Outbox};
use crate::ping::{Engine, Mode, Plan, RoundResult, Sockets};
use crate::protocol::{self, PingResult, RttStats, Target, WatchList};

/// Longest SIGTERM waits for queued results to be published while a broker
/// is connected.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every result carries about the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Counters, for status lines and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub watch_rejected: AtomicU64,
    pub targets_rejected: AtomicU64,
    /// Set while the running signed list's sequence could not be written
    /// to the state directory (`watch_state`), cleared by the next write.
    pub sequence_unsaved: Arc<AtomicBool>,
}

/// The engine's plan for these settings.
pub fn plan(settings: &AgentSettings, instance: &str, once: bool) -> Plan {
    Plan {
        ping: settings.ping,
        max_rate: settings.max_rate,
        seed: format!("{}/{instance}", settings.name),
        once,
    }
}

/// Says so when a full list (`max_targets`) would need more echoes per
/// second than `max_rate`: the interval would then be stretched.
fn warn_if_full_list_stretches(s: &AgentSettings) {
    let needed = s.max_targets as f64 * f64::from(s.ping.count) / s.ping.interval.as_secs_f64();
    if needed > s.max_rate {
        tracing::info!(
            max_targets = s.max_targets,
            max_rate = s.max_rate,
            stretched_interval_s = s.max_targets as f64 * f64::from(s.ping.count) / s.max_rate,
            "a list of limits.max_targets targets would need {needed:.1} echoes/s, more than limits.max_rate: its interval would be stretched"
        );
    }
}

/// A fresh random instance id: tells two agents of the same name apart.
pub fn new_instance() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A round as published on `ping/{target}`.
pub fn to_result(identity: &Identity, r: RoundResult) -> PingResult {
    let received = r.rtts.iter().flatten().count() as u32;
    PingResult {
        agent: identity.name.clone(),
        labels: identity.labels.clone(),
        target: r.target.as_str().to_owned(),
        addr: r.addr,
        timestamp: humantime::format_rfc3339_millis(
            UNIX_EPOCH
                // humantime cannot write years past 9999.
                .checked_add(Duration::from_millis(r.slot_ms.min(253_402_300_799_999)))
                .unwrap_or(UNIX_EPOCH),
        )
        .to_string(),
        interval: r.interval.as_secs_f64(),
        sent: r.sent,
        received,
        rtt: RttStats::from_rtts(&r.rtts),
        rtts: r.rtts,
        error: r.error,
    }
}

/// The target list the engine runs, cut to `max_targets`.
pub struct Scheduler {
    engine: Engine,
    targets: Vec<Target>,
    max_targets: usize,
    /// What may be pinged (allow/deny, forbidden addresses).
    guard: Arc<crate::guard::Guard>,
    /// Signature and replay checks on `watch` (keys change on reload).
    verifier: Arc<std::sync::Mutex<crate::watch_sign::Verifier>>,
    /// Where the running signed list's sequence is kept across restarts.
    sequence_file: std::path::PathBuf,
}

impl Scheduler {
    /// Applies a new target list: added targets start, removed ones stop,
    /// unchanged ones keep their slot (unless a dense list's even spread
    /// moves it a little).
    /// Lists longer than `max_targets` are cut (logged).
    pub fn apply(&mut self, mut targets: Vec<Target>) {
        if targets.len() > self.max_targets {
            let cut: Vec<String> = targets[self.max_targets..]
                .iter()
                .take(10)
                .map(|t| t.to_string())
                .collect();
            tracing::warn!(
                listed = targets.len(),
                max_targets = self.max_targets,
                first_cut = ?cut,
                "target list longer than limits.max_targets: the rest is not pinged"
            );
            targets.truncate(self.max_targets);
        }
        let old: std::collections::HashSet<&Target> = self.targets.iter().collect();
        let new: std::collections::HashSet<&Target> = targets.iter().collect();
        let (mut added, mut removed) = (0usize, 0usize);
        for t in self.targets.iter().filter(|t| !new.contains(t)) {
            removed += 1;
            if removed <= 100 {
                tracing::info!(ping_target = %t, "target removed");
            }
        }
        for t in targets.iter().filter(|t| !old.contains(t)) {
            added += 1;
            if added <= 100 {
                tracing::info!(ping_target = %t, "target added");
            }
        }
        tracing::info!(
            targets = targets.len(),
            removed,
            added,
            "target list applied"
        );
        self.engine.set_targets(targets.clone());
        self.targets = targets;
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn set_max_targets(&mut self, n: usize) {
        self.max_targets = n;
    }
}

/// Parses a `watch` payload and applies it; malformed ones are counted,
/// logged and ignored (the previous list stays). `Some(version)` when
/// applied (the list's `version`, if it has one).
pub fn handle_watch(
    payload: &[u8],
    scheduler: &mut Scheduler,
    stats: &AgentStats,
) -> Option<Option<String>> {
    let verified = {
        let mut v = scheduler.verifier.lock().unwrap_or_else(|p| p.into_inner());
        let before = v.running();
        let verified = v.check(payload);
        let after = v.running();
        if let (true, Some((seq, digest))) = (after != before, after) {
            watch_state::save(
                scheduler.sequence_file.clone(),
                seq,
                digest,
                stats.sequence_unsaved.clone(),
            );
        }
        verified
    };
    if let Err(e) = verified {
        let n = stats.watch_rejected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(error = %e, rejected_total = n, "watch message refused; keeping the previous list");
        return None;
    }
    match WatchList::parse(payload) {
        Ok(mut parsed) => {
            let guard = &scheduler.guard;
            parsed
                .targets
                .retain(|t| t.ip().is_none_or(|ip| guard.permit(t.as_str(), ip)));
            for (text, why) in &parsed.rejected {
                stats.targets_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ping_target = %text.escape_debug(), reason = %why, "target rejected, never pinged");
            }
            tracing::info!(
                version = parsed.version.as_deref().unwrap_or(""),
                targets = parsed.targets.len(),
                "watch list received"
            );
            scheduler.apply(parsed.targets);
            Some(parsed.version)
        }
        Err(e) => {
            let n = stats.watch_rejected.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(error = %e, rejected_total = n, "watch message ignored; keeping the previous list");
            None
        }
    }
}

/// Live view of a running agent, for the daemon layer (status, watchdog).
#[derive(Clone)]
pub struct AgentView {
    pub stats: Arc<AgentStats>,
    pub engine: Arc<crate::ping::EngineStats>,
    pub mode: Mode,
    pub outbox: Arc<Outbox>,
    pub link: watch::Receiver<LinkState>,
    pub targets: watch::Receiver<usize>,
    /// Bumped by finished rounds and by the MQTT event loop.
    pub heartbeat: Arc<AtomicU64>,
    /// Broker connection attempts so far.
    pub attempts: watch::Receiver<u64>,
    /// Another agent uses our name (set by the link), with what it saw.
    pub clash: watch::Receiver<Option<String>>,
    /// The indexers' verdict on this agent, when one was received.
    pub verdict: watch::Receiver<Option<protocol::AgentVerdict>>,
    /// The agent's own "it's probably me" flag.
    pub self_check: Arc<self_check::SelfCheck>,
    /// Echoes sent / received at the last status line.
    last: Arc<(AtomicU64, AtomicU64)>,
    /// Targets refused by allow/deny or as forbidden addresses.
    pub guard: Arc<crate::guard::Guard>,
}

/// A running agent: change its settings with [`Agent::reload`], stop it with
/// [`Agent::shutdown`].
pub struct Agent {
    settings: AgentSettings,
    instance: String,
    identity_tx: watch::Sender<Identity>,
    plan_tx: watch::Sender<Plan>,
    link_tx: watch::Sender<LinkConfig>,
    max_targets_tx: watch::Sender<usize>,
    verifier: Arc<std::sync::Mutex<crate::watch_sign::Verifier>>,
    outbox: Arc<Outbox>,
    stop_pinging: CancellationToken,
    drain: CancellationToken,
    main: tokio::task::JoinHandle<()>,
    link: tokio::task::JoinHandle<()>,
    tracker: TaskTracker,
    pub view: AgentView,
    // http: hook
    http: Option<crate::http::HttpServer>,
}

fn shuffled(brokers: &[crate::config::Broker]) -> Vec<crate::config::Broker> {
    use rand::seq::SliceRandom;
    let mut b = brokers.to_vec();
    b.shuffle(&mut rand::rng());
    b
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Sockets(#[from] crate::ping::OpenError),
    #[error("cannot watch the ICMP sockets: {0}")]
    Io(#[from] std::io::Error),
}

impl Agent {
    /// Opens the ICMP sockets and starts the link and the scheduler.
    pub fn start(settings: AgentSettings) -> Result<Agent, StartError> {
        let sockets = Sockets::open()?;
        let mode = sockets.mode;
        warn_if_full_list_stretches(&settings);
        tracing::info!(mode = ?mode, "ICMP echo through {}", mode.describe());
        let instance = new_instance();
        let outbox = Arc::new(Outbox::new(settings.max_queued));
        let stats = Arc::new(AgentStats::default());
        let heartbeat = Arc::new(AtomicU64::new(0));
        let (identity_tx, identity) = watch::channel(Identity {
            name: settings.name.clone(),
            labels: settings.labels.clone(),
        });
        let brokers = shuffled(&settings.brokers);
        tracing::info!(agent = %settings.name, instance = %instance, brokers = ?brokers.iter().map(|b| b.to_string()).collect::<Vec<_>>(), "agent starting");
        let (link_tx, link_rx) = watch::channel(LinkConfig {
            name: settings.name.clone(),
            instance: instance.clone(),
            brokers,
            keepalive: settings.keepalive,
            auth: settings.auth.clone(),
        });
        let guard = Arc::new(crate::guard::Guard::new(settings.rules.clone()));
        let mut kept = crate::watch_sign::Verifier::new(settings.watch_keys.clone());
        let sequence_file = watch_state::path(&settings.state_dir);
        if kept.enabled() {
            if let Some((seq, digest)) = watch_state::load(&sequence_file) {
                if kept.restore(seq, &digest).is_some() {
                    tracing::info!(
                        sequence = seq,
                        "signed lists older than the one run last are refused"
                    );
                }
            }
        }
        let verifier = Arc::new(std::sync::Mutex::new(kept));
        if settings.watch_keys.is_empty() {
            tracing::warn!("no watch_keys configured: target lists from any publisher on the brokers are applied");
        }
        let stop_pinging = CancellationToken::new();
        let tracker = TaskTracker::new();
        let sink_outbox = outbox.clone();
        let sink_heartbeat = heartbeat.clone();
        let self_check = Arc::new(self_check::SelfCheck::default());
        let sink_check = self_check.clone();
        let sink: crate::ping::Sink = Box::new(move |r: RoundResult| {
            let topic = protocol::ping_topic(r.target.as_str());
            let slot_ms = i64::try_from(r.slot_ms).unwrap_or(i64::MAX);
            let result = to_result(&identity.borrow(), r);
            sink_check.round(
                &result.target,
                slot_ms,
                (result.interval * 1000.0) as i64,
                result.received == 0,
            );
            sink_heartbeat.fetch_add(1, Ordering::Relaxed);
            match serde_json::to_vec(&result) {
                Ok(payload) => sink_outbox.push(Message { topic, payload }),
                Err(e) => {
                    tracing::error!(ping_target = %result.target, error = %e, "cannot serialize result")
                }
            }
        });
        let engine = Engine::spawn(
            sockets,
            plan(&settings, &instance, false),
            sink,
            guard.clone(),
            stop_pinging.clone(),
            &tracker,
        )?;
        let engine_stats = engine.stats.clone();
        let (watch_tx, mut watch_rx) = mpsc::channel::<Vec<u8>>(16);
        let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
        let (attempts_tx, attempts_rx) = watch::channel(0u64);
        let (clash_tx, clash_rx) = watch::channel(None);
        let (applied_tx, applied_rx) = watch::channel(None);
        let (verdict_tx, verdict_rx) = watch::channel(None);
        let (targets_tx, targets_rx) = watch::channel(0usize);
        let drain = CancellationToken::new();
        let link = tokio::spawn(mqtt::run_agent_link(
            link_rx,
            LinkHandles {
                outbox: outbox.clone(),
                watch_tx,
                state_tx,
                heartbeat: heartbeat.clone(),
                attempts: attempts_tx,
                clash: clash_tx,
                applied: applied_rx,
                verdict: verdict_tx,
            },
            drain.clone(),
        ));
        let (plan_tx, mut plan_rx) = watch::channel(plan(&settings, &instance, false));
        let mut scheduler = Scheduler {
            engine,
            targets: Vec::new(),
            max_targets: settings.max_targets,
            guard: guard.clone(),
            verifier: verifier.clone(),
            sequence_file,
        };
        let (max_targets_tx, mut max_targets_rx) = watch::channel(settings.max_targets);
        let main_stop = stop_pinging.clone();
        let main_stats = stats.clone();
        let main = tokio::spawn(async move {
            let mut last_watch: Option<Vec<u8>> = None;
            loop {
                tokio::select! {
                    msg = watch_rx.recv() => {
                        let Some(payload) = msg else { break };
                        // The retained list comes again on every reconnect:
                        // the same bytes change nothing.
                        if last_watch.as_deref() == Some(payload.as_slice()) {
                            continue;
                        }
                        // Only an applied list is kept: a limit change
                        // re-applies it.
                        if let Some(version) = handle_watch(&payload, &mut scheduler, &main_stats) {
                            last_watch = Some(payload);
                            applied_tx.send_replace(Some(version));
                        }
                        targets_tx.send_replace(scheduler.len());
                    }
                    changed = max_targets_rx.changed() => {
                        if changed.is_err() { break; }
                        scheduler.set_max_targets(*max_targets_rx.borrow_and_update());
                        if let Some(p) = &last_watch {
                            let _ = handle_watch(p, &mut scheduler, &main_stats);
                            targets_tx.send_replace(scheduler.len());
                        }
                    }
                    changed = plan_rx.changed() => {
                        if changed.is_err() { break; }
                        scheduler.engine.set_plan(plan_rx.borrow_and_update().clone());
                    }
                    _ = main_stop.cancelled() => break,
                }
            }
        });
        let view = AgentView {
            stats,
            engine: engine_stats,
            mode,
            outbox: outbox.clone(),
            link: state_rx,
            targets: targets_rx,
            heartbeat,
            attempts: attempts_rx,
            clash: clash_rx,
            verdict: verdict_rx,
            self_check,
            last: Arc::default(),
            guard,
        };
        Ok(Agent {
            settings,
            instance,
            identity_tx,
            plan_tx,
            link_tx,
            max_targets_tx,
            verifier,
            outbox,
            stop_pinging,
            drain,
            main,
            link,
            tracker,
            view,
            http: None, // http: hook
        })
    }
}

impl Agent {
    /// Applies new (validated) settings; returns what changed. Brokers,
    /// name and keepalive reconnect; ping settings and the rate apply from
    /// each target's next round; other limits at once.
    pub fn reload(&mut self, new: AgentSettings) -> Vec<&'static str> {
        let old = &self.settings;
        let mut changed = Vec::new();
        if new.name != old.name || new.labels != old.labels {
            self.identity_tx.send_replace(Identity {
                name: new.name.clone(),
                labels: new.labels.clone(),
            });
            if new.name != old.name {
                changed.push("name");
            }
            if new.labels != old.labels {
                changed.push("labels");
            }
        }
        if new.ping != old.ping {
            changed.push("ping");
        }
        if new.max_rate != old.max_rate {
            changed.push("limits.max_rate");
        }
        if new.ping != old.ping
            || new.max_rate != old.max_rate
            || new.max_targets != old.max_targets
        {
            warn_if_full_list_stretches(&new);
        }
        if new.ping != old.ping || new.max_rate != old.max_rate || new.name != old.name {
            self.plan_tx.send_replace(plan(&new, &self.instance, false));
        }
        if new.max_queued != old.max_queued {
            self.outbox.set_capacity(new.max_queued);
            changed.push("limits.max_queued");
        }
        if new.max_targets != old.max_targets {
            self.max_targets_tx.send_replace(new.max_targets);
            changed.push("limits.max_targets");
        }
        let same_brokers = {
            let mut a = new.brokers.clone();
            let mut b = old.brokers.clone();
            a.sort();
            b.sort();
            a == b
        };
        if new.watch_keys != old.watch_keys {
            self.verifier
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_keys(new.watch_keys.clone());
            changed.push("watch_keys");
        }
        if new.rules != old.rules {
            self.view.guard.set(new.rules.clone());
            // Re-applies the running list under the new rules.
            self.max_targets_tx.send_replace(new.max_targets);
            changed.push("allow/deny");
        }
        if new.auth != old.auth {
            changed.push("tls/credentials");
        }
        if !same_brokers
            || new.name != old.name
            || new.keepalive != old.keepalive
            || new.auth != old.auth
        {
            let brokers = if same_brokers {
                self.link_tx.borrow().brokers.clone()
            } else {
                changed.push("brokers");
                shuffled(&new.brokers)
            };
            if new.keepalive != old.keepalive {
                changed.push("keepalive");
            }
            self.link_tx.send_replace(LinkConfig {
                name: new.name.clone(),
                instance: self.instance.clone(),
                brokers,
                keepalive: new.keepalive,
                auth: new.auth.clone(),
            });
        }
        if new.log != old.log {
            changed.push("log");
        }
        self.settings = new;
        changed
    }

    /// Stops pinging; while a broker is connected, publishes what is queued
    /// (at most [`DRAIN_TIMEOUT`]) and the shutdown notice, then
    /// disconnects. Without a broker it stops at once, saying how many
    /// results were queued (and so are lost), if any.
    pub async fn shutdown(self) {
        self.stop_pinging.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let _ = self.main.await;
        let queued = self.outbox.len();
        let connected = matches!(*self.view.link.borrow(), LinkState::Connected(_));
        let mut link = self.link;
        if !connected {
            link.abort();
            if queued > 0 {
                tracing::warn!(
                    unsent = queued,
                    "no broker connected: the queued results are lost"
                );
            } else {
                tracing::info!("no broker connected; no result was waiting");
            }
            return;
        }
        tracing::info!(queued, "pinging stopped; flushing queued results");
        self.drain.cancel();
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut link)
            .await
            .is_err()
        {
            link.abort();
            let unsent = self.outbox.len();
            if unsent > 0 {
                tracing::warn!(
                    unsent,
                    "the broker did not take the queued results in time: they are lost"
                );
            } else {
                tracing::warn!("the broker did not acknowledge the shutdown notice in time");
            }
        }
    }
}

/// What to grant when no ICMP socket can be opened.
pub const NO_PERMISSION_HELP: &str = "the agent needs CAP_NET_RAW for raw ICMP sockets \
(run it from its systemd unit, which grants it with AmbientCapabilities=CAP_NET_RAW, or as root, \
or grant the binary the capability with `setcap cap_net_raw+ep /usr/sbin/swarming-agent`), \
or its group allowed to open datagram ping sockets \
(`sysctl net.ipv4.ping_group_range=\"GID GID\"`)";

/// One human line: link, mode, targets, interval, echoes, queue, skips.
pub fn status_line(v: &AgentView, settings: &AgentSettings) -> String {
    let link = match &*v.link.borrow() {
        LinkState::Connected(b) => format!("connected to {b}"),
        LinkState::Connecting => "connecting".to_owned(),
        LinkState::Backoff => "no broker reachable, retrying".to_owned(),
        LinkState::Stopped => "stopped".to_owned(),
    };
    let e = &v.engine;
    let sent = e.sent.load(Ordering::Relaxed);
    let received = e.received.load(Ordering::Relaxed);
    let last_sent = v.last.0.swap(sent, Ordering::Relaxed);
    let last_received = v.last.1.swap(received, Ordering::Relaxed);
    let interval_ms = e.interval_ms.load(Ordering::Relaxed);
    let stretched = if interval_ms > settings.ping.interval.as_millis() as u64 {
        format!(
            " (stretched from {}s by limits.max_rate)",
            settings.ping.interval.as_secs_f64()
        )
    } else {
        String::new()
    };
    // What an operator must see first: a name clash, a stopped loop, the
    // indexers' trouble verdict, the agent's own "probably me".
    let mut alerts = match &*v.clash.borrow() {
        Some(c) => format!("NAME CLASH: {c}; "),
        None => String::new(),
    };
    if e.ended.load(Ordering::Relaxed) {
        alerts.insert_str(0, "ICMP LOOP STOPPED; ");
    }
    if let Some(v) = &*v.verdict.borrow() {
        if v.state == protocol::AgentState::Trouble {
            alerts.push_str(&format!(
                "TROUBLE (indexers' verdict since {}: {}); ",
                v.since, v.reason
            ));
        }
    }
    if v.stats.sequence_unsaved.load(Ordering::Relaxed) {
        alerts.push_str("WATCH SEQUENCE NOT KEPT (after a restart a replayed older signed list would be accepted; see the log); ");
    }
    if let Some(f) = v.self_check.flagged() {
        alerts.push_str(&format!("PROBABLY ME: {f}; "));
    }
    format!(
        "{alerts}{link}; {mode}; {} targets every {}s{stretched}; {} rounds, {} slots skipped; last period {}/{} echoes answered; {} queued, {} dropped; {} refused by rules, {} watch lists refused",
        *v.targets.borrow(),
        interval_ms as f64 / 1000.0,
        e.rounds.load(Ordering::Relaxed),
        e.skipped.load(Ordering::Relaxed),
        received.saturating_sub(last_received),
        sent.saturating_sub(last_sent),
        v.outbox.len(),
        v.outbox.dropped(),
        v.guard.refused(),
        v.stats.watch_rejected.load(Ordering::Relaxed),
        mode = match v.mode {
            Mode::Raw => "raw ICMP",
            Mode::Datagram => "datagram ICMP",
        },
    )
}

impl crate::daemon::DaemonSettings for AgentSettings {
    const IDENT: &'static str = "swarming-agent";
    const ABOUT: &'static str = "ICMP ping agent: pings the targets listed on the watch topic and publishes the results over MQTT";
    const AFTER_HELP: &'static str =
        "Check a probe without a broker: swarming-agent --once TARGET... [--json] \
(one round towards each target now; see swarming-agent --once --help)";
    const DEFAULT_PATH: &'static str = crate::config::AGENT_CONFIG_PATH;

    fn load(file: &std::path::Path, missing_ok: bool) -> Result<Self, crate::config::ConfigError> {
        AgentSettings::load(file, missing_ok)
    }

    fn set_brokers(&mut self, brokers: Vec<crate::config::Broker>) {
        self.brokers = brokers;
    }

    fn log(&self) -> &crate::config::LogConfig {
        &self.log
    }
}

impl crate::daemon::Service for Agent {
    type Settings = AgentSettings;
    const WORKER_THREADS: usize = 1;

    async fn start(settings: AgentSettings) -> Result<Self, crate::daemon::StartError> {
        use crate::daemon::StartError as E;
        let keepalive = settings.keepalive;
        let http = settings.http; // http: hook
        match Agent::start(settings) {
            Ok(mut a) => {
                // http: hook
                a.http = crate::http::agent::start(http, a.view.clone()).await;
                // Ready once the first broker was tried (not necessarily
                // reached): a missing broker must not hold the boot.
                let mut attempts = a.view.attempts.clone();
                let _ = tokio::time::timeout(
                    keepalive + Duration::from_secs(2),
                    attempts.wait_for(|n| *n >= 1),
                )
                .await;
                Ok(a)
            }
            Err(StartError::Sockets(e @ crate::ping::OpenError::Permission { .. })) => {
                Err(E::NoPermission(format!("{e}: {}", NO_PERMISSION_HELP)))
            }
            Err(e) => Err(E::Other(e.into())),
        }
    }

    fn status(&self) -> String {
        status_line(&self.view, &self.settings)
    }

    async fn reload(&mut self, new: AgentSettings) -> Vec<&'static str> {
        let (before, view) = (self.settings.http, self.view.clone()); // http: hook
        self.http = crate::http::agent::reload(self.http.take(), before, new.http, view).await; // http: hook
        Agent::reload(self, new)
    }

    fn heartbeat(&self) -> Arc<AtomicU64> {
        self.view.heartbeat.clone()
    }

    async fn shutdown(mut self) {
        if let Some(http) = self.http.take() {
            http.stop().await; // http: hook
        }
        Agent::shutdown(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_becomes_a_result_stamped_with_its_slot() {
        let identity = Identity {
            name: "probe".into(),
            labels: BTreeMap::from([("provider".to_owned(), "x".to_owned())]),
        };
        let r = to_result(
            &identity,
            RoundResult {
                target: "127.0.0.1".parse().unwrap(),
                addr: Some("127.0.0.1".parse().unwrap()),
                slot_ms: 1_700_000_000_250,
                interval: Duration::from_millis(100_500),
                sent: 2,
                rtts: vec![Some(0.5), None],
                error: None,
            },
        );
        assert_eq!(r.timestamp, "2023-11-14T22:13:20.250Z");
        assert_eq!(r.interval, 100.5);
        assert_eq!((r.sent, r.received), (2, 1));
        assert_eq!(r.labels["provider"], "x");
    }
}
