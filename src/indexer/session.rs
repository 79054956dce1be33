//! Broker sessions: one persistent MQTT session per broker, all
//! concurrent. Each connects (clean session off), subscribes, publishes
//! `watch`, hands every message to [`Intake::intake`] and the accepted ones
//! to the writer; reconnects quickly when the broker is back.
//!
//! Acknowledgement path: the writer acks by pushing onto this connection's
//! unbounded ack queue (never blocks); a per-connection acker task moves
//! acks into rumqttc's request channel. So no cycle of bounded channels:
//! writer -> ack queue (unbounded) -> acker -> request channel -> event
//! loop -> events -> session -> writer queue -> writer, where the writer
//! never waits on anything downstream of it. The ack queue stays small:
//! the broker sends at most its in-flight window of unacknowledged messages.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Broker;
use crate::elasticsearch::BulkDoc;
use crate::mqtt;
use crate::protocol;

use super::intake::Intake;
use super::stats::BrokerStats;
use super::supervisor::Component;

/// Longest wait between connection attempts: a broker that accepts
/// connections again is re-subscribed within about this (a refused
/// connection on a LAN costs nothing to retry).
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// First wait between connection attempts.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Largest packet taken from a broker: the protocol's own limit (256 MiB),
/// so that whatever mosquitto delivers is read whole and refused by intake
/// (one counted skip) instead of rumqttc dropping the connection, which the
/// broker would answer by redelivering the same message forever.
pub const MAX_PACKET_IN: usize = 268_435_455 + 5;

/// One accepted message, on its way to disk; `ack` is `None` for the
/// indexer's own documents (verdict transitions).
pub struct Item {
    pub doc: BulkDoc,
    pub ack: Option<Ack>,
}

/// The acknowledgement of one message, sent once its document is durable.
pub struct Ack {
    /// The connection's, shared by all its messages (one reference count
    /// per message, not one per handle).
    path: Arc<AckPath>,
    publish: Publish,
}

/// Where a connection's acknowledgements go.
struct AckPath {
    client: AsyncClient,
    tx: mpsc::UnboundedSender<Publish>,
    broker: Arc<BrokerStats>,
}

impl Ack {
    /// Sends the PUBACK; never blocks: straight into rumqttc's request
    /// channel when it has room, else through the connection's acker (the
    /// broker matches PUBACKs by packet id, so their order does not
    /// matter). If the connection is gone, the broker redelivers on the
    /// next one (and the writer finds a duplicate).
    pub fn send(self) {
        if self.path.client.try_ack(&self.publish).is_err() {
            let _ = self.path.tx.send(self.publish);
        }
    }

    /// The counters of the broker the message came from.
    pub fn broker(&self) -> &BrokerStats {
        &self.path.broker
    }
}

/// What every session shares.
pub struct Shared {
    pub intake: Arc<Intake>,
    pub writer: mpsc::Sender<Item>,
    /// Sessions that made their first connection attempt.
    pub tried: watch::Sender<usize>,
    /// Bumped when the writer lost messages it had taken (a restart after
    /// a panic): sessions reconnect so the brokers redeliver them.
    pub redeliver: watch::Sender<u64>,
}

/// Settings of one session.
#[derive(Clone)]
pub struct SessionConfig {
    pub broker: Broker,
    pub client_id: String,
    pub keepalive: Duration,
    /// TLS client certificate and/or MQTT login.
    pub auth: crate::tls::ClientAuth,
}

/// One broker's session, until `cancel`: connect, subscribe, publish
/// `watch`, take messages; reconnect with a short backoff.
pub async fn run(
    cfg: SessionConfig,
    shared: Arc<Shared>,
    mut watch_rx: watch::Receiver<Arc<Vec<u8>>>,
    comp: Arc<Component>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let broker = cfg.broker.to_string();
    let stats = shared.intake.stats.clone();
    let counters = stats.broker(&broker);
    let mut redeliver = shared.redeliver.subscribe();
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut first_attempt = true;
    loop {
        let mut opts = mqtt::options(cfg.client_id.clone(), &cfg.broker, cfg.keepalive, false);
        opts.set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET_IN, mqtt::MAX_PACKET_OUT);
        let tls = cfg.auth.apply(&mut opts, &cfg.broker);
        let (client, mut el) = mqtt::client(opts, cfg.keepalive);
        comp.set_idle(true);
        let connected = match tls {
            Err(e) => Err(format!("cannot set up TLS: {e}")),
            Ok(()) => tokio::select! {
                r = mqtt::connect(&mut el, cfg.keepalive) => r,
                _ = cancel.cancelled() => return Ok(()),
            },
        };
        comp.progress();
        if first_attempt {
            first_attempt = false;
            shared.tried.send_modify(|n| *n += 1);
        }
        if let Err(reason) = connected {
            let delay = backoff.next_delay();
            comp.degraded(format!("cannot connect: {reason}"));
            tracing::warn!(broker = %broker, %reason, retry_ms = delay.as_millis() as u64, "cannot connect to broker");
            tokio::select! {
                _ = tokio::time::sleep(delay) => continue,
                _ = cancel.cancelled() => return Ok(()),
            }
        }
        backoff.reset();
        let up = Up::new(&counters, &stats);
        shared.intake.swarm.broker_connected(&cfg.broker, true); // http: hook
        comp.ok();
        tracing::info!(broker = %broker, "connected to broker");
        let (mut events, poller) = mqtt::spawn_poller(el);
        let _poller = AbortOnDrop(poller);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let _acker = AbortOnDrop(tokio::spawn(acker(client.clone(), ack_rx)));
        let ack_path = Arc::new(AckPath {
            client: client.clone(),
            tx: ack_tx,
            broker: counters.clone(),
        });
        // Subscriptions are restored by nobody but us; the persistent
        // session keeps what was queued while we were away.
        // Verdicts: every broker holds the whole book, retained. The
        // retained target verdicts it already holds come back on subscribing;
        // those of targets no longer listed are cleared.
        let book = shared.intake.insight.book();
        let _verdicts = AbortOnDrop(tokio::spawn(publish_verdicts(
            client.clone(),
            book.clone(),
            broker.clone(),
        )));
        let subscribed = client.try_subscribe_many([
            SubscribeFilter::new(format!("{}+", protocol::PING_PREFIX), QoS::AtLeastOnce),
            SubscribeFilter::new("rip/#".to_owned(), QoS::AtLeastOnce),
            SubscribeFilter::new(
                format!("{}+", protocol::VERDICT_TARGET_PREFIX),
                QoS::AtMostOnce,
            ),
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
        redeliver.borrow_and_update();
        let end = loop {
            comp.set_idle(true);
            let ev = tokio::select! {
                ev = events.recv() => ev,
                changed = watch_rx.changed() => {
                    comp.set_idle(false);
                    if changed.is_err() {
                        break None;
                    }
                    let payload = watch_rx.borrow_and_update().clone();
                    tracing::info!(broker = %broker, "publishing the new target list");
                    if let Err(e) = client.try_publish(protocol::WATCH_TOPIC, QoS::AtLeastOnce, true, payload.to_vec()) {
                        tracing::warn!(broker = %broker, error = %e, "cannot publish watch");
                    }
                    continue;
                }
                _ = redeliver.changed() => {
                    break Some("the writer restarted: reconnecting so the broker redelivers".to_owned());
                }
                _ = cancel.cancelled() => break None,
            };
            comp.set_idle(false);
            comp.progress();
            match ev {
                Some(Ok(Event::Incoming(Packet::Publish(p))))
                    if p.topic.starts_with(protocol::VERDICT_TARGET_PREFIX) =>
                {
                    if p.retain && !p.payload.is_empty() && !book.borrow().contains_key(&p.topic) {
                        tracing::info!(broker = %broker, topic = %p.topic.escape_debug(), "clearing the verdict of a target no longer listed");
                        if let Err(e) =
                            client.try_publish(p.topic.clone(), QoS::AtLeastOnce, true, Vec::new())
                        {
                            tracing::debug!(broker = %broker, error = %e, "cannot clear a verdict");
                        }
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(mut p)))) => {
                    let doc = shared
                        .intake
                        .intake(&cfg.broker, &counters, &p.topic, &p.payload);
                    // Only the packet id and QoS are needed to ack.
                    p.payload = Default::default();
                    p.topic = String::new();
                    match doc {
                        Some(doc) => {
                            let item = Item {
                                doc,
                                ack: Some(Ack {
                                    path: ack_path.clone(),
                                    publish: p,
                                }),
                            };
                            // Waiting for room downstream is not a wedge of
                            // ours: the writer is watched on its own.
                            comp.set_idle(true);
                            let sent = shared.writer.send(item).await;
                            comp.set_idle(false);
                            if sent.is_err() {
                                tracing::debug!("writer gone: message left unacknowledged");
                            }
                        }
                        // Garbage is acknowledged at once: redelivering it
                        // helps nobody.
                        None => {
                            let _ = ack_path.tx.send(p);
                        }
                    }
                }
                Some(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    tracing::info!(broker = %broker, "subscribed to ping/+ and rip/#");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("event loop ended".to_owned()),
            }
        };
        drop(up);
        shared
            .intake
            .broker_lost(&cfg.broker, std::time::SystemTime::now());
        shared.intake.swarm.broker_connected(&cfg.broker, false); // http: hook
        match end {
            Some(reason) => {
                let delay = backoff.next_delay();
                comp.degraded(format!("lost: {reason}"));
                tracing::warn!(broker = %broker, %reason, retry_ms = delay.as_millis() as u64, "lost broker");
                comp.set_idle(true);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
            None => {
                drop(_acker);
                mqtt::disconnect(&client, &mut events, Duration::from_millis(500)).await;
                tracing::info!(broker = %broker, "disconnected");
                return Ok(());
            }
        }
    }
}

/// Publishes the verdict book on one connection, retained: all of it
/// first, then what changes (an emptied payload clears a removed target's
/// verdict). Runs beside the session (its own task): it waits on the
/// request channel, which the event loop drains whatever the session
/// does, so nothing waits on it.
async fn publish_verdicts(
    client: AsyncClient,
    mut book: watch::Receiver<Arc<super::insight::VerdictBook>>,
    broker: String,
) {
    let mut sent: std::collections::HashMap<String, Arc<Vec<u8>>> = Default::default();
    loop {
        let current = book.borrow_and_update().clone();
        let mut published = 0usize;
        for (topic, payload) in current.iter() {
            if sent.get(topic).is_some_and(|p| p == payload) {
                continue;
            }
            let bytes = payload.to_vec();
            if client
                .publish(topic.clone(), QoS::AtLeastOnce, true, bytes)
                .await
                .is_err()
            {
                return;
            }
            sent.insert(topic.clone(), payload.clone());
            published += 1;
        }
        let gone: Vec<String> = sent
            .keys()
            .filter(|t| !current.contains_key(*t))
            .cloned()
            .collect();
        for topic in gone {
            if client
                .publish(topic.clone(), QoS::AtLeastOnce, true, Vec::new())
                .await
                .is_err()
            {
                return;
            }
            sent.remove(&topic);
            published += 1;
        }
        if published > 0 {
            tracing::debug!(broker = %broker, published, "verdicts published");
        }
        if book.changed().await.is_err() {
            return;
        }
    }
}

/// Moves acks into rumqttc's request channel, in order.
async fn acker(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<Publish>) {
    while let Some(p) = rx.recv().await {
        if client.ack(&p).await.is_err() {
            return;
        }
    }
}

/// Counts a connected session for as long as it lives.
struct Up<'a> {
    counters: &'a BrokerStats,
    stats: &'a super::IndexerStats,
}

impl<'a> Up<'a> {
    fn new(counters: &'a BrokerStats, stats: &'a super::IndexerStats) -> Self {
        counters.connected.store(true, Ordering::Relaxed);
        counters.connects.fetch_add(1, Ordering::Relaxed);
        stats.brokers_up.fetch_add(1, Ordering::Relaxed);
        Up { counters, stats }
    }
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.counters.connected.store(false, Ordering::Relaxed);
        self.stats.brokers_up.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts a helper task when the connection ends, whichever way.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
