//! Both binaries as systemd services: sd_notify on a real unix datagram
//! socket, reload on SIGHUP, --check-config, exit codes, CAP_NET_RAW.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{run, Daemon};
use common::mosquitto::Mosquitto;
use common::mqtt::{publish, Collector};
use tokio::net::UnixDatagram;

const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");
const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const SEC: Duration = Duration::from_secs(1);

/// A fake service manager: the socket systemd would pass as NOTIFY_SOCKET.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every datagram so far.
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Notify {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// The next datagram containing every one of `needles`.
    async fn expect(&mut self, needles: &[&str], within: Duration) -> String {
        let mut buf = vec![0u8; 4096];
        let found = tokio::time::timeout(within, async {
            loop {
                let n = self.sock.recv(&mut buf).await.unwrap();
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if needles
                    .iter()
                    .all(|x| msg.lines().any(|l| l.starts_with(x)))
                {
                    return msg;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no notification with {needles:?}; seen {:#?}", self.seen))
    }
}

fn agent_yaml(brokers: &[String], provider: &str, extra: &str) -> String {
    let brokers: Vec<String> = brokers.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "name: probe-d\nlabels: {{provider: {provider}}}\nbrokers: [{}]\nkeepalive: 1s\nping: {{interval: 1s, count: 1, timeout: 300ms}}\n{extra}",
        brokers.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_notifies_reloads_and_stops_like_a_service() {
    let a = Mosquitto::start().await;
    let b = Mosquitto::start().await;
    publish(a.port, "watch", br#"{"targets": ["127.0.0.1"]}"#, true).await;
    publish(b.port, "watch", br#"{"targets": ["127.0.0.1"]}"#, true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(&cfg, agent_yaml(&[a.addr()], "first", "")).unwrap();
    let mut notify = Notify::bind(dir.path());
    let mut sub = Collector::new(&[a.port, b.port], &["ping/#"]).await;
    let mut agent = Daemon::spawn(
        AGENT,
        &["-c", cfg.to_str().unwrap()],
        &[notify.env(), ("WATCHDOG_USEC", "1000000")],
    );

    let ready = notify.expect(&["READY=1", "STATUS="], 10 * SEC).await;
    assert!(ready.contains("targets"), "{ready}");
    // Pinged by a task that proves progress, at half the period.
    notify.expect(&["WATCHDOG=1"], 3 * SEC).await;
    notify.expect(&["WATCHDOG=1"], 3 * SEC).await;
    let r = sub
        .next_matching(10 * SEC, |m| m.port == a.port)
        .await
        .expect("result");
    assert_eq!(r.json()["labels"]["provider"], "first");

    // A good reload: labels change at once, brokers change means reconnect.
    std::fs::write(&cfg, agent_yaml(&[b.addr()], "second", "")).unwrap();
    agent.signal("HUP");
    let reloading = notify.expect(&["RELOADING=1"], 5 * SEC).await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.expect(&["READY=1"], 5 * SEC).await;
    agent
        .wait_log(&["configuration reloaded", "brokers", "labels"], 5 * SEC)
        .await;
    agent
        .wait_log(&["connected to broker", &b.addr()], 10 * SEC)
        .await;
    let r = sub
        .next_matching(10 * SEC, |m| {
            m.port == b.port && m.json()["labels"]["provider"] == "second"
        })
        .await
        .expect("result with the new labels through the new broker");
    assert_eq!(r.json()["agent"], "probe-d");

    // A bad reload: still running on the old configuration, error visible.
    std::fs::write(
        &cfg,
        agent_yaml(&[b.addr()], "third", "ping: {interval: often}\n"),
    )
    .unwrap();
    agent.signal("HUP");
    notify.expect(&["RELOADING=1"], 5 * SEC).await;
    let after = notify.expect(&["READY=1"], 5 * SEC).await;
    assert!(after.contains("STATUS=reload failed:"), "{after}");
    assert!(
        after.contains(cfg.to_str().unwrap()),
        "status names the file: {after}"
    );
    let err = agent.wait_log(&["reload failed"], 5 * SEC).await;
    assert!(err.contains("ping"), "{err}");
    // The status keeps saying so until a good reload.
    notify.expect(&["STATUS=reload failed:"], 10 * SEC).await;
    let later = sub.drain_for(2 * SEC).await;
    let last = later
        .iter()
        .rfind(|m| m.port == b.port)
        .expect("still pinging");
    assert_eq!(
        last.json()["labels"]["provider"],
        "second",
        "old settings kept"
    );

    agent.signal("TERM");
    notify.expect(&["STOPPING=1"], 5 * SEC).await;
    assert_eq!(agent.wait(10 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_notifies_reloads_and_stops_like_a_service() {
    let a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("indexer.yaml");
    let yaml = |targets: &str| {
        format!(
            "brokers: [\"{}\"]\ntargets: [{targets}]\nstate_dir: {}\nfile: {{path: {}/out.ndjson}}\n",
            a.addr(),
            dir.path().display(),
            dir.path().display()
        )
    };
    std::fs::write(&cfg, yaml("127.0.0.1")).unwrap();
    let mut notify = Notify::bind(dir.path());
    let mut idx = Daemon::spawn(INDEXER, &["-c", cfg.to_str().unwrap()], &[notify.env()]);
    let ready = notify.expect(&["READY=1"], 10 * SEC).await;
    assert!(ready.contains("brokers up"), "{ready}");
    idx.wait_log(&["connected to broker"], 10 * SEC).await;
    notify.expect(&["STATUS=brokers up 1/1"], 10 * SEC).await;

    std::fs::write(&cfg, yaml("127.0.0.1, bogus/target")).unwrap();
    idx.signal("HUP");
    notify
        .expect(&["RELOADING=1", "MONOTONIC_USEC="], 5 * SEC)
        .await;
    let after = notify.expect(&["READY=1"], 5 * SEC).await;
    assert!(
        after.contains("reload failed:") && after.contains("targets[1]"),
        "{after}"
    );

    std::fs::write(&cfg, yaml("127.0.0.2")).unwrap();
    idx.signal("HUP");
    notify.expect(&["RELOADING=1"], 5 * SEC).await;
    let after = notify.expect(&["READY=1"], 5 * SEC).await;
    assert!(!after.contains("reload failed"), "{after}");

    // A second broker: only its session opens; the first one stays.
    let b = Mosquitto::start().await;
    let two = format!("brokers: [\"{}\", \"{}\"]", a.addr(), b.addr());
    let one = format!("brokers: [\"{}\"]", a.addr());
    std::fs::write(&cfg, yaml("127.0.0.2").replace(&one, &two)).unwrap();
    idx.signal("HUP");
    idx.wait_log(&["configuration reloaded", "brokers"], 5 * SEC)
        .await;
    idx.wait_log(&["subscribed", &b.addr()], 10 * SEC).await;
    let opened = |l: &String| l.contains("opening session") && l.contains(&b.addr());
    assert!(idx.log.iter().any(opened));
    assert!(
        !idx.log.iter().any(|l| l.contains("closing session")),
        "the unchanged session was closed"
    );
    let a_connects = idx
        .log
        .iter()
        .filter(|l| l.contains("connected to broker") && l.contains(&a.addr()));
    assert_eq!(a_connects.count(), 1, "the unchanged session reconnected");
    let mut on_b = Collector::new(&[b.port], &["watch"]).await;
    let w = on_b
        .next_matching(5 * SEC, |_| true)
        .await
        .expect("watch on the new broker");
    assert_eq!(w.json()["targets"], serde_json::json!(["127.0.0.2"]));
    let mut sub = Collector::new(&[a.port], &["watch"]).await;
    let w = sub.next_matching(5 * SEC, |_| true).await.expect("watch");
    assert_eq!(w.json()["targets"], serde_json::json!(["127.0.0.2"]));

    idx.signal("INT");
    notify.expect(&["STOPPING=1"], 5 * SEC).await;
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_ok_or_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped indexer file has no output until one is chosen: the
    // check says which key to set rather than "ok".
    let (status, out) = run(
        INDEXER,
        &["--check-config", "-c", "etc/swarming/indexer.yaml"],
    )
    .await;
    assert_eq!(status.code(), Some(78), "{out}");
    assert!(
        out.contains("etc/swarming/indexer.yaml: elasticsearch: no output"),
        "{out}"
    );
    let with_output = dir.path().join("indexer.yaml");
    std::fs::write(
        &with_output,
        std::fs::read_to_string("etc/swarming/indexer.yaml").unwrap()
            + "file: {path: /var/lib/swarming/results.ndjson}\n",
    )
    .unwrap();
    for (bin, good) in [
        (AGENT, "etc/swarming/agent.yaml"),
        (INDEXER, with_output.to_str().unwrap()),
    ] {
        let (status, out) = run(bin, &["--check-config", "-c", good]).await;
        assert_eq!(status.code(), Some(0), "{out}");
        assert_eq!(out.trim(), format!("{good}: ok"));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "brokers: [a]\nkeepalive: 5\n").unwrap();
        let (status, out) = run(bin, &["--check-config", "-c", bad.to_str().unwrap()]).await;
        assert_eq!(status.code(), Some(78), "{out}");
        assert!(
            out.contains(&format!("{}: keepalive:", bad.display())),
            "{out}"
        );
    }
    let bad = dir.path().join("bad-es.yaml");
    std::fs::write(
        &bad,
        "elasticsearch: {url: \"http://h:9200\", usrname: x}\n",
    )
    .unwrap();
    let (status, out) = run(INDEXER, &["--check-config", "-c", bad.to_str().unwrap()]).await;
    assert_eq!(status.code(), Some(78));
    assert!(out.contains("elasticsearch.usrname"), "{out}");
}

/// Copies the agent where an unprivileged user can run it, with a config
/// it can read.
fn unprivileged_setup(dir: &Path, broker: &str) -> (PathBuf, PathBuf) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("swarming-agent");
    std::fs::copy(AGENT, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.join("agent.yaml");
    std::fs::write(&cfg, agent_yaml(&[broker.to_owned()], "unpriv", "")).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    (bin, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_needs_cap_net_raw_and_works_with_it_as_an_ambient_capability() {
    if !swarming::daemon::is_root() {
        eprintln!("skipped: needs root to switch users (CI runs as root)");
        return;
    }
    let a = Mosquitto::start().await;
    publish(a.port, "watch", br#"{"targets": ["127.0.0.1"]}"#, true).await;
    let dir = tempfile::tempdir().unwrap();
    let (bin, cfg) = unprivileged_setup(dir.path(), &a.addr());
    let user = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

    // Without the capability: exit 77 and a message that says what to grant.
    let mut args: Vec<&str> = user.to_vec();
    args.extend([
        "--inh-caps=-all",
        "--",
        bin.to_str().unwrap(),
        "-c",
        cfg.to_str().unwrap(),
    ]);
    let (status, out) = run("setpriv", &args).await;
    assert_eq!(status.code(), Some(77), "{out}");
    assert!(
        out.contains("CAP_NET_RAW")
            && out.contains("AmbientCapabilities")
            && out.contains("setcap"),
        "{out}"
    );

    // With CAP_NET_RAW as an ambient capability: it pings.
    let mut sub = Collector::new(&[a.port], &["ping/#"]).await;
    let mut args: Vec<&str> = user.to_vec();
    args.extend([
        "--inh-caps=+net_raw",
        "--ambient-caps=+net_raw",
        "--",
        bin.to_str().unwrap(),
        "-c",
        cfg.to_str().unwrap(),
    ]);
    let mut agent = Daemon::spawn("setpriv", &args, &[]);
    let r = sub
        .next_matching(15 * SEC, |m| m.topic == "ping/127.0.0.1")
        .await
        .expect("result as nobody");
    assert_eq!(r.json()["received"], 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && !l.contains("\t0\t")),
        "not root: {status}"
    );
    agent.signal("TERM");
    assert_eq!(agent.wait(10 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_crates_using_the_log_crate_reach_the_same_output() {
    let a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("indexer.yaml");
    std::fs::write(
        &cfg,
        format!(
            "brokers: [\"{}\"]\ntargets: [127.0.0.1]\nstate_dir: {}\nfile: {{path: {}/out.ndjson}}\n",
            a.addr(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    // rumqttc logs through `log`; at -vv its debug records show up.
    let mut idx = Daemon::spawn(
        INDEXER,
        &["-vv", "--log", "stderr", "-c", cfg.to_str().unwrap()],
        &[],
    );
    idx.wait_log(&["Publish. Topic = watch"], 10 * SEC).await;
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
    // At the default level, per-packet details stay out of the logs.
    let mut idx = Daemon::spawn(
        INDEXER,
        &["--log", "stderr", "-c", cfg.to_str().unwrap()],
        &[],
    );
    idx.wait_log(&["subscribed"], 10 * SEC).await;
    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
    assert!(
        !idx.log.iter().any(|l| l.contains("Publish. Topic")),
        "{:#?}",
        idx.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_status_names_a_failing_part_and_the_watchdog_follows_liveness() {
    let mut a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("indexer.yaml");
    std::fs::write(
        &cfg,
        format!(
            "brokers: [\"{}\"]\nkeepalive: 1s\nstate_dir: {}\nfile: {{path: {}/out.ndjson}}\n",
            a.addr(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut notify = Notify::bind(dir.path());
    let _idx = Daemon::spawn(
        INDEXER,
        &["-c", cfg.to_str().unwrap()],
        &[notify.env(), ("WATCHDOG_USEC", "1000000")],
    );
    notify.expect(&["READY=1"], 10 * SEC).await;
    notify.expect(&["STATUS=brokers up 1/1"], 10 * SEC).await;
    // Every part live (sessions idle between messages): petted.
    notify.expect(&["WATCHDOG=1"], 3 * SEC).await;
    notify.expect(&["WATCHDOG=1"], 3 * SEC).await;
    // A broker gone: STATUS= says which part is not ok, not "ok".
    a.kill().await;
    let status = notify.expect(&["STATUS=brokers up 0/1"], 10 * SEC).await;
    let status = if status.contains("PROBLEMS") {
        status
    } else {
        notify.expect(&["STATUS=brokers up 0/1"], 10 * SEC).await
    };
    assert!(
        status.contains(&format!("PROBLEMS: broker {}", a.addr())),
        "{status}"
    );
    // Waiting to reconnect is honest idleness: still petted.
    notify.expect(&["WATCHDOG=1"], 3 * SEC).await;
}

#[tokio::test]
async fn version_help_and_check_config_tell_the_truth() {
    for (bin, default) in [
        (AGENT, "/etc/swarming/agent.yaml"),
        (INDEXER, "/etc/swarming/indexer.yaml"),
    ] {
        let (status, out) = run(bin, &["--version"]).await;
        assert!(status.success(), "{out}");
        assert!(
            out.contains(env!("CARGO_PKG_VERSION")) && out.contains("wire contract v2"),
            "{out}"
        );
        let (status, out) = run(bin, &["--help"]).await;
        assert!(status.success(), "{out}");
        let first = out.lines().next().unwrap_or_default();
        assert!(
            first.contains("ping") && !first.contains("both daemons"),
            "first line: {first}"
        );
        assert!(out.contains(&format!("[default: {default};")), "{out}");
        assert!(!out.contains("<daemon>") && !out.contains('`'), "{out}");

        // Neither a FIFO nor a device may hang the check: a clear error, 78.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.yaml");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for p in [fifo.to_str().unwrap(), "/dev/zero"] {
            let (status, out) =
                tokio::time::timeout(5 * SEC, run(bin, &["--check-config", "-c", p]))
                    .await
                    .expect("the check does not hang");
            assert_eq!(status.code(), Some(78), "{out}");
            assert!(
                out.contains(p) && out.contains("not a regular file"),
                "{out}"
            );
        }
        let typo = dir.path().join("typo.yaml");
        let output = if bin == INDEXER {
            "file: {path: /tmp/x.ndjson}\n"
        } else {
            ""
        };
        std::fs::write(&typo, format!("{output}log: {{level: eror}}\n")).unwrap();
        let (status, out) = run(bin, &["--check-config", "-c", typo.to_str().unwrap()]).await;
        assert_eq!(status.code(), Some(78), "{out}");
        assert!(out.contains("log.level"), "{out}");
    }
    // Without -c, an absent default file is reported as such: the agent
    // runs on defaults, the indexer has no output without one.
    if !Path::new("/etc/swarming").exists() {
        let (status, out) = run(AGENT, &["--check-config"]).await;
        assert_eq!(status.code(), Some(0), "{out}");
        assert!(
            out.contains("/etc/swarming/agent.yaml: not found, defaults used"),
            "{out}"
        );
        let (status, out) = run(INDEXER, &["--check-config"]).await;
        assert_eq!(status.code(), Some(78), "{out}");
        assert!(
            out.contains("/etc/swarming/indexer.yaml: not found") && out.contains("elasticsearch"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_status_says_when_its_page_cannot_listen() {
    let a = Mosquitto::start().await;
    // Someone else holds the configured address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("indexer.yaml");
    std::fs::write(
        &cfg,
        format!(
            "brokers: [\"{}\"]\nstate_dir: {}\nfile: {{path: {}/out.ndjson}}\nhttp: {{listen: \"127.0.0.1:{port}\"}}\n",
            a.addr(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut notify = Notify::bind(dir.path());
    let mut idx = Daemon::spawn(INDEXER, &["-c", cfg.to_str().unwrap()], &[notify.env()]);
    notify.expect(&["READY=1"], 10 * SEC).await;
    let status = notify.expect(&["STATUS=brokers up 1/1"], 10 * SEC).await;
    assert!(
        status.contains(&format!(
            "PROBLEMS: http endpoint not listening on 127.0.0.1:{port}"
        )),
        "{status}"
    );
    // It still does its job: running, and stops cleanly.
    idx.signal("TERM");
    assert!(idx.wait(10 * SEC).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_shows_the_indexers_trouble_verdict() {
    let a = Mosquitto::start().await;
    publish(a.port, "watch", br#"{"targets": ["127.0.0.1"]}"#, true).await;
    let trouble = br#"{"agent":"probe-d","state":"trouble","since":"2026-12-03T10:00:00.000Z","reason":"3 of 4 targets look bad to it but fine to its peers"}"#;
    publish(a.port, "verdict/agent/probe-d", trouble, true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(&cfg, agent_yaml(&[a.addr()], "p", "")).unwrap();
    let mut notify = Notify::bind(dir.path());
    let mut agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[notify.env()]);
    let status = notify
        .expect(&["STATUS=TROUBLE (indexers' verdict"], 10 * SEC)
        .await;
    assert!(status.contains("3 of 4 targets"), "{status}");
    // The verdict lifted: the status line says so within a refresh.
    let ok = br#"{"agent":"probe-d","state":"ok","since":"2026-12-03T10:05:00.000Z","reason":"its view agrees with its peers'"}"#;
    publish(a.port, "verdict/agent/probe-d", ok, true).await;
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    loop {
        let s = notify.expect(&["STATUS="], 5 * SEC).await;
        if !s.contains("TROUBLE") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {s}");
    }
    agent.signal("TERM");
    agent.wait(10 * SEC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_status_says_when_the_signed_lists_sequence_cannot_be_kept() {
    use swarming::watch_sign::{self, SigningKey};
    let a = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let public = watch_sign::generate(&dir.path().join("good.key")).unwrap();
    let key = SigningKey::load(&dir.path().join("good.key")).unwrap();
    let list = br#"{"targets": ["127.0.0.1"], "version": "v5"}"#;
    let signed = watch_sign::sign(list, &key, 5).unwrap();
    publish(a.port, "watch", &signed, true).await;
    // A non-empty directory where the sequence file goes: writing it
    // fails, for root too.
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("watch-sequence").join("x")).unwrap();
    let cfg = dir.path().join("agent.yaml");
    let extra = format!(
        "state_dir: {}\nwatch_keys: [\"{public}\"]\n",
        state.display()
    );
    std::fs::write(&cfg, agent_yaml(&[a.addr()], "p", &extra)).unwrap();
    let mut notify = Notify::bind(dir.path());
    let mut agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[notify.env()]);
    agent
        .wait_log(&["cannot keep the watch sequence"], 10 * SEC)
        .await;
    let status = notify
        .expect(&["STATUS=WATCH SEQUENCE NOT KEPT"], 10 * SEC)
        .await;
    // The list is run all the same.
    assert!(status.contains("1 targets"), "{status}");
    agent.signal("TERM");
    assert!(agent.wait(10 * SEC).await.success());
}
