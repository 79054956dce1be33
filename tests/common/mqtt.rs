//! A test MQTT client that records every message it receives.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A message as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// Port of the broker it came from.
    pub port: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("json payload")
    }
}

/// A subscriber on one or several brokers, merged into one stream.
pub struct Collector {
    rx: mpsc::UnboundedReceiver<Received>,
    /// Every message received so far, matching or not, in arrival order.
    pub history: Vec<Received>,
    /// Received but not yet returned by `next_matching` / `drain_for`.
    unread: std::collections::VecDeque<Received>,
    clients: Vec<AsyncClient>,
}

impl Collector {
    /// Subscribes to `topics` on every broker port; returns once all
    /// subscriptions are acknowledged.
    pub async fn new(ports: &[u16], topics: &[&str]) -> Collector {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for &port in ports {
            let id = format!("test-{}-{}", port, rand::random::<u32>());
            let mut o = MqttOptions::new(id, "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(60));
            o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
            let (client, mut el) = AsyncClient::new(o, 100);
            for t in topics {
                client
                    .subscribe(*t, QoS::AtLeastOnce)
                    .await
                    .expect("subscribe");
            }
            let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx.send(Received {
                                topic: p.topic,
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                                port,
                            });
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ack_tx.send(());
                        }
                        Ok(_) => {}
                        // The broker may be killed by the test: retry.
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            });
            for _ in topics {
                tokio::time::timeout(Duration::from_secs(10), ack_rx.recv())
                    .await
                    .expect("suback in time");
            }
            clients.push(client);
        }
        Collector {
            rx,
            history: Vec::new(),
            unread: Default::default(),
            clients,
        }
    }

    /// The next message matching `pred`, within `within`; messages that do
    /// not match stay unread for later calls.
    pub async fn next_matching(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&Received) -> bool,
    ) -> Option<Received> {
        if let Some(i) = self.unread.iter().position(&mut pred) {
            return self.unread.remove(i);
        }
        tokio::time::timeout(within, async {
            while let Some(m) = self.rx.recv().await {
                self.history.push(m.clone());
                if pred(&m) {
                    return Some(m);
                }
                self.unread.push_back(m);
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Everything unread plus what arrives within `within` (the full window
    /// elapses).
    pub async fn drain_for(&mut self, within: Duration) -> Vec<Received> {
        let mut out: Vec<Received> = self.unread.drain(..).collect();
        let _ = tokio::time::timeout(within, async {
            while let Some(m) = self.rx.recv().await {
                self.history.push(m.clone());
                out.push(m);
            }
        })
        .await;
        out
    }
}

/// Publishes one message (QoS 1) and waits for the broker's PUBACK.
pub async fn publish(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let id = format!("test-pub-{}", rand::random::<u32>());
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    let (client, mut el) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("publish to {port} failed: {e}"),
            }
        }
    })
    .await
    .expect("puback in time");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
}
