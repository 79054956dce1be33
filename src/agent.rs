//! The agent: applies `watch` lists to a schedule of ICMP rounds and hands
//! results to the MQTT link.
//!
//! Each target has a cheap task (no thread, no socket) that runs its rounds
//! at wall-clock slots `k * interval + offset`, where the offset comes from
//! a hash of (agent, target): rounds of different targets are spread over
//! the interval, different agents do not hit a target at the same moment,
//! and an unchanged target keeps its schedule when the list changes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentSettings, PingSettings};
use crate::mqtt::{self, LinkConfig, LinkHandles, LinkState, Message, Outbox};
use crate::ping::{Pinger, RateLimiter};
use crate::protocol::{self, PingResult, RttStats, Target, WatchList};

/// Longest SIGTERM waits for queued results to be published.
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
    pub rounds: AtomicU64,
    pub watch_rejected: AtomicU64,
    pub targets_rejected: AtomicU64,
    /// Last round summary: echoes sent / received since the last status.
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

/// Settings the round tasks read at the start of every round.
struct Shared {
    pinger: Pinger,
    limiter: RateLimiter,
    outbox: Arc<Outbox>,
    identity: watch::Receiver<Identity>,
    ping: watch::Receiver<PingSettings>,
    stats: Arc<AgentStats>,
    /// Proof of progress for the watchdog: bumped by every round.
    heartbeat: Arc<AtomicU64>,
}

/// The set of running target tasks.
pub struct Scheduler {
    shared: Arc<Shared>,
    running: HashMap<Target, CancellationToken>,
    tracker: TaskTracker,
    stop: CancellationToken,
    max_targets: usize,
}

impl Scheduler {
    /// Applies a new target list: added targets start, removed ones stop,
    /// unchanged ones keep their schedule. Lists longer than `max_targets`
    /// are cut (logged).
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
        let wanted: std::collections::HashSet<&Target> = targets.iter().collect();
        let before = self.running.len();
        self.running.retain(|t, token| {
            let keep = wanted.contains(t);
            if !keep {
                tracing::info!(ping_target = %t, "target removed");
                token.cancel();
            }
            keep
        });
        let kept = self.running.len();
        for t in targets {
            if self.running.contains_key(&t) {
                continue;
            }
            tracing::info!(ping_target = %t, "target added");
            let token = self.stop.child_token();
            self.running.insert(t.clone(), token.clone());
            let shared = self.shared.clone();
            self.tracker.spawn(run_target(shared, t, token));
        }
        tracing::info!(
            targets = self.running.len(),
            removed = before - kept,
            added = self.running.len() - kept,
            "target list applied"
        );
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn set_max_targets(&mut self, n: usize) {
        self.max_targets = n;
    }
}

/// Offset of a target's rounds within the interval, in milliseconds.
fn offset_ms(agent: &str, target: &Target, interval_ms: u64) -> u64 {
    let mut h = DefaultHasher::new();
    agent.hash(&mut h);
    target.hash(&mut h);
    h.finish() % interval_ms.max(1)
}

/// The first slot strictly after `after_ms` (Unix milliseconds).
fn next_slot(after_ms: u64, interval_ms: u64, offset_ms: u64) -> u64 {
    let interval_ms = interval_ms.max(1);
    let k = (after_ms.saturating_sub(offset_ms)) / interval_ms + 1;
    k * interval_ms + offset_ms
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Resolves a target for this round (IPv4 and IPv6; first answer wins, in
/// the system's preference order).
async fn resolve(target: &Target) -> Result<IpAddr, String> {
    if let Some(ip) = target.ip() {
        return Ok(ip);
    }
    let mut addrs = tokio::net::lookup_host((target.as_str(), 0))
        .await
        .map_err(|e| format!("cannot resolve {target}: {e}"))?;
    addrs
        .find(|a| !protocol::forbidden_address(a.ip()))
        .map(|a| a.ip())
        .ok_or_else(|| format!("{target} resolves to no usable address"))
}

async fn run_target(shared: Arc<Shared>, target: Target, stop: CancellationToken) {
    let ident = shared.pinger.ident();
    let mut seq: u16 = 0;
    let mut last_ms = unix_ms(SystemTime::now());
    let topic = protocol::ping_topic(target.as_str());
    loop {
        let settings = *shared.ping.borrow();
        let identity = shared.identity.borrow().clone();
        let interval_ms = settings.interval.as_millis() as u64;
        let slot = next_slot(
            last_ms,
            interval_ms,
            offset_ms(&identity.name, &target, interval_ms),
        );
        let now = unix_ms(SystemTime::now());
        let wait = Duration::from_millis(slot.saturating_sub(now));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        last_ms = slot;
        let round = async {
            let addr = resolve(&target).await;
            let (addr, outcome) = match addr {
                Ok(addr) => {
                    let o = shared
                        .pinger
                        .round(addr, ident, &mut seq, &settings, &shared.limiter)
                        .await;
                    (Some(addr), o)
                }
                Err(e) => {
                    tracing::debug!(ping_target = %target, error = %e, "resolution failed");
                    (
                        None,
                        crate::ping::RoundOutcome {
                            sent: 0,
                            rtts: Vec::new(),
                            error: Some(e),
                        },
                    )
                }
            };
            let received = outcome.rtts.iter().flatten().count() as u32;
            PingResult {
                agent: identity.name.clone(),
                labels: identity.labels.clone(),
                target: target.as_str().to_owned(),
                addr,
                timestamp: humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(slot),
                )
                .to_string(),
                interval: settings.interval.as_secs_f64(),
                sent: outcome.sent,
                received,
                rtt: RttStats::from_rtts(&outcome.rtts),
                rtts: outcome.rtts,
                error: outcome.error,
            }
        };
        // SIGTERM stops pinging at once: a round cut short is not published.
        let result = tokio::select! {
            r = round => r,
            _ = stop.cancelled() => return,
        };
        tracing::debug!(ping_target = %target, sent = result.sent, received = result.received, "round done");
        shared.stats.rounds.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .sent
            .fetch_add(result.sent as u64, Ordering::Relaxed);
        shared
            .stats
            .received
            .fetch_add(result.received as u64, Ordering::Relaxed);
        shared.heartbeat.fetch_add(1, Ordering::Relaxed);
        match serde_json::to_vec(&result) {
            Ok(payload) => shared.outbox.push(Message {
                topic: topic.clone(),
                payload,
            }),
            Err(e) => tracing::error!(ping_target = %target, error = %e, "cannot serialize result"),
        }
    }
}

/// Parses a `watch` payload and applies it; malformed ones are counted,
/// logged and ignored (the previous list stays). True when applied.
pub fn handle_watch(payload: &[u8], scheduler: &mut Scheduler, stats: &AgentStats) -> bool {
    match WatchList::parse(payload) {
        Ok(parsed) => {
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
            true
        }
        Err(e) => {
            let n = stats.watch_rejected.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(error = %e, rejected_total = n, "watch message ignored; keeping the previous list");
            false
        }
    }
}

/// Live view of a running agent, for the daemon layer (status, watchdog).
#[derive(Clone)]
pub struct AgentView {
    pub stats: Arc<AgentStats>,
    pub outbox: Arc<Outbox>,
    pub link: watch::Receiver<LinkState>,
    pub targets: watch::Receiver<usize>,
    /// Bumped by rounds and by the MQTT event loop.
    pub heartbeat: Arc<AtomicU64>,
    /// Broker connection attempts so far.
    pub attempts: watch::Receiver<u64>,
}

/// A running agent: change its settings with [`Agent::reload`], stop it with
/// [`Agent::shutdown`].
pub struct Agent {
    settings: AgentSettings,
    identity_tx: watch::Sender<Identity>,
    ping_tx: watch::Sender<PingSettings>,
    link_tx: watch::Sender<LinkConfig>,
    max_targets_tx: watch::Sender<usize>,
    shared: Arc<Shared>,
    stop_pinging: CancellationToken,
    drain: CancellationToken,
    main: tokio::task::JoinHandle<()>,
    link: tokio::task::JoinHandle<()>,
    tracker: TaskTracker,
    pub view: AgentView,
    http: Option<crate::http::HttpServer>, // http: hook
}

fn shuffled(brokers: &[crate::config::Broker]) -> Vec<crate::config::Broker> {
    use rand::seq::SliceRandom;
    let mut b = brokers.to_vec();
    b.shuffle(&mut rand::rng());
    b
}

impl Agent {
    /// Opens the ICMP sockets and starts the link and the scheduler.
    pub fn start(settings: AgentSettings) -> Result<Agent, crate::ping::PingError> {
        let pinger = Pinger::new()?;
        let outbox = Arc::new(Outbox::new(settings.max_queued));
        let stats = Arc::new(AgentStats::default());
        let heartbeat = Arc::new(AtomicU64::new(0));
        let (identity_tx, identity) = watch::channel(Identity {
            name: settings.name.clone(),
            labels: settings.labels.clone(),
        });
        let (ping_tx, ping) = watch::channel(settings.ping);
        let brokers = shuffled(&settings.brokers);
        tracing::info!(agent = %settings.name, brokers = ?brokers.iter().map(|b| b.to_string()).collect::<Vec<_>>(), "agent starting");
        let (link_tx, link_rx) = watch::channel(LinkConfig {
            name: settings.name.clone(),
            brokers,
            keepalive: settings.keepalive,
        });
        let shared = Arc::new(Shared {
            pinger,
            limiter: RateLimiter::new(settings.max_rate),
            outbox: outbox.clone(),
            identity,
            ping,
            stats: stats.clone(),
            heartbeat: heartbeat.clone(),
        });
        let (watch_tx, mut watch_rx) = mpsc::channel::<Vec<u8>>(16);
        let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
        let (attempts_tx, attempts_rx) = watch::channel(0u64);
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
            },
            drain.clone(),
        ));
        let stop_pinging = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut scheduler = Scheduler {
            shared: shared.clone(),
            running: HashMap::new(),
            tracker: tracker.clone(),
            stop: stop_pinging.clone(),
            max_targets: settings.max_targets,
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
                        if handle_watch(&payload, &mut scheduler, &main_stats) {
                            last_watch = Some(payload);
                        }
                        targets_tx.send_replace(scheduler.len());
                    }
                    changed = max_targets_rx.changed() => {
                        if changed.is_err() { break; }
                        scheduler.set_max_targets(*max_targets_rx.borrow_and_update());
                        if let Some(p) = &last_watch {
                            handle_watch(p, &mut scheduler, &main_stats);
                            targets_tx.send_replace(scheduler.len());
                        }
                    }
                    _ = main_stop.cancelled() => break,
                }
            }
        });
        let view = AgentView {
            stats,
            outbox,
            link: state_rx,
            targets: targets_rx,
            heartbeat,
            attempts: attempts_rx,
        };
        Ok(Agent {
            settings,
            identity_tx,
            ping_tx,
            link_tx,
            max_targets_tx,
            shared,
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
    /// name and keepalive reconnect; ping settings apply from each target's
    /// next round; limits at once.
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
            self.ping_tx.send_replace(new.ping);
            changed.push("ping");
        }
        if new.max_rate != old.max_rate {
            self.shared.limiter.set_rate(new.max_rate);
            changed.push("limits.max_rate");
        }
        if new.max_queued != old.max_queued {
            self.shared.outbox.set_capacity(new.max_queued);
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
        if !same_brokers || new.name != old.name || new.keepalive != old.keepalive {
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
                brokers,
                keepalive: new.keepalive,
            });
        }
        if new.log != old.log {
            changed.push("log");
        }
        self.settings = new;
        changed
    }

    /// Stops pinging, publishes what is queued (at most [`DRAIN_TIMEOUT`]),
    /// publishes the shutdown notice and disconnects.
    pub async fn shutdown(self) {
        self.stop_pinging.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let _ = self.main.await;
        let queued = self.shared.outbox.len();
        tracing::info!(queued, "pinging stopped; flushing queued results");
        self.drain.cancel();
        let mut link = self.link;
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut link)
            .await
            .is_err()
        {
            link.abort();
            tracing::warn!(
                unsent = self.shared.outbox.len(),
                "no broker took the queued results in time: they are lost"
            );
        }
    }
}

impl crate::daemon::DaemonSettings for AgentSettings {
    const IDENT: &'static str = "swarming-agent";
    const ABOUT: &'static str = "ICMP ping agent: pings the targets listed on the watch topic and publishes the results over MQTT";
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
        use crate::daemon::StartError;
        // Checked before opening sockets, so the message says what to grant.
        if !crate::daemon::has_net_raw() {
            return Err(StartError::NoPermission(crate::daemon::NET_RAW_HELP.into()));
        }
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
            Err(crate::ping::PingError::Permission(e)) => Err(StartError::NoPermission(format!(
                "{e}: {}",
                crate::daemon::NET_RAW_HELP
            ))),
            Err(e) => Err(StartError::Other(e.into())),
        }
    }

    fn status(&self) -> String {
        let v = &self.view;
        let link = match &*v.link.borrow() {
            LinkState::Connected(b) => format!("connected to {b}"),
            LinkState::Connecting => "connecting".to_owned(),
            LinkState::Backoff => "no broker reachable, retrying".to_owned(),
            LinkState::Stopped => "stopped".to_owned(),
        };
        let sent = v.stats.sent.swap(0, Ordering::Relaxed);
        let received = v.stats.received.swap(0, Ordering::Relaxed);
        format!(
            "{link}; {} targets; {} rounds; last period {received}/{sent} echoes answered; {} queued, {} dropped",
            *v.targets.borrow(),
            v.stats.rounds.load(Ordering::Relaxed),
            v.outbox.len(),
            v.outbox.dropped(),
        )
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
    fn rounds_of_many_targets_are_spread_over_the_interval() {
        let interval = 60_000;
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let t: Target = format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().unwrap();
            let off = offset_ms("probe-1", &t, interval);
            assert!(off < interval);
            buckets[(off * 10 / interval) as usize] += 1;
        }
        // 100 per bucket on average; never a pile-up.
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn agents_do_not_hit_a_target_at_the_same_moment() {
        let t: Target = "example.com".parse().unwrap();
        let offsets: std::collections::HashSet<u64> = (0..20)
            .map(|i| offset_ms(&format!("probe-{i}"), &t, 60_000))
            .collect();
        assert!(offsets.len() >= 18, "{offsets:?}");
    }

    #[test]
    fn slots_are_one_interval_apart_and_strictly_after() {
        assert_eq!(next_slot(10_000, 1000, 250), 10_250);
        assert_eq!(next_slot(10_250, 1000, 250), 11_250);
        assert_eq!(next_slot(10_249, 1000, 250), 10_250);
        assert_eq!(next_slot(0, 60_000, 0), 60_000);
    }
}
