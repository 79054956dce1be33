//! MQTT plumbing: the agent's single-broker link with round-robin failover,
//! the bounded outbox that makes failover lossless, and reconnect backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Broker;
use crate::protocol::{self, Rip, RipReason};

/// Publishes handed to rumqttc and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// Results handed over together (and the room needed in the window to do
/// so).
const BATCH: usize = WINDOW / 2;
/// Longest a result waits for a batch to fill.
const LINGER: Duration = Duration::from_millis(100);

/// Largest incoming packet accepted by the client, in bytes. Larger than any
/// payload we accept, so an oversized publish is refused by us (counted,
/// logged) rather than by rumqttc (which would drop the connection).
pub const MAX_PACKET_IN: usize = 16 * 1024 * 1024;
/// Largest outgoing packet, in bytes.
pub const MAX_PACKET_OUT: usize = 2 * 1024 * 1024;

/// One message waiting to be published (QoS 1, not retained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Bounded FIFO of results waiting for a broker. When full, the oldest is
/// dropped and counted: fresh results matter more than old ones.
pub struct Outbox {
    inner: Mutex<VecDeque<Message>>,
    capacity: AtomicUsize,
    dropped: AtomicU64,
    notify: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            inner: Mutex::new(VecDeque::new()),
            capacity: AtomicUsize::new(capacity),
            dropped: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        // The queue stays consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    fn trim(&self, q: &mut VecDeque<Message>) {
        let cap = self.capacity.load(Ordering::Relaxed);
        let mut dropped = 0;
        while q.len() > cap {
            q.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            tracing::warn!(
                dropped,
                total,
                capacity = cap,
                "outbox full: oldest results dropped"
            );
        }
    }

    /// Queues a message at the back.
    pub fn push(&self, msg: Message) {
        {
            let mut q = self.lock();
            q.push_back(msg);
            self.trim(&mut q);
        }
        self.notify.notify_one();
    }

    /// Puts unacknowledged messages back at the front, in their order.
    pub fn requeue_front(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        {
            let mut q = self.lock();
            for m in msgs.into_iter().rev() {
                q.push_front(m);
            }
            self.trim(&mut q);
        }
        self.notify.notify_one();
    }

    pub fn pop(&self) -> Option<Message> {
        self.lock().pop_front()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Messages dropped because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves after the next `push`/`requeue_front` (or at once if one
    /// happened since the last call).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// A client id usable by mosquitto: ASCII letters, digits, `-`, `_`, `.`.
pub fn client_id(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}-{clean}")
}

/// What the agent's link needs to know; a change makes it reconnect.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Agent name (topic level of `rip/agent/{name}`).
    pub name: String,
    /// Random per process: tells two agents of the same name apart.
    pub instance: String,
    /// Brokers in the order they are tried (shuffled once by the caller).
    pub brokers: Vec<Broker>,
    pub keepalive: Duration,
    /// TLS and credentials.
    pub auth: crate::tls::ClientAuth,
}

/// The link's state, for status lines and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LinkState {
    #[default]
    Connecting,
    Connected(Broker),
    /// All brokers failed; waiting before the next cycle.
    Backoff,
    Stopped,
}

/// Channels between the agent's link and the rest of the agent.
pub struct LinkHandles {
    pub outbox: Arc<Outbox>,
    /// Raw `watch` payloads, in arrival order.
    pub watch_tx: mpsc::Sender<Vec<u8>>,
    pub state_tx: watch::Sender<LinkState>,
    /// Proof of progress for the watchdog: bumped on every event-loop turn.
    pub heartbeat: Arc<AtomicU64>,
    /// Connection attempts made (successful or not): readiness waits for
    /// the first.
    pub attempts: watch::Sender<u64>,
    /// Set when another agent uses our name, with what gave it away.
    pub clash: watch::Sender<Option<String>>,
    /// The `version` of the `watch` list the agent applied (`Some(None)`
    /// for a list without one): announced in our `online` presence.
    pub applied: watch::Receiver<Option<Option<String>>>,
    /// The indexers' verdict on this agent (`verdict/agent/{name}`).
    pub verdict: watch::Sender<Option<protocol::AgentVerdict>>,
}

enum SessionEnd {
    /// Connected, then lost: move to the next broker at once.
    Lost { lasted: Duration },
    /// Could not connect.
    ConnectFailed,
    /// New configuration: reconnect with it.
    Reconfigured,
    /// Drained and disconnected cleanly.
    Finished,
}

/// Runs the agent's MQTT link until `drain` is cancelled and everything
/// queued is published (the caller bounds that in time).
///
/// Connects to one broker at a time, in the configured order, round robin.
/// A refused, dropped or silent connection moves to the next broker at once;
/// backoff applies only after a whole cycle failed. Unacknowledged results
/// go back to the front of the outbox, so a failover loses no result.
pub async fn run_agent_link(
    mut config: watch::Receiver<LinkConfig>,
    handles: LinkHandles,
    drain: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut next = 0usize;
    let mut failed_in_cycle = 0usize;
    let mut clash = ClashWatch::default();
    loop {
        let cfg = config.borrow_and_update().clone();
        let n = cfg.brokers.len().max(1);
        let Some(broker) = cfg.brokers.get(next % n).cloned() else {
            return;
        };
        next = next.wrapping_add(1);
        match agent_session(&cfg, &broker, &mut config, &handles, &drain, &mut clash).await {
            SessionEnd::Finished => {
                handles.state_tx.send_replace(LinkState::Stopped);
                return;
            }
            SessionEnd::Reconfigured => {
                tracing::info!("broker settings changed: reconnecting");
                next = 0;
                failed_in_cycle = 0;
                backoff.reset();
                continue;
            }
            SessionEnd::Lost { lasted } => {
                // A broker that accepts and drops at once (e.g. kicked by a
                // duplicate client id) counts as a failure, so it cannot spin.
                if lasted >= cfg.keepalive {
                    failed_in_cycle = 0;
                    backoff.reset();
                } else {
                    failed_in_cycle += 1;
                }
            }
            SessionEnd::ConnectFailed => failed_in_cycle += 1,
        }
        if failed_in_cycle >= n {
            failed_in_cycle = 0;
            let delay = backoff.next_delay();
            handles.state_tx.send_replace(LinkState::Backoff);
            tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                "no broker reachable: backing off"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = config.changed() => {}
            }
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The agent's presence on `rip/agent/{name}` for the session that
/// started at `since` (RFC 3339): (instance, since) identifies the
/// connection, the same for every indexer.
fn rip_payload(
    cfg: &LinkConfig,
    reason: RipReason,
    since: &str,
    online: Option<(&Broker, Option<&str>)>,
) -> Vec<u8> {
    serde_json::to_vec(&Rip {
        agent: cfg.name.clone(),
        reason,
        since: Some(since.to_owned()),
        instance: Some(cfg.instance.clone()),
        broker: online.map(|(b, _)| b.to_string()),
        watch_version: online.and_then(|(_, v)| v.map(str::to_owned)),
    })
    .unwrap_or_default()
}

fn will(cfg: &LinkConfig, since: &str) -> LastWill {
    LastWill::new(
        protocol::rip_topic(&cfg.name),
        rip_payload(cfg, RipReason::Lost, since, None),
        QoS::AtLeastOnce,
        // Retained, like every presence notice: the topic always holds the
        // agent's latest state for new subscribers.
        true,
    )
}

/// Foreign instances remembered (anyone may publish on our topic).
const MAX_FOREIGN: usize = 64;

/// Watches our own `rip/agent/{name}` for another agent using our name.
///
/// Each agent process has its own client id (name and instance), so two
/// agents of one name both stay connected and both results are kept, and
/// each publishes its retained `online` presence on connect. A *live*
/// `online` notice of another instance (not the retained copy delivered on
/// subscribing, which may be our own previous run) means another process
/// of our name has just connected: a clash. `lost` and `shutdown` notices
/// of other instances are what earlier runs leave behind, never a clash.
#[derive(Default)]
struct ClashWatch {
    /// Foreign instances already reported.
    reported: std::collections::HashSet<String>,
}

impl ClashWatch {
    /// A notice on our own rip topic; `retained` when it is the stored
    /// copy delivered on subscribing. `Some(description)` on a clash: the
    /// caller reports it and publishes our presence again, so that the
    /// other agent sees ours live too (once per foreign instance, so two
    /// agents answer each other once and stop).
    fn notice(&mut self, cfg: &LinkConfig, payload: &[u8], retained: bool) -> Option<String> {
        if payload.len() > protocol::MAX_RESULT_BYTES {
            return None;
        }
        let n = serde_json::from_slice::<Rip>(payload).ok()?;
        let other = n.instance?;
        if other == cfg.instance {
            return None;
        }
        if retained || n.reason != RipReason::Online {
            tracing::info!(agent = %cfg.name, other_instance = %other, reason = n.reason.as_str(), "a notice of another instance of this agent name: an earlier run");
            return None;
        }
        if self.reported.len() >= MAX_FOREIGN {
            self.reported.clear();
        }
        if !self.reported.insert(other.clone()) {
            return None;
        }
        Some(format!(
            "another agent named {:?} (instance {other}, ours {}) connected to {} just now: its presence reached us on {}",
            cfg.name,
            cfg.instance,
            n.broker.as_deref().unwrap_or("a broker"),
            protocol::rip_topic(&cfg.name)
        ))
    }
}

/// Takes the indexers' verdict on this agent; logs it when its state
/// changes (a `trouble` verdict loudly).
fn take_verdict(cfg: &LinkConfig, h: &LinkHandles, payload: &[u8]) {
    if payload.is_empty() {
        h.verdict.send_replace(None);
        return;
    }
    if payload.len() > protocol::MAX_RESULT_BYTES {
        tracing::debug!(
            bytes = payload.len(),
            "oversized verdict on our verdict topic: ignored"
        );
        return;
    }
    let v = match serde_json::from_slice::<protocol::AgentVerdict>(payload) {
        Ok(v) if v.agent == cfg.name => v,
        _ => {
            tracing::debug!("unreadable verdict on our verdict topic: ignored");
            return;
        }
    };
    let before = h.verdict.borrow().as_ref().map(|o| o.state);
    if before != Some(v.state) {
        match v.state {
            protocol::AgentState::Trouble => {
                tracing::warn!(since = %v.since, reason = %v.reason, "the indexers' verdict: TROUBLE ON THIS AGENT (it's me, not the targets)")
            }
            s => {
                tracing::info!(state = ?s, since = %v.since, reason = %v.reason, "the indexers' verdict on this agent")
            }
        }
    }
    h.verdict.send_replace(Some(v));
}

fn report_clash(h: &LinkHandles, what: String) {
    tracing::error!(clash = %what, "AGENT NAME CLASH: two agents use the same name; their results mix under one name. Give each a distinct `name:` in agent.yaml");
    h.clash.send_replace(Some(what));
}

/// Base client options shared by the agent and the indexer.
pub fn options(
    client_id: String,
    broker: &Broker,
    keepalive: Duration,
    clean: bool,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(keepalive)
        .set_clean_session(clean)
        .set_max_packet_size(MAX_PACKET_IN, MAX_PACKET_OUT)
        .set_inflight(WINDOW as u16);
    o
}

/// The event loop with the connect timeout set: a broker that accepts TCP
/// but never answers (stopped) must not hold us longer than a keepalive.
pub fn client(opts: MqttOptions, keepalive: Duration) -> (AsyncClient, EventLoop) {
    let (client, mut el) = AsyncClient::new(opts, WINDOW * 2 + 16);
    let mut net = el.network_options();
    net.set_connection_timeout(keepalive.as_secs().max(1));
    el.set_network_options(net);
    (client, el)
}

/// Waits for the CONNACK; `Err` carries a printable reason.
pub async fn connect(el: &mut EventLoop, keepalive: Duration) -> Result<(), String> {
    match tokio::time::timeout(keepalive + Duration::from_secs(1), el.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
            Ok(())
        }
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => Err(format!("refused: {:?}", ack.code)),
        Ok(Ok(other)) => Err(format!("unexpected first packet {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no CONNACK within the keepalive".into()),
    }
}

/// Drives `poll()` in its own task: never publish from the task that polls,
/// and never cancel `poll()` half way (it is not cancel safe). Events arrive
/// on the returned channel; the first error ends the task. Outgoing events
/// are not passed on but for DISCONNECT ([`disconnect`] waits for it):
/// nobody reads them, and one per acknowledgement would double the
/// channel's traffic.
pub fn spawn_poller(mut el: EventLoop) -> (Events, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let task = tokio::spawn(async move {
        loop {
            let ev = el.poll().await;
            let end = ev.is_err();
            if matches!(&ev, Ok(Event::Outgoing(o)) if *o != rumqttc::Outgoing::Disconnect) {
                continue;
            }
            if tx.send(ev).await.is_err() || end {
                break;
            }
        }
    });
    (rx, task)
}

/// Sends DISCONNECT and lets the poller write it (bounded by `within`), so
/// the broker does not publish the last will.
pub async fn disconnect(client: &AsyncClient, events: &mut Events, within: Duration) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(within, async {
        while let Some(ev) = events.recv().await {
            if matches!(
                ev,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
            ) {
                break;
            }
        }
    })
    .await;
}

/// Events from [`spawn_poller`].
pub type Events = mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>;

/// Aborts the poller when a session ends, whichever way it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn agent_session(
    cfg: &LinkConfig,
    broker: &Broker,
    config: &mut watch::Receiver<LinkConfig>,
    h: &LinkHandles,
    drain: &CancellationToken,
    clash: &mut ClashWatch,
) -> SessionEnd {
    h.state_tx.send_replace(LinkState::Connecting);
    // One client id per process: two agents of one name (a mistake, told
    // loudly by `ClashWatch`) must not take the id from each other in a
    // reconnect loop; the session is clean, so nothing is lost by it.
    let mut opts = options(
        client_id(
            "swarming-agent",
            &format!("{}-{}", cfg.name, cfg.instance.get(..8).unwrap_or("")),
        ),
        broker,
        cfg.keepalive,
        true,
    );
    let session_start = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    opts.set_last_will(will(cfg, &session_start));
    if let Err(e) = cfg.auth.apply(&mut opts, broker) {
        tracing::warn!(broker = %broker, error = %e, "cannot set up TLS for broker");
        h.attempts.send_modify(|n| *n += 1);
        return SessionEnd::ConnectFailed;
    }
    let (client, mut el) = client(opts, cfg.keepalive);
    let connected = connect(&mut el, cfg.keepalive).await;
    h.attempts.send_modify(|n| *n += 1);
    if let Err(reason) = connected {
        tracing::warn!(broker = %broker, %reason, "cannot connect to broker");
        return SessionEnd::ConnectFailed;
    }
    let since = tokio::time::Instant::now();
    let (mut events, poller) = spawn_poller(el);
    let _poller = AbortOnDrop(poller);
    tracing::info!(broker = %broker, "connected to broker");
    h.state_tx
        .send_replace(LinkState::Connected(broker.clone()));
    // rumqttc does not restore subscriptions: subscribe on every connect.
    if let Err(e) = client.try_subscribe(protocol::WATCH_TOPIC, QoS::AtLeastOnce) {
        tracing::warn!(broker = %broker, error = %e, "cannot subscribe to watch");
        return SessionEnd::Lost {
            lasted: Duration::ZERO,
        };
    }
    // Our own lifecycle topic: another instance's presence there reveals a
    // name clash. Our verdict: the indexers' word on whether it is us.
    let rip_topic = protocol::rip_topic(&cfg.name);
    let verdict_topic = format!("{}{}", protocol::VERDICT_AGENT_PREFIX, cfg.name);
    for (topic, qos) in [
        (&rip_topic, QoS::AtMostOnce),
        (&verdict_topic, QoS::AtLeastOnce),
    ] {
        if let Err(e) = client.try_subscribe(topic.clone(), qos) {
            tracing::debug!(broker = %broker, error = %e, topic, "cannot subscribe");
        }
    }
    let mut applied = h.applied.clone();
    applied.borrow_and_update();
    // Our presence, retained: who we are, where, since when, which list.
    let presence = |applied: &watch::Receiver<Option<Option<String>>>| Message {
        topic: rip_topic.clone(),
        payload: rip_payload(
            cfg,
            RipReason::Online,
            &session_start,
            Some((broker, applied.borrow().clone().flatten().as_deref())),
        ),
    };

    // Published, not yet acknowledged, in publish order. A broker sends
    // PUBACKs in the order it received the PUBLISHes (MQTT 3.1.1, 4.6), so
    // each PUBACK settles the oldest.
    let mut inflight: VecDeque<Message> = VecDeque::with_capacity(WINDOW);
    let requeue = |inflight: VecDeque<Message>| {
        // A shutdown notice is rebuilt on the next broker, not replayed.
        h.outbox.requeue_front(
            inflight
                .into_iter()
                .filter(|m| m.topic != rip_topic)
                .collect(),
        );
    };
    let mut draining = false;
    let mut notice_sent = false;
    // Presence notices to publish (retained) before the next results.
    let mut announce = 1u32;
    // Results go out in batches: a batch of publishes written back to back
    // leaves in few TCP segments (Nagle holds the small writes behind the
    // first unacknowledged one) and its PUBACKs come back together, instead
    // of a transmit, a broker wake-up and a PUBACK read per result. Still
    // one result per message.
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let queued = h.outbox.len();
        let due =
            draining || queued >= BATCH || linger.is_some_and(|t| t <= tokio::time::Instant::now());
        if queued == 0 {
            linger = None;
        } else if linger.is_none() {
            linger = Some(tokio::time::Instant::now() + LINGER);
        }
        // Feed the window, a batch at a time. try_publish cannot fail for
        // lack of room: the request channel holds more than WINDOW.
        let room = if due && inflight.len() <= WINDOW - BATCH {
            WINDOW
        } else {
            0
        };
        if room > 0 && queued > 0 {
            linger = None;
        }
        while announce > 0 && !draining && inflight.len() < WINDOW {
            let m = presence(&applied);
            if client
                .try_publish(m.topic.clone(), QoS::AtLeastOnce, true, m.payload.clone())
                .is_err()
            {
                break;
            }
            inflight.push_back(m);
            announce -= 1;
        }
        while inflight.len() < room {
            let Some(m) = h.outbox.pop() else { break };
            match client.try_publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone()) {
                Ok(()) => inflight.push_back(m),
                Err(e) => {
                    tracing::warn!(error = %e, "publish request refused");
                    h.outbox.requeue_front(vec![m]);
                    break;
                }
            }
        }
        if draining && !notice_sent && inflight.is_empty() && h.outbox.is_empty() {
            let notice = Message {
                topic: rip_topic.clone(),
                payload: rip_payload(cfg, RipReason::Shutdown, &session_start, None),
            };
            if client
                .try_publish(
                    notice.topic.clone(),
                    QoS::AtLeastOnce,
                    true,
                    notice.payload.clone(),
                )
                .is_ok()
            {
                inflight.push_back(notice);
                notice_sent = true;
            }
        }
        if notice_sent && inflight.is_empty() {
            disconnect(&client, &mut events, Duration::from_secs(1)).await;
            tracing::info!(broker = %broker, "shutdown notice published, disconnected");
            return SessionEnd::Finished;
        }
        tokio::select! {
            ev = events.recv() => {
                h.heartbeat.fetch_add(1, Ordering::Relaxed);
                match ev {
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == rip_topic => {
                        if let Some(what) = clash.notice(cfg, &p.payload, p.retain) {
                            report_clash(h, what);
                            announce += 1;
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == verdict_topic => {
                        take_verdict(cfg, h, &p.payload);
                    }
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if p.topic == protocol::WATCH_TOPIC && h.watch_tx.send(p.payload.to_vec()).await.is_err() {
                            requeue(inflight);
                            return SessionEnd::Finished;
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        inflight.pop_front();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(broker = %broker, error = %e, requeued = inflight.len(), "lost broker: moving to the next");
                        requeue(inflight);
                        return SessionEnd::Lost { lasted: since.elapsed() };
                    }
                    None => {
                        requeue(inflight);
                        return SessionEnd::Lost { lasted: since.elapsed() };
                    }
                }
            }
            _ = h.outbox.notified(), if inflight.len() <= WINDOW - BATCH && linger.is_none() => {}
            _ = sleep_until_some(linger), if inflight.len() <= WINDOW - BATCH => {}
            _ = drain.cancelled(), if !draining => draining = true,
            changed = applied.changed() => {
                if changed.is_ok() {
                    // Acknowledge the applied list version.
                    announce = 1;
                }
            }
            changed = config.changed() => {
                if changed.is_err() {
                    requeue(inflight);
                    return SessionEnd::Finished;
                }
                if *config.borrow() != *cfg {
                    requeue(inflight);
                    // A clean DISCONNECT: no "lost" will for a planned change.
                    disconnect(&client, &mut events, Duration::from_millis(500)).await;
                    return SessionEnd::Reconfigured;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u32) -> Message {
        Message {
            topic: format!("ping/{i}"),
            payload: vec![],
        }
    }

    #[test]
    fn outbox_drops_oldest_and_requeues_in_order() {
        let o = Outbox::new(3);
        for i in 0..5 {
            o.push(m(i));
        }
        assert_eq!(o.dropped(), 2);
        assert_eq!(o.pop(), Some(m(2)));
        o.requeue_front(vec![m(0), m(1)]);
        // Capacity 3: of [0,1,3,4] the oldest (0) goes.
        let got: Vec<_> = std::iter::from_fn(|| o.pop()).collect();
        assert_eq!(got, vec![m(1), m(3), m(4)]);
        assert_eq!(o.dropped(), 3);
    }

    #[test]
    fn a_name_clash_is_a_live_online_notice_of_another_instance() {
        let cfg = LinkConfig {
            name: "twin".into(),
            instance: "aaaa".into(),
            brokers: vec![],
            keepalive: Duration::from_secs(1),
            auth: Default::default(),
        };
        let mut w = ClashWatch::default();
        let ours = br#"{"agent":"twin","reason":"online","instance":"aaaa"}"#;
        let their_will = br#"{"agent":"twin","reason":"lost","instance":"bbbb"}"#;
        let theirs = br#"{"agent":"twin","reason":"online","instance":"bbbb","broker":"b:1883"}"#;
        assert_eq!(w.notice(&cfg, ours, false), None);
        assert_eq!(w.notice(&cfg, b"garbage", false), None);
        // An earlier run's will, even live, and its retained presence are
        // history, not a clash.
        assert_eq!(w.notice(&cfg, their_will, false), None);
        assert_eq!(w.notice(&cfg, theirs, true), None);
        // Another process of our name connecting now is.
        let what = w.notice(&cfg, theirs, false).expect("a clash");
        assert!(
            what.contains("bbbb") && what.contains("twin") && what.contains("b:1883"),
            "{what}"
        );
        // Told once per instance: two agents answer each other once, then stop.
        assert_eq!(w.notice(&cfg, theirs, false), None);
    }

    #[test]
    fn client_ids_are_safe() {
        assert_eq!(
            client_id("swarming-agent", "a+b/c#"),
            "swarming-agent-a_b_c_"
        );
    }
}
