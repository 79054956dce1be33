//! Security against real mosquitto: the shipped drop-in and ACL (TLS
//! listener, require_certificate, use_identity_as_username), certificates
//! made with the shipped `swarming-certs`, signed `watch` lists, and the
//! agent's allow/deny rules. Needs root (raw ICMP), mosquitto and openssl.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{run, Daemon};
use common::fixtures::indexer_config;
use common::mosquitto::Mosquitto;
use common::mqtt::{publish, Collector};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use swarming::tls::{RawTls, TlsSettings};
use swarming::watch_sign::{self, SigningKey};
use tokio::sync::mpsc;

const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");
const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const TOP: &str = env!("CARGO_MANIFEST_DIR");
const SEC: Duration = Duration::from_secs(1);

/// Runs the shipped certificate command.
fn certs(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(format!("{TOP}/packaging/swarming-certs"))
        .arg("-d")
        .arg(dir)
        .args(args)
        .output()
        .expect("run swarming-certs");
    assert!(
        out.status.success(),
        "swarming-certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a broker certificate for 127.0.0.1, agents probe-1 and probe-2,
/// and an indexer, as the documentation says to make them.
fn swarm_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["ca"]);
    certs(dir.path(), &["broker", "localhost", "127.0.0.1"]);
    certs(dir.path(), &["agent", "probe-1"]);
    certs(dir.path(), &["agent", "probe-2"]);
    certs(dir.path(), &["indexer"]);
    // As the swarming-broker package installs them: mosquitto drops root
    // before it reads its certificates.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok = std::process::Command::new("chgrp")
        .arg("mosquitto")
        .arg(dir.path().join("broker.key"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "no group mosquitto (apt-get install mosquitto)");
    std::fs::set_permissions(
        dir.path().join("broker.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    dir
}

/// The shipped drop-in with this test's port and certificate directory,
/// and the shipped ACL file as it is.
async fn shipped_broker(certs: &Path) -> Mosquitto {
    let dropin = std::fs::read_to_string(format!("{TOP}/etc/mosquitto/conf.d/swarming.conf"))
        .expect("shipped drop-in");
    let certs = certs.display().to_string();
    Mosquitto::start_with_conf(|port| {
        let conf = dropin
            .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
            .replace(
                "/etc/mosquitto/swarming.acl",
                &format!("{TOP}/etc/mosquitto/swarming.acl"),
            )
            .replace("/etc/mosquitto/swarming/", &format!("{certs}/"));
        assert!(conf.contains(&format!("listener {port} ")) && conf.contains(TOP));
        format!("{conf}\nlog_dest stderr\nlog_type all\npersistence false\n")
    })
    .await
}

fn tls_files(dir: &Path, who: Option<&str>) -> RawTls {
    RawTls {
        ca: Some(dir.join("ca.pem")),
        cert: who.map(|w| dir.join(format!("{w}.pem"))),
        key: who.map(|w| dir.join(format!("{w}.key"))),
    }
}

/// An MQTT client over TLS with `files`; `Ok` once the broker accepted it.
/// Publishes received arrive on the returned channel.
async fn tls_client(
    port: u16,
    files: RawTls,
    subscribe: &[&str],
) -> Result<(AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>), String> {
    let tls = TlsSettings::load(files).expect("test TLS files load");
    let mut o = MqttOptions::new(format!("test-{}", rand::random::<u32>()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls.config,
    )));
    let (client, mut el) = AsyncClient::new(o, 100);
    for t in subscribe {
        client.subscribe(*t, QoS::AtLeastOnce).await.unwrap();
    }
    let mut acks = 0;
    let first = tokio::time::timeout(5 * SEC, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) if subscribe.is_empty() => {
                    return Ok(format!("{:?}", a.code))
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == subscribe.len() {
                        return Ok("subscribed".to_owned());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "timeout".to_owned())??;
    assert!(first == "Success" || first == "subscribed", "{first}");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic, p.payload.to_vec()));
            }
        }
    });
    Ok((client, rx))
}

fn agent_config(dir: &Path, brokers: &str, extra: &str) -> PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "brokers: [{brokers}]\nkeepalive: 1s\nping: {{interval: 1s, count: 2, timeout: 300ms}}\nlimits: {{max_targets: 10, max_rate: 100}}\nstate_dir: {}\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn agent_tls(certs: &Path, name: &str) -> String {
    format!(
        "tls: {{ca: {0}/ca.pem, cert: {0}/agent-{name}.pem, key: {0}/agent-{name}.key}}\n",
        certs.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_of_the_swarm_are_refused() {
    let certs = swarm_certs();
    let broker = shipped_broker(certs.path()).await;

    // A TLS client without a certificate, and one with a certificate from
    // another CA: the handshake fails.
    let refused = tls_client(broker.port, tls_files(certs.path(), None), &[]).await;
    assert!(refused.is_err(), "no certificate accepted");
    let rogue = tempfile::tempdir().unwrap();
    certs_in_other_ca(rogue.path());
    let files = RawTls {
        ca: Some(certs.path().join("ca.pem")),
        cert: Some(rogue.path().join("agent-probe-1.pem")),
        key: Some(rogue.path().join("agent-probe-1.key")),
    };
    assert!(tls_client(broker.port, files, &[]).await.is_err());
    // A certificate of the swarm: accepted.
    tls_client(
        broker.port,
        tls_files(certs.path(), Some("agent-probe-1")),
        &[],
    )
    .await
    .expect("swarm certificate accepted");

    // The real agent without a client certificate: refused, logged with
    // the reason, retried with backoff, and it keeps running.
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(
        dir.path(),
        &format!("\"mqtts://127.0.0.1:{}\"", broker.port),
        &format!(
            "name: nocert\ntls: {{ca: {}/ca.pem}}\n",
            certs.path().display()
        ),
    );
    let mut agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
    agent
        .wait_log(&["cannot connect to broker", "mqtts://"], 10 * SEC)
        .await;
    agent
        .wait_log(&["no broker reachable: backing off"], 10 * SEC)
        .await;
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent ended");
    assert!(!agent.log.iter().any(|l| l.contains("connected to broker")));
    agent.signal("TERM");
    assert!(agent.wait(10 * SEC).await.success());
}

/// A CA of its own in `dir`, with an agent certificate for probe-1 (same
/// name as the swarm's): what an outsider could make.
fn certs_in_other_ca(dir: &Path) {
    certs(dir, &["ca"]);
    certs(dir, &["agent", "probe-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_certificates_reach_only_their_own_topics() {
    let certs = swarm_certs();
    let broker = shipped_broker(certs.path()).await;
    let (_indexer, mut seen) = tls_client(
        broker.port,
        tls_files(certs.path(), Some("indexer")),
        &["watch", "ping/+", "rip/#"],
    )
    .await
    .expect("indexer connects");
    let (agent, _) = tls_client(
        broker.port,
        tls_files(certs.path(), Some("agent-probe-1")),
        &[],
    )
    .await
    .expect("agent connects");
    // Refused by the ACL (acknowledged, then dropped by the broker)...
    for (topic, retain) in [
        ("watch", true),
        ("watch", false),
        ("rip/agent/probe-2", false),
        ("rip/agent/swarming-indexer", false),
    ] {
        agent
            .publish(topic, QoS::AtLeastOnce, retain, b"{\"forged\":1}".to_vec())
            .await
            .unwrap();
    }
    // ...then two allowed ones, in the same order on the same connection.
    agent
        .publish(
            "rip/agent/probe-1",
            QoS::AtLeastOnce,
            false,
            b"own".to_vec(),
        )
        .await
        .unwrap();
    agent
        .publish("ping/127.0.0.1", QoS::AtLeastOnce, false, b"last".to_vec())
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(10 * SEC, async {
        while let Some((topic, payload)) = seen.recv().await {
            let last = payload == b"last";
            got.push(topic);
            if last {
                break;
            }
        }
    })
    .await
    .expect("the allowed publishes arrive");
    assert_eq!(got, ["rip/agent/probe-1", "ping/127.0.0.1"]);

    // No retained list from the agent either, for anyone subscribing later.
    let (_late, mut late) = tls_client(
        broker.port,
        tls_files(certs.path(), Some("agent-probe-2")),
        &["watch"],
    )
    .await
    .expect("agent reads watch");
    assert!(
        tokio::time::timeout(SEC, late.recv()).await.is_err(),
        "an agent's retained watch reached a subscriber"
    );
    // An agent cannot subscribe to results (granted QoS is a failure, and
    // nothing is delivered).
    let (_spy, mut spy) = tls_client(
        broker.port,
        tls_files(certs.path(), Some("agent-probe-2")),
        &["ping/+"],
    )
    .await
    .expect("subscribe answered");
    agent
        .publish("ping/127.0.0.1", QoS::AtLeastOnce, false, b"x".to_vec())
        .await
        .unwrap();
    seen.recv().await.expect("the indexer still gets results");
    assert!(tokio::time::timeout(SEC, spy.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_and_two_agents_run_over_mutual_tls() {
    let certs = swarm_certs();
    let broker = shipped_broker(certs.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("watch.key");
    let (status, out) = run(INDEXER, &["--gen-watch-key", key.to_str().unwrap()]).await;
    assert!(status.success(), "{out}");
    let public = out
        .lines()
        .find(|l| l.starts_with("ed25519:"))
        .expect("public key printed")
        .to_owned();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let c = certs.path().display();
    let cfg = indexer_config(
        dir.path(),
        "idx-1",
        std::slice::from_ref(&url),
        &["127.0.0.1", "127.0.0.2"],
        &format!(
            "file: {{path: {}/results.ndjson}}\ntls: {{ca: {c}/ca.pem, cert: {c}/indexer.pem, key: {c}/indexer.key}}\nwatch_key: {}\n",
            dir.path().display(),
            key.display()
        ),
    );
    let mut idx = Daemon::spawn(INDEXER, &["-v", "-c", cfg.to_str().unwrap()], &[]);
    idx.wait_log(&["subscribed", "mqtts://"], 10 * SEC).await;

    let mut agents = Vec::new();
    for name in ["probe-1", "probe-2"] {
        let adir = tempfile::tempdir().unwrap();
        // No `name:`: it comes from the certificate.
        let cfg = agent_config(
            adir.path(),
            &format!("\"{url}\""),
            &format!(
                "{}watch_keys: [\"{public}\"]\n",
                agent_tls(certs.path(), name)
            ),
        );
        let mut a = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
        a.wait_log(&["agent starting", &format!("agent={name}")], 10 * SEC)
            .await;
        a.wait_log(&["target list applied", "targets=2"], 10 * SEC)
            .await;
        agents.push((a, adir));
    }
    // Results of both agents for both targets reach the indexer's file.
    let file = dir.path().join("results.ndjson");
    wait_file(
        &mut idx,
        &file,
        "results of both agents for both targets",
        20 * SEC,
        |text| {
            let have = |agent: &str, target: &str| {
                text.lines().any(|l| {
                    l.contains(&format!("\"{agent}\"")) && l.contains(&format!("\"{target}\""))
                })
            };
            ["probe-1", "probe-2"]
                .iter()
                .all(|a| have(a, "127.0.0.1") && have(a, "127.0.0.2"))
        },
    )
    .await;
    // A clean stop: the notice goes through the ACL (rip/agent/<own CN>).
    let (mut a, _d) = agents.remove(0);
    a.signal("TERM");
    assert!(a.wait(10 * SEC).await.success());
    // Its document, not its log line: the indexer logs at most one notice
    // a second, and probe-2's arrival may just have taken that second.
    wait_file(
        &mut idx,
        &file,
        "probe-1's shutdown notice",
        10 * SEC,
        |text| text.contains("agent probe-1 shut down"),
    )
    .await;
    for (a, _) in &agents {
        a.signal("TERM");
    }
    idx.signal("TERM");
    assert!(idx.wait(15 * SEC).await.success());
}

/// Waits until the indexer's file output satisfies `done`, reading it
/// again after each batch the indexer (run with `-v`) writes.
async fn wait_file(
    idx: &mut Daemon,
    file: &Path,
    what: &str,
    within: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mark = idx.mark();
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if done(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not in the file:\n{text}"
        );
        idx.wait_log_after(mark, &["documents written"], 10 * SEC)
            .await;
    }
}

fn signed(key: &SigningKey, targets: &[&str], sequence: u64) -> Vec<u8> {
    let list = serde_json::json!({"targets": targets, "version": format!("v{sequence}")});
    watch_sign::sign(list.to_string().as_bytes(), key, sequence).unwrap()
}

/// An agent trusting a fresh key (`good.key` in `dir`), on an open broker
/// holding `target` as a list signed with it at `sequence`: running, its
/// first result of that list received.
struct SignedAgent {
    broker: Mosquitto,
    dir: tempfile::TempDir,
    good: SigningKey,
    cfg: PathBuf,
    sub: Collector,
    agent: Daemon,
}

async fn signed_agent(name: &str, target: &str, sequence: u64) -> SignedAgent {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let public = watch_sign::generate(&dir.path().join("good.key")).unwrap();
    let good = SigningKey::load(&dir.path().join("good.key")).unwrap();
    let cfg = agent_config(
        dir.path(),
        &format!("\"{}\"", broker.addr()),
        &format!("name: {name}\nwatch_keys: [\"{public}\"]\n"),
    );
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    publish(
        broker.port,
        "watch",
        &signed(&good, &[target], sequence),
        true,
    )
    .await;
    let agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
    sub.next_matching(10 * SEC, |m| m.topic == format!("ping/{target}"))
        .await
        .expect("signed list applied");
    SignedAgent {
        broker,
        dir,
        good,
        cfg,
        sub,
        agent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_signed_list_replayed_after_a_restart_is_refused() {
    let SignedAgent {
        broker,
        dir: _dir,
        good,
        cfg,
        mut sub,
        mut agent,
    } = signed_agent("probe-r", "127.0.0.2", 20).await;
    agent.signal("TERM");
    assert!(agent.wait(10 * SEC).await.success());
    // While the agent is down, an old list signed by the same key is put
    // back (retained) on the broker.
    publish(
        broker.port,
        "watch",
        &signed(&good, &["127.0.0.1"], 10),
        true,
    )
    .await;
    let mut agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
    agent
        .wait_log(
            &[
                "signed lists older than the one run last are refused",
                "sequence=20",
            ],
            10 * SEC,
        )
        .await;
    agent
        .wait_log(&["watch message refused", "replayed"], 10 * SEC)
        .await;
    sub.drain_for(Duration::ZERO).await;
    let after = sub.drain_for(3 * SEC).await;
    assert!(
        !after.iter().any(|m| m.topic == "ping/127.0.0.1"),
        "the replayed list was applied"
    );
    agent.signal("TERM");
    assert!(agent.wait(10 * SEC).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_lists_apply_and_forged_unsigned_replayed_ones_do_not() {
    // Signing works on an open broker too.
    let SignedAgent {
        broker,
        dir,
        good,
        cfg: _,
        mut sub,
        mut agent,
    } = signed_agent("probe-s", "127.0.0.1", 10).await;
    watch_sign::generate(&dir.path().join("evil.key")).unwrap();
    let evil = SigningKey::load(&dir.path().join("evil.key")).unwrap();
    publish(
        broker.port,
        "watch",
        &signed(&good, &["127.0.0.2"], 20),
        true,
    )
    .await;
    sub.next_matching(10 * SEC, |m| m.topic == "ping/127.0.0.2")
        .await
        .expect("newer signed list applied");

    // Each refused in turn, counted; the last one, over the size limit and
    // retained, is skipped once without a reconnect loop.
    let refused: [(Vec<u8>, &str); 4] = [
        (
            br#"{"targets": ["127.0.0.3"], "version": "x"}"#.to_vec(),
            "unsigned",
        ),
        (signed(&evil, &["127.0.0.3"], 30), "none of the watch_keys"),
        (signed(&good, &["127.0.0.1"], 10), "replayed"),
        (vec![b' '; 2 * 1024 * 1024], "exceeds"),
    ];
    for (i, (payload, why)) in refused.iter().enumerate() {
        publish(broker.port, "watch", payload, true).await;
        let total = format!("rejected_total={}", i + 1);
        agent
            .wait_log(&["watch message refused", why, &total], 5 * SEC)
            .await;
    }

    // Still on the list signed last, and only on it.
    sub.drain_for(Duration::ZERO).await;
    let after = sub.drain_for(3 * SEC).await;
    assert!(after.iter().any(|m| m.topic == "ping/127.0.0.2"));
    assert!(
        after.iter().all(|m| m.topic == "ping/127.0.0.2"),
        "a refused list was applied: {:?}",
        after.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    agent.signal("TERM");
    assert!(agent.wait(10 * SEC).await.success());
    assert!(!agent
        .log
        .iter()
        .any(|l| l.contains("no watch_keys configured")));
    assert_eq!(
        agent
            .log
            .iter()
            .filter(|l| l.contains("connected to broker"))
            .count(),
        1,
        "the session flapped"
    );

    // Without watch_keys the agent says once that it trusts anyone.
    let cfg = agent_config(
        dir.path(),
        &format!("\"{}\"", broker.addr()),
        "name: probe-open\n",
    );
    let mut open = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
    open.wait_log(&["no watch_keys configured"], 5 * SEC).await;
    open.signal("TERM");
    open.wait(10 * SEC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_refused_by_allow_and_deny_are_never_pinged() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(
        dir.path(),
        &format!("\"{}\"", broker.addr()),
        "name: probe-g\nallow: [127.0.0.0/8]\ndeny: [127.0.0.3, 127.0.0.1/32]\n",
    );
    let mut sub = Collector::new(&[broker.port], &["ping/#"]).await;
    let list = serde_json::json!({"targets": [
        "127.0.0.2",           // allowed
        "127.0.0.3",           // denied
        "::1",                 // outside allow
        "::ffff:127.0.0.3",    // denied, IPv4-mapped
        "::ffff:224.0.0.1",    // forbidden, IPv4-mapped
        "localhost",           // resolves to 127.0.0.1 (denied) and ::1 (not allowed)
    ]});
    publish(broker.port, "watch", list.to_string().as_bytes(), true).await;
    let mut agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
    agent
        .wait_log(&["target list applied", "targets=2 "], 10 * SEC)
        .await;
    for t in ["127.0.0.3", "::1", "::ffff:127.0.0.3"] {
        agent
            .wait_log(
                &["refused by the agent's rules", &format!("target={t} ")],
                5 * SEC,
            )
            .await;
    }
    agent
        .wait_log(&["target rejected", "::ffff:224.0.0.1"], 5 * SEC)
        .await;
    // The name's round is reported with nothing sent.
    let local = sub
        .next_matching(10 * SEC, |m| m.topic == "ping/localhost")
        .await
        .expect("a result for the refused name");
    let r = local.json();
    assert_eq!(r["sent"], 0, "{r}");
    assert!(r["addr"].is_null(), "{r}");
    assert!(r["error"].as_str().unwrap().contains("allow/deny"), "{r}");
    let more = sub.drain_for(3 * SEC).await;
    assert!(more.iter().any(|m| m.topic == "ping/127.0.0.2"));
    for m in sub.history.iter() {
        assert!(
            m.topic == "ping/127.0.0.2" || m.topic == "ping/localhost",
            "refused target got a result: {}",
            m.topic
        );
        if m.topic == "ping/localhost" {
            assert_eq!(m.json()["sent"], 0);
        }
    }
    agent.signal("TERM");
    assert!(agent.wait(10 * SEC).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_errors_are_configuration_errors() {
    let certs = swarm_certs();
    let c = certs.path().display();
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: String| {
        let cfg = agent_config(dir.path(), "\"mqtts://127.0.0.1\"", &extra);
        async move { run(AGENT, &["--check-config", "-c", cfg.to_str().unwrap()]).await }
    };
    // The name comes from the CN; a different name is refused.
    let (s, out) = check(agent_tls(certs.path(), "probe-1")).await;
    assert!(s.success(), "{out}");
    let (s, out) = check(format!(
        "name: probe-2\n{}",
        agent_tls(certs.path(), "probe-1")
    ))
    .await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(out.contains(": name: ") && out.contains("probe-1"), "{out}");
    // An agent may not present the indexers' certificate or name.
    let (s, out) = check(format!(
        "tls: {{ca: {c}/ca.pem, cert: {c}/indexer.pem, key: {c}/indexer.key}}\n"
    ))
    .await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(out.contains("reserved for indexers"), "{out}");
    // Mismatched key, missing file, garbage file: file and key named.
    let (s, out) = check(format!(
        "tls: {{ca: {c}/ca.pem, cert: {c}/agent-probe-1.pem, key: {c}/agent-probe-2.key}}\n"
    ))
    .await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(
        out.contains(": tls.key: ") && out.contains("agent-probe-2.key"),
        "{out}"
    );
    let (s, out) = check(format!("tls: {{ca: {c}/nope.pem}}\n")).await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(
        out.contains(": tls.ca: ") && out.contains("nope.pem"),
        "{out}"
    );
    let (s, out) = check(format!(
        "tls: {{ca: {c}/ca.pem, cert: {c}/agent-probe-1.key, key: {c}/agent-probe-1.key}}\n"
    ))
    .await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(out.contains(": tls.cert: "), "{out}");
    let (s, out) = check("watch_keys: [\"ed25519:short\"]\n".into()).await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(out.contains(": watch_keys[0]: "), "{out}");
    let (s, out) = check("deny: [10.0.0.0/8, nonsense]\n".into()).await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(out.contains(": deny[1]: "), "{out}");
    // An indexer may not present an agent's certificate.
    let idx_cfg = dir.path().join("indexer.yaml");
    std::fs::write(
        &idx_cfg,
        format!(
            "brokers: [\"mqtts://127.0.0.1\"]\nstate_dir: {}\nfile: {{path: {}/r.ndjson}}\ntls: {{ca: {c}/ca.pem, cert: {c}/agent-probe-1.pem, key: {c}/agent-probe-1.key}}\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let (s, out) = run(
        INDEXER,
        &["--check-config", "-c", idx_cfg.to_str().unwrap()],
    )
    .await;
    assert_eq!(s.code(), Some(78), "{out}");
    assert!(
        out.contains(": tls.cert: ") && out.contains("probe-1") && out.contains("swarming-indexer"),
        "{out}"
    );
}

#[test]
fn the_shipped_size_limit_is_what_agents_accept() {
    let dropin =
        std::fs::read_to_string(format!("{TOP}/etc/mosquitto/conf.d/swarming.conf")).unwrap();
    let limit: usize = dropin
        .lines()
        .find_map(|l| l.strip_prefix("message_size_limit "))
        .expect("message_size_limit set")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(limit, swarming::protocol::MAX_WATCH_BYTES);
    assert!(limit >= swarming::protocol::MAX_RESULT_BYTES);
    for line in [
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ] {
        assert!(dropin.lines().any(|l| l == line), "{line} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_file_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let ok = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["probe-pw", "s3cret"])
        .status()
        .expect("mosquitto_passwd")
        .success();
    assert!(ok);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = passwd.display().to_string();
    let broker = Mosquitto::start_with_conf(|port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {p}\nlog_dest stderr\npersistence false\n")
    })
    .await;
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "guess\n").unwrap();
    for (file, accepted) in [(&bad, false), (&good, true)] {
        let cfg = agent_config(
            dir.path(),
            &format!("\"{}\"", broker.addr()),
            &format!(
                "name: probe-pw\nusername: probe-pw\npassword_file: {}\n",
                file.display()
            ),
        );
        let mut agent = Daemon::spawn(AGENT, &["-c", cfg.to_str().unwrap()], &[]);
        if accepted {
            agent.wait_log(&["connected to broker"], 10 * SEC).await;
        } else {
            agent
                .wait_log(&["cannot connect to broker", "NotAuthorized"], 10 * SEC)
                .await;
        }
        agent.signal("TERM");
        assert!(agent.wait(10 * SEC).await.success());
        assert_eq!(
            agent.log.iter().any(|l| l.contains("connected to broker")),
            accepted
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused() {
    let dir = swarm_certs();
    let revoked = dir.path().join("agent-probe-2.pem");
    certs(dir.path(), &["revoke", revoked.to_str().unwrap()]);
    let broker = shipped_broker(dir.path()).await;
    assert!(
        tls_client(
            broker.port,
            tls_files(dir.path(), Some("agent-probe-2")),
            &[]
        )
        .await
        .is_err(),
        "revoked certificate accepted"
    );
    tls_client(
        broker.port,
        tls_files(dir.path(), Some("agent-probe-1")),
        &[],
    )
    .await
    .expect("the others still connect");
}
