//! The agent binary against real mosquitto brokers, pinging loopback.
//! Needs root or CAP_NET_RAW (raw ICMP sockets) and mosquitto installed.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::daemon::{run, Daemon};
use common::mosquitto::Mosquitto;
use common::mqtt::{publish, Collector, Received};
use swarming::protocol::PingResult;

const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");
const SEC: Duration = Duration::from_secs(1);

/// A config file for a fast agent: 1 s rounds of 2 echoes, 1 s keepalive.
fn config(dir: &tempfile::TempDir, name: &str, brokers: &[String]) -> PathBuf {
    let path = dir.path().join("agent.yaml");
    let brokers: Vec<String> = brokers.iter().map(|b| format!("\"{b}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "name: {name}\nlabels: {{provider: test, location: Lab}}\nbrokers: [{}]\nkeepalive: 1s\nping: {{interval: 1s, count: 2, timeout: 300ms}}\nlimits: {{max_targets: 10, max_rate: 100}}\nstate_dir: {}\n",
            brokers.join(", "),
            dir.path().display()
        ),
    )
    .unwrap();
    path
}

fn start_agent(cfg: &std::path::Path) -> Daemon {
    Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[])
}

fn result(m: &Received) -> PingResult {
    serde_json::from_slice(&m.payload).expect("a PingResult")
}

fn ts_ms(r: &PingResult) -> u64 {
    humantime::parse_rfc3339(&r.timestamp)
        .expect("RFC 3339 timestamp")
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn watch(port: u16, targets: &[&str]) {
    let list = serde_json::json!({"targets": targets, "version": "t"});
    publish(port, "watch", list.to_string().as_bytes(), true).await;
}

/// Asserts the rounds of one target form an unbroken 1 s sequence.
fn assert_no_gap(results: &[PingResult], target: &str) -> usize {
    let ts: BTreeSet<u64> = results
        .iter()
        .filter(|r| r.target == target)
        .map(ts_ms)
        .collect();
    let ts: Vec<u64> = ts.into_iter().collect();
    assert!(ts.len() >= 2, "too few rounds for {target}: {ts:?}");
    for w in ts.windows(2) {
        assert_eq!(
            w[1] - w[0],
            1000,
            "round missing for {target} between {} and {}: {ts:?}",
            w[0],
            w[1]
        );
    }
    ts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_exact_results_for_loopback_targets() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-1", &[broker.addr()]);
    watch(
        broker.port,
        &["127.0.0.1", "::1", "no-such-host.invalid", "a/b"],
    )
    .await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    // As root it uses raw sockets, and says so.
    agent
        .wait_log(&["ICMP echo through raw ICMP sockets"], 10 * SEC)
        .await;

    let m = sub
        .next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.1")
        .await
        .expect("a v4 result");
    let r = result(&m);
    assert_eq!(r.agent, "probe-1");
    assert_eq!(r.labels.get("provider").map(String::as_str), Some("test"));
    assert_eq!(r.labels.get("location").map(String::as_str), Some("Lab"));
    assert_eq!(r.target, "127.0.0.1");
    assert_eq!(r.addr, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(r.interval, 1.0);
    assert_eq!((r.sent, r.received), (2, 2));
    assert_eq!(r.rtts.len(), 2);
    assert!(
        r.rtts
            .iter()
            .all(|x| matches!(x, Some(ms) if *ms >= 0.0 && *ms < 300.0)),
        "{:?}",
        r.rtts
    );
    let s = r.rtt.expect("rtt stats");
    assert!(s.min <= s.avg && s.avg <= s.max && s.stddev >= 0.0, "{s:?}");
    assert!(r.error.is_none());
    assert!(r.timestamp.ends_with('Z'), "UTC: {}", r.timestamp);
    assert!(!m.retain);
    // The raw JSON carries every field of the contract.
    let j = m.json();
    for k in [
        "agent",
        "labels",
        "target",
        "addr",
        "timestamp",
        "interval",
        "sent",
        "received",
        "rtt",
        "rtts",
    ] {
        assert!(j.get(k).is_some(), "field {k} missing in {j}");
    }

    let r6 = result(
        &sub.next_matching(10 * SEC, |m| m.topic == "ping/::1")
            .await
            .expect("a v6 result"),
    );
    assert_eq!(r6.addr, Some("::1".parse().unwrap()));
    assert_eq!(r6.received, 2);

    let bad = result(
        &sub.next_matching(10 * SEC, |m| m.topic == "ping/no-such-host.invalid")
            .await
            .expect("a failed result"),
    );
    assert_eq!(bad.addr, None);
    assert_eq!((bad.sent, bad.received), (0, 0));
    assert!(bad.rtt.is_none());
    assert!(
        bad.error.as_deref().unwrap_or("").contains("resolve"),
        "{:?}",
        bad.error
    );

    // The invalid target is logged and never pinged.
    agent.wait_log(&["target rejected", "a/b"], 5 * SEC).await;
    let later = sub.drain_for(2 * SEC).await;
    assert!(later.iter().all(|m| !m.topic.contains("a/b")));
    // Successive rounds of a target are one interval apart.
    let v4: Vec<PingResult> = later
        .iter()
        .filter(|m| m.topic == "ping/127.0.0.1")
        .map(result)
        .collect();
    assert!(!v4.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_changes_add_and_remove_targets_and_keep_schedules() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-2", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    let first = result(
        &sub.next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.1")
            .await
            .expect("result"),
    );

    // Add a target: the first keeps its slot within the second.
    watch(broker.port, &["127.0.0.1", "127.0.0.2"]).await;
    agent
        .wait_log(&["target added", "127.0.0.2"], 5 * SEC)
        .await;
    let second = result(
        &sub.next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.2")
            .await
            .expect("new target pinged"),
    );
    assert_eq!(second.received, 2);
    let again = result(
        &sub.next_matching(5 * SEC, |m| m.topic == "ping/127.0.0.1")
            .await
            .expect("old target still pinged"),
    );
    assert_eq!(
        ts_ms(&again) % 1000,
        ts_ms(&first) % 1000,
        "unchanged target kept its schedule"
    );

    // Remove the first: no round of it starts after the change is applied.
    watch(broker.port, &["127.0.0.2"]).await;
    agent
        .wait_log(&["target removed", "127.0.0.1"], 5 * SEC)
        .await;
    let removed_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let window = sub.drain_for(3 * SEC).await;
    let results: Vec<PingResult> = window.iter().map(result).collect();
    assert!(
        results.iter().any(|r| r.target == "127.0.0.2"),
        "remaining target still pinged"
    );
    assert!(
        results
            .iter()
            .filter(|r| r.target == "127.0.0.1")
            .all(|r| ts_ms(r) < removed_at),
        "removed target pinged after removal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_watch_messages_are_ignored() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-3", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    sub.next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.1")
        .await
        .expect("result");

    publish(broker.port, "watch", b"{\"targets\": [oops", false).await;
    agent
        .wait_log(&["watch message ignored", "malformed"], 5 * SEC)
        .await;
    publish(broker.port, "watch", br#"{"targets": 42}"#, false).await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    publish(broker.port, "watch", &big, false).await;
    agent
        .wait_log(&["watch message ignored", "exceeds"], 5 * SEC)
        .await;

    // A list longer than limits.max_targets (10) is cut, and said so.
    let many: Vec<String> = (1..=12).map(|i| format!("127.0.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    watch(broker.port, &many).await;
    agent
        .wait_log(&["longer than limits.max_targets", "listed=12"], 5 * SEC)
        .await;
    agent
        .wait_log(&["target list applied", "targets=10"], 5 * SEC)
        .await;
    watch(broker.port, &["127.0.0.1"]).await;
    agent
        .wait_log(&["target list applied", "targets=1 "], 5 * SEC)
        .await;

    // Still connected to the same broker and still pinging the old list.
    sub.next_matching(5 * SEC, |m| m.topic == "ping/127.0.0.1")
        .await
        .expect("old list kept");
    assert!(
        !agent.log.iter().any(|l| l.contains("lost broker")),
        "the session flapped"
    );
}

/// Runs an agent on two brokers, breaks the one it uses with `breaker`, and
/// checks that the combined stream has every round.
async fn failover(name: &str, freeze: bool) {
    let mut a = Mosquitto::start().await;
    let mut b = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, name, &[a.addr(), b.addr()]);
    watch(a.port, &["127.0.0.1"]).await;
    watch(b.port, &["127.0.0.1"]).await;
    let mut sub = Collector::new(&[a.port, b.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    let first = sub
        .next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.1")
        .await
        .expect("result");
    sub.drain_for(2 * SEC).await;
    let (used, other) = if first.port == a.port {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let broken_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if freeze {
        used.freeze();
    } else {
        used.kill().await;
    }
    agent
        .wait_log(&["connected to broker", &other.addr()], 15 * SEC)
        .await;
    // Rounds keep coming, now through the other broker.
    sub.next_matching(10 * SEC, |m| {
        m.port == other.port && m.topic == "ping/127.0.0.1"
    })
    .await
    .expect("results through the other broker");
    if freeze {
        // Whatever the frozen broker still holds is delivered when it wakes.
        used.thaw();
    }
    sub.drain_for(3 * SEC).await;
    let seen: Vec<PingResult> = sub.history.iter().map(result).collect();
    assert_no_gap(&seen, "127.0.0.1");
    // The unbroken sequence spans the failure: rounds before it and after.
    let ts: Vec<u64> = seen.iter().map(ts_ms).collect();
    let (first, last) = (ts.iter().min().unwrap(), ts.iter().max().unwrap());
    assert!(
        *first < broken_at && *last > broken_at + 2000,
        "{first} < {broken_at} < {last} - 2000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_broker_is_killed_loses_no_round() {
    failover("probe-kill", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_broker_goes_silent_loses_no_round() {
    failover("probe-stop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_queue_while_no_broker_is_up_and_go_out_in_order() {
    let mut broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-queue", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    let mut agent = start_agent(&cfg);
    agent
        .wait_log(&["target added", "127.0.0.1"], 10 * SEC)
        .await;
    // Retained list is gone with the broker (no persistence): the agent
    // keeps its list while no broker is there.
    broker.kill().await;
    agent.wait_log(&["lost broker"], 10 * SEC).await;
    agent.wait_log(&["no broker reachable"], 10 * SEC).await;
    broker.restart().await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let got = sub.drain_for(8 * SEC).await;
    let results: Vec<PingResult> = got
        .iter()
        .filter(|m| m.topic == "ping/127.0.0.1")
        .map(result)
        .collect();
    // Published in order, queued ones first.
    let ts: Vec<u64> = results.iter().map(ts_ms).collect();
    let mut sorted = ts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ts, sorted, "results out of order");
    assert_no_gap(&results, "127.0.0.1");
    agent.wait_log(&["connected to broker"], SEC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_after_sigkill_and_notice_after_sigterm() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sub = Collector::new(&[broker.port], &["rip/#", "ping/#"]).await;
    watch(broker.port, &["127.0.0.1"]).await;

    let cfg = config(&dir, "probe-killed", &[broker.addr()]);
    let mut agent = start_agent(&cfg);
    // Presence on connect, then again with the list version it applied.
    let reason_is = |m: &Received, topic: &str, reason: &str| {
        m.topic == topic
            && serde_json::from_slice::<serde_json::Value>(&m.payload)
                .is_ok_and(|j| j["reason"].as_str() == Some(reason))
    };
    let presence = sub
        .next_matching(10 * SEC, |m| {
            reason_is(m, "rip/agent/probe-killed", "online")
                && m.json()["watch_version"].as_str() == Some("t")
        })
        .await
        .expect("online presence acknowledging the list");
    let p = presence.json();
    assert_eq!(p["broker"].as_str(), Some(broker.addr().as_str()), "{p}");
    agent.signal("KILL");
    agent.wait(5 * SEC).await;
    let will = sub
        .next_matching(10 * SEC, |m| reason_is(m, "rip/agent/probe-killed", "lost"))
        .await
        .expect("last will");
    let j = will.json();
    assert_eq!(
        (j["agent"].as_str(), j["reason"].as_str()),
        (Some("probe-killed"), Some("lost")),
        "{j}"
    );
    // The instance id tells two agents of one name apart.
    assert!(j["instance"].as_str().is_some_and(|i| i.len() == 16), "{j}");
    // The session's start identifies the notice (one document id everywhere),
    // the same connection as the presence.
    assert!(j["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{j}");
    assert_eq!((&j["since"], &j["instance"]), (&p["since"], &p["instance"]));
    // Retained: a new subscriber learns at once that it is gone.
    let mut late = Collector::new(&[broker.port], &["rip/agent/probe-killed"]).await;
    let kept = late
        .next_matching(5 * SEC, |m| m.topic == "rip/agent/probe-killed")
        .await
        .expect("retained presence");
    assert_eq!(kept.json()["reason"].as_str(), Some("lost"));

    let cfg = config(&dir, "probe-stopped", &[broker.addr()]);
    let mut agent = start_agent(&cfg);
    sub.next_matching(10 * SEC, |m| {
        m.topic == "ping/127.0.0.1" && m.payload.windows(13).any(|w| w == b"probe-stopped")
    })
    .await
    .expect("a result before stopping");
    agent.signal("TERM");
    let status = agent.wait(10 * SEC).await;
    assert_eq!(status.code(), Some(0), "clean exit");
    let notice = sub
        .next_matching(5 * SEC, |m| {
            reason_is(m, "rip/agent/probe-stopped", "shutdown")
        })
        .await
        .expect("shutdown notice");
    let j = notice.json();
    assert_eq!(
        (j["agent"].as_str(), j["reason"].as_str()),
        (Some("probe-stopped"), Some("shutdown")),
        "{j}"
    );
    // The session's start identifies the notice (one document id everywhere).
    assert!(j["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{j}");
    // A clean stop sends no will.
    let after = sub.drain_for(3 * SEC).await;
    assert!(
        !after
            .iter()
            .any(|m| m.topic == "rip/agent/probe-stopped"
                && m.payload.windows(4).any(|w| w == b"lost")),
        "will published after a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ping: {interval: 60s, cuont: 5}\n", "ping.cuont"),
        ("ping: {interval: soon}\n", "ping.interval"),
        ("ping: {interval: 400d}\n", "ping.interval"),
        ("brokers: []\n", "brokers"),
        ("brokers: [\"https://h:8883\"]\n", "brokers[0]"),
        ("keepalive: 10ms\n", "keepalive"),
        ("limits: {max_rate: -1}\n", "limits.max_rate"),
        ("name: [\n", "name"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        let (status, out) = run(AGENT, &["-c", p]).await;
        assert_eq!(status.code(), Some(78), "{text:?}: {out}");
        assert!(
            out.contains(&format!("{p}: {key}")),
            "{text:?}: message should name {p} and {key}: {out}"
        );
        let (status, _) = run(AGENT, &["--check-config", "-c", p]).await;
        assert_eq!(status.code(), Some(78));
    }
    let (status, out) = run(AGENT, &["-c", "/nonexistent/agent.yaml"]).await;
    assert_eq!(status.code(), Some(78));
    assert!(out.contains("/nonexistent/agent.yaml"), "{out}");
    let (status, out) = run(AGENT, &["--check-config", "-c", "etc/swarming/agent.yaml"]).await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("ok"));
    // Brokers on the command line are validated too.
    let (status, out) = run(
        AGENT,
        &[
            "--check-config",
            "-c",
            "etc/swarming/agent.yaml",
            "https://x",
        ],
    )
    .await;
    assert_eq!(status.code(), Some(78), "{out}");
}

/// Runs `script` with `sh` in a private network namespace (loopback up).
async fn in_netns(script: &str) -> (std::process::ExitStatus, String) {
    let out = tokio::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(format!("ip link set lo up && {script}"))
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (out.status, text)
}

/// `setpriv` prefix running as uid/gid 1234, no capabilities.
const UNPRIVILEGED: &str = "setpriv --reuid=1234 --regid=1234 --clear-groups --inh-caps=-all";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_pings_now_without_a_broker_in_raw_mode() {
    // No broker anywhere: the file names one that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-once", &["127.0.0.1:1".to_owned()]);
    let c = cfg.to_str().unwrap();
    let (status, out) = run(
        AGENT,
        &[
            "--once",
            "-c",
            c,
            "--count",
            "3",
            "127.0.0.1",
            "::1",
            "127.0.0.1",
        ],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("raw ICMP sockets"), "mode not said: {out}");
    for t in ["127.0.0.1 (127.0.0.1)", "::1 (::1)"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(t))
            .unwrap_or_else(|| panic!("no line for {t}: {out}"));
        assert!(
            line.contains("sent 3, received 3, loss 0%, rtt min/avg/max "),
            "{line}"
        );
    }
    // A target given twice is pinged once.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("127.0.0.1 ")).count(),
        1
    );

    // JSON: the result as published, configured name and labels included.
    let (status, out) = run(
        AGENT,
        &["--once", "--json", "-c", c, "--count", "2", "127.0.0.1"],
    )
    .await;
    assert_eq!(status.code(), Some(0), "{out}");
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let r: PingResult = serde_json::from_str(json).unwrap();
    assert_eq!((r.agent.as_str(), r.sent, r.received), ("probe-once", 2, 2));
    assert_eq!(r.labels["provider"], "test");

    // Bad configuration or arguments: 78, naming what is wrong.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "ping: {count: 0}\n").unwrap();
    let (status, out) = run(AGENT, &["--once", "-c", bad.to_str().unwrap(), "127.0.0.1"]).await;
    assert_eq!(status.code(), Some(78), "{out}");
    assert!(out.contains("ping.count"), "{out}");
    let (status, out) = run(AGENT, &["--once", "-c", c, "--count", "0", "127.0.0.1"]).await;
    assert_eq!(status.code(), Some(78), "{out}");
    let (status, out) = run(AGENT, &["--once", "-c", c, "a/b"]).await;
    assert_eq!(status.code(), Some(78), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_1_when_a_target_does_not_answer() {
    // The namespace's kernel ignores echo requests: nothing answers.
    let (status, out) = in_netns(&format!(
        "sysctl -qw net.ipv4.icmp_echo_ignore_all=1 && {AGENT} --once --count 2 --timeout 200ms 127.0.0.1 ::1"
    ))
    .await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("127.0.0.1 (127.0.0.1): sent 2, received 0, loss 100%, rtt -"),
        "{out}"
    );
    assert!(
        out.contains("::1 (::1): sent 2, received 2, loss 0%"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_agent_uses_datagram_ping_sockets_or_exits_77() {
    // A group allowed by ping_group_range, no CAP_NET_RAW: datagram mode.
    let (status, out) = in_netns(&format!(
        "sysctl -qw net.ipv4.ping_group_range='1234 1234' && {UNPRIVILEGED} {AGENT} --once --count 2 --timeout 300ms 127.0.0.1 ::1"
    ))
    .await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        out.contains("datagram ping sockets"),
        "mode not said: {out}"
    );
    assert!(
        out.contains("127.0.0.1 (127.0.0.1): sent 2, received 2"),
        "{out}"
    );
    assert!(out.contains("::1 (::1): sent 2, received 2"), "{out}");

    // Neither raw nor datagram sockets allowed: 77, saying what to grant.
    let (status, out) = in_netns(&format!("{UNPRIVILEGED} {AGENT} --once 127.0.0.1")).await;
    assert_eq!(status.code(), Some(77), "{out}");
    assert!(
        out.contains("CAP_NET_RAW") && out.contains("ping_group_range"),
        "{out}"
    );
    // The daemon too, before touching any broker.
    let (status, out) = in_netns(&format!("{UNPRIVILEGED} {AGENT} --log stderr 127.0.0.1:1")).await;
    assert_eq!(status.code(), Some(77), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_daemon_publishes_results_through_datagram_sockets() {
    // Broker, agent and targets in one private namespace; the agent runs as
    // an unprivileged user whose group ping_group_range allows.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = config(&dir, "probe-dgram", &["127.0.0.1:1884".to_owned()]);
    let script = format!(
        "sysctl -qw net.ipv4.ping_group_range='1234 1234' \
         && (mosquitto -p 1884 >/dev/null 2>&1 & echo $! > {d}/m.pid) \
         && sleep 0.5 \
         && mosquitto_pub -p 1884 -t watch -r -m '127.0.0.1 ::1' \
         && ({UNPRIVILEGED} {AGENT} -c {cfg} --log stderr 2> {d}/agent.log & echo $! > {d}/a.pid) \
         && timeout 10 mosquitto_sub -p 1884 -t 'ping/#' -C 4 > {d}/results; \
         kill $(cat {d}/a.pid) $(cat {d}/m.pid); wait",
        cfg = cfg.display()
    );
    let (status, out) = in_netns(&script).await;
    assert!(status.success(), "{out}");
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("datagram ping sockets"), "{log}");
    let results: Vec<PingResult> = std::fs::read_to_string(dir.path().join("results"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 4, "{log}");
    for t in ["127.0.0.1", "::1"] {
        assert!(
            results.iter().any(|r| r.target == t && r.received == 2),
            "{t}: {results:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_watch_is_accepted_like_json() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-plain", &[broker.addr()]);
    // The seed's workflow: mosquitto_pub -t watch -m "host1 host2 host3".
    publish(
        broker.port,
        "watch",
        b"127.0.0.1  127.0.0.2\n\ta/b 127.0.0.1",
        true,
    )
    .await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    agent
        .wait_log(&["target list applied", "targets=2 "], 10 * SEC)
        .await;
    agent.wait_log(&["target rejected", "a/b"], SEC).await;
    for t in ["ping/127.0.0.1", "ping/127.0.0.2"] {
        let r = result(
            &sub.next_matching(10 * SEC, |m| m.topic == t)
                .await
                .unwrap_or_else(|| panic!("no result on {t}")),
        );
        assert_eq!(r.received, 2);
    }
    // Not text at all: ignored, the list stays.
    publish(broker.port, "watch", b"127.0.0.3 \xff\xfe", false).await;
    agent
        .wait_log(&["watch message ignored", "not UTF-8"], 5 * SEC)
        .await;
    sub.next_matching(5 * SEC, |m| m.topic == "ping/127.0.0.2")
        .await
        .expect("list kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_beyond_max_rate_is_reported_and_the_interval_stretched() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-rate", &[broker.addr()]);
    // 10 targets x 2 echoes / 1 s = 20/s against max_rate 10: 2 s.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_rate: 100", "max_rate: 10");
    std::fs::write(&cfg, &text).unwrap();
    let many: Vec<String> = (1..=10).map(|i| format!("127.0.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    watch(broker.port, &many).await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    agent
        .wait_log(
            &[
                "more echoes per second than limits.max_rate",
                "stretched_interval_s=2",
            ],
            10 * SEC,
        )
        .await;
    let mut slots: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let got = sub.drain_for(7 * SEC).await;
    for m in &got {
        let r = result(m);
        assert_eq!(r.interval, 2.0, "the result says the stretched interval");
        assert_eq!(r.received, 2);
        slots.entry(r.target.clone()).or_default().push(ts_ms(&r));
    }
    assert_eq!(slots.len(), 10, "every target served: {slots:?}");
    for s in slots.values() {
        assert!(s.windows(2).all(|w| w[1] - w[0] == 2000), "{s:?}");
    }
    // A reload that makes it fit again says so, and results follow.
    std::fs::write(&cfg, text.replace("max_rate: 10", "max_rate: 100")).unwrap();
    agent.signal("HUP");
    agent
        .wait_log(&["fits limits.max_rate again"], 5 * SEC)
        .await;
    let r = result(
        &sub.next_matching(5 * SEC, |m| {
            m.payload.windows(14).any(|w| w == b"\"interval\":1.0")
        })
        .await
        .expect("results at the configured interval"),
    );
    assert_eq!(r.interval, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_without_a_broker_is_prompt_and_says_only_what_is_true() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: no broker, no list, nothing queued.
    let cfg = config(&dir, "probe-alone", &["127.0.0.1:1".to_owned()]);
    let mut agent = start_agent(&cfg);
    agent
        .wait_log(&["cannot connect to broker"], 10 * SEC)
        .await;
    let t = std::time::Instant::now();
    agent.signal("TERM");
    let status = agent.wait(5 * SEC).await;
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < SEC, "stop took {:?}", t.elapsed());
    assert!(
        agent
            .log
            .iter()
            .any(|l| l.contains("no result was waiting")),
        "{:?}",
        agent.log
    );
    assert!(
        !agent.log.iter().any(|l| l.contains("lost")),
        "{:?}",
        agent.log
    );

    // Results queued while the broker is gone: lost, and said so, promptly.
    let mut broker = Mosquitto::start().await;
    let cfg = config(&dir, "probe-queued", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    let mut agent = start_agent(&cfg);
    agent.wait_log(&["target added"], 10 * SEC).await;
    broker.kill().await;
    agent.wait_log(&["no broker reachable"], 10 * SEC).await;
    tokio::time::sleep(2 * SEC).await; // rounds pile up meanwhile
    let t = std::time::Instant::now();
    agent.signal("TERM");
    agent.wait(5 * SEC).await;
    assert!(t.elapsed() < SEC, "stop took {:?}", t.elapsed());
    let line = agent
        .log
        .iter()
        .find(|l| l.contains("queued results are lost"))
        .unwrap_or_else(|| panic!("{:?}", agent.log));
    assert!(!line.contains("unsent=0"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_one_name_are_told_loudly_and_both_results_kept() {
    let broker = Mosquitto::start().await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_a = config(&dir_a, "twin", &[broker.addr()]);
    let cfg_b = config(&dir_b, "twin", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut a = start_agent(&cfg_a);
    a.wait_log(&["connected to broker"], 10 * SEC).await;
    let mut b = start_agent(&cfg_b);
    a.wait_log(&["AGENT NAME CLASH", "twin"], 40 * SEC).await;
    b.wait_log(&["AGENT NAME CLASH", "twin"], 40 * SEC).await;
    // Their rounds have distinct slots, so neither's results are taken for
    // duplicates of the other's: more than one agent's worth arrives.
    let got = sub.drain_for(4 * SEC).await;
    let stamps: BTreeSet<u64> = sub
        .history
        .iter()
        .filter(|m| m.topic == "ping/127.0.0.1")
        .map(|m| ts_ms(&result(m)))
        .collect();
    let phases: BTreeSet<u64> = stamps.iter().map(|t| t % 1000).collect();
    assert!(
        phases.len() >= 2,
        "one phase only: {stamps:?} ({} new)",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_skips_the_slots_it_missed_and_says_so() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-frozen", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let mut agent = start_agent(&cfg);
    sub.next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.1")
        .await
        .expect("a result");
    let now_ms = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Frozen for 4 intervals (SIGSTOP: a starved or stopped machine).
    agent.signal("STOP");
    let stopped_at = now_ms();
    tokio::time::sleep(4 * SEC).await;
    agent.signal("CONT");
    let resumed_at = now_ms();
    agent
        .wait_log(&["slots skipped", "none is replayed"], 5 * SEC)
        .await;
    sub.drain_for(3 * SEC).await;
    let results: Vec<PingResult> = sub
        .history
        .iter()
        .filter(|m| m.topic == "ping/127.0.0.1")
        .map(result)
        .collect();
    // No round of the frozen time is made up afterwards...
    let replayed: Vec<u64> = results
        .iter()
        .map(ts_ms)
        .filter(|t| *t > stopped_at + 1000 && *t + 1000 < resumed_at)
        .collect();
    assert!(
        replayed.is_empty(),
        "slots of the freeze replayed: {replayed:?}"
    );
    // ...and the rounds after it are on pace again, one interval apart.
    let after: Vec<u64> = results
        .iter()
        .map(ts_ms)
        .filter(|t| *t >= resumed_at)
        .collect();
    assert!(after.len() >= 2, "{after:?}");
    assert!(after.windows(2).all(|w| w[1] - w[0] == 1000), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexers_trouble_verdict_reaches_the_agent_log() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, "probe-judged", &[broker.addr()]);
    watch(broker.port, &["127.0.0.1"]).await;
    // Retained, as the indexers publish it: the agent sees it on connect.
    let verdict = br#"{"agent":"probe-judged","state":"trouble","since":"2026-12-03T10:00:00.000Z","reason":"3 of its 3 targets look bad to it while its peers see them up"}"#;
    publish(broker.port, "verdict/agent/probe-judged", verdict, true).await;
    let mut agent = start_agent(&cfg);
    let line = agent.wait_log(&["TROUBLE ON THIS AGENT"], 10 * SEC).await;
    assert!(line.contains("3 of its 3 targets"), "{line}");
    // A verdict for another agent is not ours; an ok verdict is said quietly.
    let ok = br#"{"agent":"probe-judged","state":"ok","since":"2026-12-03T10:05:00.000Z","reason":"its view agrees with its peers'"}"#;
    publish(broker.port, "verdict/agent/probe-judged", ok, true).await;
    agent
        .wait_log(&["verdict on this agent", "Ok"], 10 * SEC)
        .await;
}
