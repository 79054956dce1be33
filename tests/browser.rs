//! The indexer's live page in a real browser (Debian's `chromium`,
//! headless, driven over the DevTools protocol): a small swarm (real
//! mosquitto, the indexer, results as three agents publish them) shows as a
//! matrix of agents x targets grouped by provider; when a target stops
//! answering its cells turn down in the same page load (live, no reload);
//! a screenshot lands in `target/test-artifacts/`. Also checks `/metrics`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use common::devtools::Browser;
use common::fixtures::{indexer_config, run_start};
use common::mosquitto::Mosquitto;
use common::mqtt::publish;

const INDEXER: &str = env!("CARGO_BIN_EXE_swarming-indexer");
const SEC: Duration = Duration::from_secs(1);
const TARGETS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
/// (agent, provider)
const AGENTS: [(&str, &str); 3] = [
    ("probe-paris", "ovh"),
    ("probe-roubaix", "ovh"),
    ("probe-berlin", "hetzner"),
];

fn result(agent: &str, provider: &str, target: &str, round: u32, received: u32) -> Vec<u8> {
    let rtts: Vec<Option<f64>> = (0..4)
        .map(|i| (i < received).then_some(0.5 + f64::from(i) * 0.1))
        .collect();
    let rtt = (received > 0)
        .then(|| serde_json::json!({"min": 0.5, "avg": 0.6, "max": 0.8, "stddev": 0.1}));
    serde_json::json!({
        "agent": agent, "labels": {"provider": provider}, "target": target,
        "addr": target, "timestamp": round_ts(round),
        "interval": 60.0, "sent": 4, "received": received, "rtt": rtt, "rtts": rtts
    })
    .to_string()
    .into_bytes()
}

/// Round `round`: an hour ago (whole minute) plus `round` seconds, always
/// within the window indexers accept.
fn round_ts(round: u32) -> String {
    let now = run_start();
    let at = std::time::UNIX_EPOCH + Duration::from_secs(now - now % 60 - 3600 + u64::from(round));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Publishes one round of every agent towards every target; `down` stops
/// answering (nothing comes back).
async fn publish_round(port: u16, round: u32, down: Option<&str>) {
    for (agent, provider) in AGENTS {
        for t in TARGETS {
            let received = if Some(t) == down { 0 } else { 4 };
            publish(
                port,
                &format!("ping/{t}"),
                &result(agent, provider, t, round, received),
                false,
            )
            .await;
        }
    }
}

/// Waits until `/api/state` satisfies `ok` (the indexer took the results).
async fn wait_state(base: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let url = format!("{base}/api/state");
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await {
            if let Ok(v) =
                serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap_or_default())
            {
                if ok(&v) {
                    return v;
                }
                last = v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/api/state never matched; last: {last:#}");
}

/// The page's DOM once `ok` holds (the page updates itself every 2 s).
async fn wait_dom(browser: &mut Browser, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + 20 * SEC;
    loop {
        let dom = browser
            .eval("document.documentElement.outerHTML")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if ok(&dom) {
            return dom;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed the expected state; last DOM:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless chromium on `url` with `action` (`--screenshot=...`) after
/// the page had 4 s of virtual time.
async fn chromium(url: &str, action: &str, profile: &Path) -> String {
    let out = tokio::time::timeout(
        60 * SEC,
        tokio::process::Command::new("chromium")
            .args(common::devtools::HEADLESS)
            .arg("--virtual-time-budget=4000")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(action)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 60 s")
    .expect("chromium runs (CI installs Debian's chromium: apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium {action} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `name="..."` in one tag's text.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// (agent, target, state) of every matrix cell in the dumped DOM.
fn cells(dom: &str) -> Vec<(String, String, String)> {
    dom.split("<td ")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            Some((
                attr(tag, "data-agent")?.to_owned(),
                attr(tag, "data-target")?.to_owned(),
                attr(tag, "data-state")?.to_owned(),
            ))
        })
        .collect()
}

fn state_of(cells: &[(String, String, String)], agent: &str, target: &str) -> String {
    cells
        .iter()
        .find(|(a, t, _)| a == agent && t == target)
        .map(|(_, _, s)| s.clone())
        .unwrap_or_else(|| panic!("no cell for {agent} x {target} in {cells:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_the_matrix_and_a_target_going_down() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = format!(
        "file: {{path: {}/results.ndjson}}\nhttp: {{listen: \"127.0.0.1:0\"}}\n",
        dir.path().display()
    );
    let cfg = indexer_config(dir.path(), "idx-browser", &[broker.addr()], &TARGETS, &out);
    let mut idx = Daemon::spawn(
        INDEXER,
        &["--log", "stderr", "-c", cfg.to_str().unwrap()],
        &[],
    );
    let line = idx
        .wait_log(&["http endpoint: page on http://127.0.0.1:"], 10 * SEC)
        .await;
    let base = line
        .split("page on ")
        .nth(1)
        .and_then(|s| s.split('/').nth(2))
        .map(|hostport| format!("http://{hostport}"))
        .expect("address in the log line");
    idx.wait_log(&["subscribed"], 10 * SEC).await;

    for round in 0..3 {
        publish_round(broker.port, round, None).await;
    }
    let n = AGENTS.len() * TARGETS.len();
    wait_state(&base, |v| {
        v["cells"]
            .as_array()
            .is_some_and(|c| c.len() == n && c.iter().all(|c| c["round"] == round_ts(2).as_str()))
    })
    .await;

    // One page load; everything after it arrives by the page's own polling.
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Browser::start(profile.path()).await;
    browser.navigate(&format!("{base}/")).await;
    let dom = wait_dom(&mut browser, |dom| cells(dom).len() == n).await;
    let before = cells(&dom);
    for (agent, _) in AGENTS {
        for t in TARGETS {
            assert_eq!(state_of(&before, agent, t), "up", "{agent} x {t}");
        }
    }
    // Columns grouped by provider: both ovh agents side by side.
    for (p, n) in [("ovh", 2), ("hetzner", 1)] {
        assert!(
            dom.contains(&format!(
                "class=\"provider\" colspan=\"{n}\" title=\"{p}\">{p}<"
            )),
            "provider group {p} over {n} agents in the header"
        );
    }
    assert!(dom.contains("3/3 agents alive"), "summary line");
    // Survives only as long as the page is not reloaded.
    browser.eval("window.loadedOnce = true").await;

    // 127.0.0.2 stops answering.
    publish_round(broker.port, 3, Some("127.0.0.2")).await;
    let dom = wait_dom(&mut browser, |dom| {
        AGENTS
            .iter()
            .all(|(a, _)| state_of(&cells(dom), a, "127.0.0.2") == "down")
    })
    .await;
    let after = cells(&dom);
    for (agent, _) in AGENTS {
        assert_eq!(state_of(&after, agent, "127.0.0.1"), "up", "{agent}");
    }
    assert_eq!(
        browser.eval("window.loadedOnce === true").await,
        serde_json::json!(true),
        "updated live, without a reload"
    );
    let hover = dom
        .split("data-target=\"127.0.0.2\" data-state=\"down\" title=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default();
    assert!(hover.contains("loss 100 % (0/4)"), "hover text: {hover:?}");
    // The history of the target shows the lost round.
    assert!(dom.contains("<rect"), "loss drawn in the history");
    // One more round down, and the indexer's verdict says whose fault it is.
    publish_round(broker.port, 4, Some("127.0.0.2")).await;
    let dom = wait_dom(&mut browser, |dom| {
        dom.contains("data-verdict=\"down\" data-cause=\"target\"")
    })
    .await;
    assert!(
        dom.contains(">down (target)<"),
        "verdict shown on the target's row"
    );
    assert!(
        dom.contains("data-verdict=\"up\" data-cause=\"none\""),
        "the others are up"
    );
    drop(browser);

    let shot = artifacts().join("browser-matrix.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &format!("{base}/"),
        &format!("--screenshot={}", shot.display()),
        tempfile::tempdir().unwrap().path(),
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real PNG"
    );
    eprintln!("screenshot: {}", shot.display());

    // The same state for machines.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "swarming_agents_alive 3",
        "swarming_target_loss_ratio{agent=\"probe-berlin\",target=\"127.0.0.2\"} 1",
        "swarming_target_loss_ratio{agent=\"probe-berlin\",target=\"127.0.0.1\"} 0",
        &format!(
            "swarming_broker_connected{{broker=\"{}\"}} 1",
            broker.addr()
        ),
        &format!(
            "swarming_broker_results_received_total{{broker=\"{}\"}} 45",
            broker.addr()
        ),
        "swarming_results_received_total 45",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(line)),
            "{line} in /metrics:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("target_rtt_seconds{agent=\"probe-berlin\",target=\"127.0.0.2\"}"),
        "no rtt when nothing came back"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));

    idx.signal("TERM");
    assert_eq!(idx.wait(15 * SEC).await.code(), Some(0));
}
