//! Verdicts and presence through the indexer binary and real mosquitto
//! brokers: results of four agents of two providers are published as the
//! agents would, and the retained `verdict/...` topics and the stored
//! state-change documents must say whose fault each bad view is.
//! (Real agents under scripted network faults: packaging/bench/insight-scenarios.sh
//! and tests/insight_scenarios.rs.)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::daemon::Daemon;
use common::fixtures::{indexer_config, run_start};
use common::mosquitto::Mosquitto;
use common::mqtt::{publish, Collector, Received};

const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const SEC: Duration = Duration::from_secs(1);
/// Seconds between the rounds of the agents here.
const INTERVAL: u64 = 10;

const AGENTS: [(&str, &str); 4] = [("a1", "p1"), ("a2", "p1"), ("a3", "p2"), ("a4", "p2")];
const TARGETS: [&str; 5] = ["t1", "t2", "t3", "t4", "t5"];

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts an indexer with its file output in `dir` and its HTTP endpoint
/// on a free port (returned).
fn start_with_http(dir: &Path, name: &str, brokers: &[String]) -> (Daemon, u16) {
    let port = free_port();
    let file = format!(
        "file: {{path: {}/results.ndjson}}\nhttp: {{listen: \"127.0.0.1:{port}\"}}\n",
        dir.display()
    );
    let cfg = indexer_config(dir, name, brokers, &TARGETS, &file);
    (
        Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[]),
        port,
    )
}

fn start(dir: &Path, name: &str, brokers: &[String]) -> Daemon {
    start_for(dir, name, brokers, &TARGETS)
}

fn start_for(dir: &Path, name: &str, brokers: &[String], targets: &[&str]) -> Daemon {
    let file = format!(
        "file: {{path: {}/results.ndjson}}\nhttp: {{listen: off}}\n",
        dir.display()
    );
    let cfg = indexer_config(dir, name, brokers, targets, &file);
    Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[])
}

/// Round `k` of the test's clock: an hour ago plus k intervals, plus a
/// per-agent phase (agents' slots differ).
fn round_ts(k: u64, agent: usize) -> String {
    let now = run_start();
    let base = now - now % 60 - 3600;
    let at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(base + k * INTERVAL)
        + Duration::from_millis(100 * agent as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

fn result(agent: &str, provider: &str, target: &str, ts: &str, answered: bool) -> Vec<u8> {
    let (received, rtt, rtts) = if answered {
        (
            3,
            serde_json::json!({"min": 1.0, "avg": 1.2, "max": 1.5, "stddev": 0.2}),
            serde_json::json!([1.0, 1.1, 1.5]),
        )
    } else {
        (
            0,
            serde_json::Value::Null,
            serde_json::json!([null, null, null]),
        )
    };
    serde_json::json!({
        "agent": agent, "labels": {"provider": provider}, "target": target,
        "addr": "127.0.0.1", "timestamp": ts, "interval": INTERVAL as f64,
        "sent": 3, "received": received, "rtt": rtt, "rtts": rtts
    })
    .to_string()
    .into_bytes()
}

/// Publishes rounds `ks` of every agent towards every target; `answered`
/// says which (round, agent, target) got replies.
async fn rounds(port: u16, ks: std::ops::Range<u64>, answered: impl Fn(u64, &str, &str) -> bool) {
    for k in ks {
        for (i, (agent, provider)) in AGENTS.iter().enumerate() {
            for target in TARGETS {
                let ok = answered(k, agent, target);
                let payload = result(agent, provider, target, &round_ts(k, i), ok);
                publish(port, &format!("ping/{target}"), &payload, false).await;
            }
        }
    }
}

/// Waits for the retained verdict on `topic` to satisfy `want`, on the
/// broker at `port`.
async fn verdict(
    sub: &mut Collector,
    port: u16,
    topic: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let m = sub
        .next_matching(15 * SEC, |m| {
            m.port == port
                && m.topic == topic
                && serde_json::from_slice::<serde_json::Value>(&m.payload).is_ok_and(|j| want(&j))
        })
        .await;
    match m {
        Some(m) => m.json(),
        None => {
            let last: Vec<String> = sub
                .history
                .iter()
                .filter(|m| m.topic == topic)
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            panic!("no such verdict on {topic}: {last:?}")
        }
    }
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("results.ndjson"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (up to 20 s) for a stored document matching `want`: the file
/// output is written in batches.
async fn wait_doc(dir: &Path, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + 20 * SEC;
    loop {
        if let Some(d) = lines(dir).into_iter().find(|d| want(d)) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such document in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_tell_target_provider_and_agent_faults_apart_on_every_broker() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let brokers = [a.addr(), b.addr()];
    let dir1 = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let (mut idx1, http) = start_with_http(dir1.path(), "idx-one", &brokers);
    let mut idx2 = start(dir2.path(), "idx-two", &brokers);
    for idx in [&mut idx1, &mut idx2] {
        idx.wait_log(&["subscribed", &a.addr()], 10 * SEC).await;
        idx.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;
    }
    let mut sub = Collector::new(&[a.port, b.port], &["verdict/#"]).await;
    // Every listed target has a verdict at once, retained: unknown.
    for port in [a.port, b.port] {
        let v = verdict(&mut sub, port, "verdict/target/t5", |_| true).await;
        assert_eq!(v["state"], "unknown", "{v}");
    }

    // A calm start: everyone up, every agent ok.
    rounds(a.port, 0..3, |_, _, _| true).await;
    for t in TARGETS {
        verdict(&mut sub, b.port, &format!("verdict/target/{t}"), |v| {
            v["state"] == "up" && v["agents_total"] == 4
        })
        .await;
    }
    for (agent, _) in AGENTS {
        let v = verdict(&mut sub, b.port, &format!("verdict/agent/{agent}"), |_| {
            true
        })
        .await;
        assert_eq!(v["state"], "ok", "{v}");
    }

    // From round 3: t1 is down for everyone; t2 is lost by provider p1's
    // agents; agent a4 loses t3, t4 and t5 while its peers do not.
    let faulty = |k: u64, agent: &str, target: &str| {
        if k < 3 {
            return true;
        }
        match target {
            "t1" => false,
            "t2" => !(agent == "a1" || agent == "a2"),
            _ => agent != "a4",
        }
    };
    rounds(a.port, 3..6, faulty).await;
    let t1 = verdict(&mut sub, a.port, "verdict/target/t1", |v| {
        v["state"] == "down"
    })
    .await;
    assert_eq!(
        (
            &t1["cause"],
            &t1["agents_bad"],
            &t1["agents_total"],
            &t1["providers_bad"]
        ),
        (&"target".into(), &4.into(), &4.into(), &2.into()),
        "{t1}"
    );
    // The incident starts with the round that showed it.
    assert_eq!(t1["since"].as_str(), Some(round_ts(3, 0).as_str()), "{t1}");
    let t2 = verdict(&mut sub, a.port, "verdict/target/t2", |v| {
        v["state"] == "down"
    })
    .await;
    assert_eq!(
        (&t2["cause"], &t2["provider"]),
        (&"provider".into(), &"p1".into()),
        "{t2}"
    );
    let t3 = verdict(&mut sub, a.port, "verdict/target/t3", |v| {
        v["cause"] != "none"
    })
    .await;
    assert_eq!(t3["cause"], "agent", "{t3}");
    // An agent's verdict needs a full round of it after the view showed.
    rounds(a.port, 6..8, faulty).await;
    let a4 = verdict(&mut sub, a.port, "verdict/agent/a4", |v| v["state"] != "ok").await;
    assert_eq!(a4["state"], "trouble", "{a4}");
    // Its peers are fine, and so are the targets they all see answer.
    for agent in ["a1", "a2", "a3"] {
        let v = sub
            .history
            .iter()
            .rev()
            .find(|m| m.topic == format!("verdict/agent/{agent}"))
            .map(Received::json)
            .unwrap();
        assert_eq!(v["state"], "ok", "{v}");
    }

    // Two indexers compute the same verdicts, and never fight over a
    // retained topic: once both brokers hold the verdicts above, nothing
    // more is published while the rounds say the same.
    verdict(&mut sub, b.port, "verdict/agent/a4", |v| {
        v["state"] == "trouble"
    })
    .await;
    sub.drain_for(Duration::from_millis(300)).await;
    let settled = sub.drain_for(3 * SEC).await;
    let mut seen: BTreeMap<(u16, String), BTreeSet<Vec<u8>>> = BTreeMap::new();
    for m in settled {
        seen.entry((m.port, m.topic)).or_default().insert(m.payload);
    }
    for ((port, topic), payloads) in &seen {
        assert_eq!(
            payloads.len(),
            1,
            "{topic} on {port} flaps between {payloads:?}"
        );
    }
    // The operator's JSON shows the same verdicts.
    let body = reqwest::get(format!("http://127.0.0.1:{http}/api/state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let targets = state["verdicts"]["targets"].as_array().unwrap();
    assert!(targets.contains(&t1), "{state}");
    assert!(
        state["verdicts"]["agents"]
            .as_array()
            .unwrap()
            .contains(&a4),
        "{state}"
    );
    let mut late = Collector::new(&[a.port, b.port], &["verdict/target/t1"]).await;
    for port in [a.port, b.port] {
        let m = late
            .next_matching(5 * SEC, |m| m.port == port)
            .await
            .expect("retained verdict");
        assert!(m.retain);
        assert_eq!(m.json(), t1, "every broker holds the same verdict");
    }

    // Everything answers again: the incidents end, and both ends are stored,
    // by each indexer (one id for both: stored once in Elasticsearch).
    rounds(a.port, 8..11, |_, _, _| true).await;
    verdict(&mut sub, b.port, "verdict/target/t1", |v| {
        v["state"] == "up"
    })
    .await;
    for dir in [dir1.path(), dir2.path()] {
        wait_doc(dir, |d| {
            d["event"]["action"] == "target.up" && d["verdict"]["subject"] == "t1"
        })
        .await;
    }
    let mut docs: Vec<serde_json::Value> = lines(dir1.path())
        .into_iter()
        .filter(|d| d["event"]["dataset"] == "swarming.verdict" && d["verdict"]["subject"] == "t1")
        .collect();
    docs.sort_by_key(|d| d["@timestamp"].as_str().unwrap_or("").to_owned());
    let states: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["verdict"]["state"].as_str())
        .collect();
    assert_eq!(states, ["down", "up"], "{docs:?}");
    // Both indexers stored the same incidents, with the same ids.
    let incidents = |dir: &Path| {
        let mut v: Vec<String> = lines(dir)
            .into_iter()
            .filter(|d| d["event"]["dataset"] == "swarming.verdict")
            .map(|d| d.to_string())
            .collect();
        v.sort();
        v
    };
    wait_doc(dir2.path(), |d| d["event"]["action"] == "agent.ok").await;
    assert_eq!(incidents(dir1.path()), incidents(dir2.path()));
    let end = &docs[1];
    assert_eq!(end["verdict"]["previous"]["state"], "down", "{end}");
    assert_eq!(end["verdict"]["previous"]["cause"], "target", "{end}");
    assert_eq!(end["verdict"]["previous"]["since"], t1["since"], "{end}");
    assert_eq!(end["event"]["action"], "target.up");
    // The checks carry their judgement.
    let check = lines(dir1.path())
        .into_iter()
        .find(|d| d["monitor"]["name"] == "t1" && d["monitor"]["status"] == "down")
        .expect("a check of t1 down");
    assert_eq!(check["ping"]["state"], "down", "{check}");
    assert_eq!(check["ping"]["levels"]["slow_ms"], 150.0, "{check}");
    assert_eq!(check["ping"]["levels"]["lossy"], 0.1, "{check}");
}

/// Presence as an agent of contract v2 publishes it.
fn presence(reason: &str, instance: &str, since: &str, broker: &str) -> Vec<u8> {
    serde_json::json!({
        "agent": "a1", "reason": reason, "instance": instance, "since": since, "broker": broker
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_will_of_an_earlier_connection_is_stale_never_lost() {
    let mut a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut idx = start(dir.path(), "idx-presence", &[a.addr(), b.addr()]);
    idx.wait_log(&["subscribed", &a.addr()], 10 * SEC).await;
    idx.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;
    let mut sub = Collector::new(&[b.port], &["verdict/agent/a1"]).await;

    // a1 connects to A, then A freezes and a1 moves on to B; its results
    // come through B.
    let (s1, s2) = (round_ts(0, 0), round_ts(1, 0));
    publish(
        a.port,
        "rip/agent/a1",
        &presence("online", "i1", &s1, &a.addr()),
        true,
    )
    .await;
    publish(
        b.port,
        "rip/agent/a1",
        &presence("online", "i1", &s2, &b.addr()),
        true,
    )
    .await;
    for k in 1..4 {
        let ts = round_ts(k, 0);
        publish(
            b.port,
            "ping/t1",
            &result("a1", "p1", "t1", &ts, true),
            false,
        )
        .await;
    }
    verdict(&mut sub, b.port, "verdict/agent/a1", |v| v["state"] == "ok").await;
    // A comes back and publishes the will of the first connection.
    a.kill().await;
    a.restart().await;
    publish(
        a.port,
        "rip/agent/a1",
        &presence("lost", "i1", &s1, &a.addr()),
        true,
    )
    .await;
    idx.wait_log(
        &["stale notice of an earlier connection", "agent=a1"],
        10 * SEC,
    )
    .await;
    // Recorded as such; the agent's verdict stays ok.
    let stale = wait_doc(dir.path(), |d| d["event"]["action"] == "lost").await;
    assert_eq!(stale["swarming"]["agent"]["stale"], true, "{stale}");
    let again = sub.drain_for(3 * SEC).await;
    assert!(
        again.iter().all(|m| m.json()["state"] == "ok"),
        "a stale will changed the verdict: {again:?}"
    );
    // One `online` document per connection.
    let online = |dir: &Path| {
        lines(dir)
            .into_iter()
            .filter(|d| d["event"]["action"] == "online")
            .count()
    };
    assert_eq!(online(dir.path()), 2);

    // The will of the current connection is the agent's loss.
    publish(
        b.port,
        "rip/agent/a1",
        &presence("lost", "i1", &s2, &b.addr()),
        true,
    )
    .await;
    verdict(&mut sub, b.port, "verdict/agent/a1", |v| {
        v["state"] == "lost"
    })
    .await;
}

const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_coming_back_gives_no_false_lost() {
    let brokers = [Mosquitto::start().await, Mosquitto::start().await];
    let addrs = [brokers[0].addr(), brokers[1].addr()];
    let dir = tempfile::tempdir().unwrap();
    let mut idx = start_for(
        dir.path(),
        "idx-frozen",
        &addrs,
        &["127.0.0.1", "127.0.0.2"],
    );
    idx.wait_log(&["subscribed", &addrs[0]], 10 * SEC).await;
    idx.wait_log(&["subscribed", &addrs[1]], 10 * SEC).await;
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: probe-f\nlabels: {{provider: p1}}\nbrokers: [\"{}\", \"{}\"]\nkeepalive: 1s\nping: {{interval: 1s, count: 1, timeout: 300ms}}\nstate_dir: {}\n",
            addrs[0],
            addrs[1],
            dir.path().display()
        ),
    )
    .unwrap();
    let mut agent = Daemon::spawn(AGENT, &["-v", "-c", cfg.to_str().unwrap()], &[]);
    let line = agent.wait_log(&["connected to broker"], 10 * SEC).await;
    let first = usize::from(line.contains(&addrs[1]));
    let mut sub = Collector::new(&[brokers[1 - first].port], &["verdict/agent/probe-f"]).await;
    verdict(
        &mut sub,
        brokers[1 - first].port,
        "verdict/agent/probe-f",
        |v| v["state"] == "ok",
    )
    .await;

    // The agent's broker freezes: the agent moves to the other one.
    brokers[first].freeze();
    agent
        .wait_new_log(&["connected to broker", &addrs[1 - first]], 15 * SEC)
        .await;
    // It comes back and publishes the will of the agent's old connection.
    brokers[first].thaw();
    let will = wait_doc(dir.path(), |d| d["event"]["action"] == "lost").await;
    assert_eq!(will["swarming"]["agent"]["stale"], true, "{will}");
    // Not lost: the verdict stays ok.
    let after = sub.drain_for(4 * SEC).await;
    assert!(
        after.iter().all(|m| m.json()["state"] == "ok"),
        "false verdict: {:?}",
        after
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload))
            .collect::<Vec<_>>()
    );
    assert!(
        !lines(dir.path())
            .iter()
            .any(|d| d["event"]["action"] == "lost" && d["swarming"]["agent"]["stale"] == false),
        "a will recorded as a loss"
    );
    agent.signal("TERM");
    agent.wait(10 * SEC).await;
}
