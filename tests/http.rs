//! The indexer's HTTP endpoint as an operator uses it: it moves when a
//! reload changes `http.listen`, a bad address keeps the old one, garbage on
//! the socket harms nothing, and only GET is served.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::daemon::Daemon;
use common::fixtures::indexer_config;
use common::mosquitto::Mosquitto;

const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const SEC: Duration = Duration::from_secs(1);

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One raw HTTP/1.0 exchange (blocking, bounded): the whole answer, or the
/// connection error.
fn raw(port: u16, request: &[u8]) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(5 * SEC))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn get(port: u16, path: &str) -> std::io::Result<String> {
    raw(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_moves_on_reload_and_survives_garbage() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |listen: &str| {
        indexer_config(
            dir.path(),
            "idx-http",
            &[broker.addr()],
            &["127.0.0.1"],
            &format!(
                "file: {{path: {}/r.ndjson}}\nhttp: {{listen: \"{listen}\"}}\n",
                dir.path().display()
            ),
        )
    };
    let a = free_port();
    let cfg = config(&format!("127.0.0.1:{a}"));
    let mut idx = Daemon::spawn(
        INDEXER,
        &["--log", "stderr", "-c", cfg.to_str().unwrap()],
        &[],
    );
    idx.wait_log(&[&format!("page on http://127.0.0.1:{a}/")], 10 * SEC)
        .await;
    idx.wait_log(&["connected to broker"], 10 * SEC).await;
    let m = get(a, "/metrics").unwrap();
    assert!(
        m.starts_with("HTTP/1.0 200") || m.starts_with("HTTP/1.1 200"),
        "{m}"
    );
    assert!(m.contains("swarming_brokers_connected"), "{m}");
    // The indexer's own per-session counters, the retries and the lag.
    for series in [
        "swarming_broker_duplicates_total{broker=",
        "swarming_broker_malformed_total{broker=",
        "swarming_elasticsearch_retried_total 0",
        "swarming_spool_oldest_record_age_seconds 0",
    ] {
        assert!(m.contains(series), "{series} missing in {m}");
    }

    // Garbage, a huge header, a half request: the server stays up.
    let _ = raw(a, &[0u8, 0xff, b'\n', b'\r'].repeat(10_000));
    let _ = raw(
        a,
        format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1 << 20)).as_bytes(),
    );
    if let Ok(mut half) = std::net::TcpStream::connect(("127.0.0.1", a)) {
        let _ = half.write_all(b"GE");
    }
    let r = raw(a, b"POST /api/state HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(r.contains(" 405 "), "only GET: {r}");
    let s = get(a, "/api/state").unwrap();
    assert!(s.contains("\"targets\":[\"127.0.0.1\"]"), "{s}");

    // A new address: the endpoint moves.
    let b = free_port();
    config(&format!("127.0.0.1:{b}"));
    idx.signal("HUP");
    idx.wait_log(&[&format!("page on http://127.0.0.1:{b}/")], 10 * SEC)
        .await;
    assert!(get(b, "/").unwrap().contains("<table id=\"matrix\""));
    idx.wait_log(&["configuration reloaded", "http"], 10 * SEC)
        .await;
    assert!(get(a, "/").is_err(), "the old address is closed");

    // A bad address is a reload error: the running endpoint stays.
    config("localhost:80");
    idx.signal("HUP");
    idx.wait_log(&["reload failed", "http.listen"], 10 * SEC)
        .await;
    assert!(get(b, "/metrics")
        .unwrap()
        .contains("swarming_agents_alive"));

    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_metrics_only_when_asked() {
    const AGENT: &str = env!("CARGO_BIN_EXE_swarming-agent");
    let broker = Mosquitto::start().await;
    common::mqtt::publish(broker.port, "watch", br#"{"targets": ["127.0.0.1"]}"#, true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    let yaml = |http: &str| {
        format!(
            "name: probe-m\nbrokers: [\"{}\"]\nkeepalive: 1s\nping: {{interval: 1s, count: 1, timeout: 300ms}}\n{http}",
            broker.addr()
        )
    };
    std::fs::write(&cfg, yaml("")).unwrap();
    let mut agent = Daemon::spawn(
        AGENT,
        &["--log", "stderr", "-c", cfg.to_str().unwrap()],
        &[],
    );
    agent.wait_log(&["ready"], 10 * SEC).await;
    assert!(
        !agent.log.iter().any(|l| l.contains("http endpoint")),
        "off unless configured"
    );
    let port = free_port();
    std::fs::write(
        &cfg,
        yaml(&format!("http: {{listen: \"127.0.0.1:{port}\"}}\n")),
    )
    .unwrap();
    agent.signal("HUP");
    agent
        .wait_log(
            &[&format!("metrics on http://127.0.0.1:{port}/metrics")],
            10 * SEC,
        )
        .await;
    let deadline = tokio::time::Instant::now() + 10 * SEC;
    let m = loop {
        let m = get(port, "/metrics").unwrap();
        if !m.contains("swarming_agent_rounds_total 0") || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        m.contains(&format!(
            "swarming_agent_broker_connected{{broker=\"{}\"}} 1",
            broker.addr()
        )),
        "{m}"
    );
    assert!(m.contains("swarming_agent_targets 1"), "{m}");
    assert!(
        !m.contains("swarming_agent_rounds_total 0"),
        "rounds counted: {m}"
    );
    agent.signal("TERM");
    assert_eq!(agent.wait(15 * SEC).await.code(), Some(0));
    assert!(get(port, "/metrics").is_err(), "closed at exit");
}
