//! Real mosquitto processes on free loopback ports.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running mosquitto broker (killed on drop).
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Configuration lines replacing the test defaults (see `start_with`).
    conf: Option<String>,
    /// A whole configuration file (see `start_with_conf`).
    full_conf: Option<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Mosquitto {
    /// Starts a broker on a free port; returns once it listens.
    pub async fn start() -> Mosquitto {
        Mosquitto::start_conf(None).await
    }

    /// Starts a broker with mosquitto's own defaults (no queue or
    /// persistence settings of ours) plus the `extra` configuration lines.
    pub async fn start_with(extra: &str) -> Mosquitto {
        Mosquitto::start_conf(Some(extra.to_owned())).await
    }

    async fn start_conf(conf: Option<String>) -> Mosquitto {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            if let Some(child) = spawn(port, &dir, conf.as_deref()).await {
                return Mosquitto {
                    port,
                    child: Some(child),
                    dir,
                    conf,
                    full_conf: None,
                };
            }
        }
        panic!("mosquitto did not start (is it installed? apt-get install mosquitto)");
    }

    /// Starts a broker with the configuration `conf(port)` returns (for
    /// the shipped drop-in); returns once it listens.
    pub async fn start_with_conf(conf: impl Fn(u16) -> String) -> Mosquitto {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let text = conf(port);
            if let Some(child) = spawn_conf(&dir, &text).await {
                return Mosquitto {
                    port,
                    child: Some(child),
                    dir,
                    conf: None,
                    full_conf: Some(text),
                };
            }
        }
        panic!("mosquitto did not start with the given configuration");
    }

    /// `host:port` as the daemons take it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running") as i32
    }

    /// SIGKILL: the broker vanishes, sockets are reset.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGSTOP: the broker goes silent, sockets stay open.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Starts again on the same port (after `kill`).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        for _ in 0..50 {
            let spawned = match &self.full_conf {
                Some(text) => spawn_conf(&self.dir, text).await,
                None => spawn(self.port, &self.dir, self.conf.as_deref()).await,
            };
            if let Some(c) = spawned {
                self.child = Some(c);
                return;
            }
            // The old socket may linger for a moment after a kill.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto did not restart on port {}", self.port);
    }
}

pub fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Spawns mosquitto and waits for its "running" line (or its exit).
async fn spawn(port: u16, dir: &tempfile::TempDir, extra: Option<&str>) -> Option<Child> {
    let tuning = extra.unwrap_or("max_queued_messages 10000\npersistence false\n");
    spawn_conf(
        dir,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n{tuning}"
        ),
    )
    .await
}

/// Spawns mosquitto with `text` as its configuration file.
async fn spawn_conf(dir: &tempfile::TempDir, text: &str) -> Option<Child> {
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, text).expect("write conf");
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Opening ipv4 listen socket") {
                // The listening line comes after the bind succeeded; the
                // "running" line follows.
                continue;
            }
            if line.contains("running") {
                return true;
            }
            if line.contains("Error") {
                return false;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        let _ = child.kill().await;
        return None;
    }
    // Keep draining stderr so the broker never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(child)
}
