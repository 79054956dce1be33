//! The real daemon binaries as subprocesses, with their log lines as events.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A daemon process; its stderr lines arrive on a channel (and are echoed
/// to the test's output for diagnosis).
pub struct Daemon {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line seen so far.
    pub log: Vec<String>,
}

impl Daemon {
    /// Spawns `bin` with `args` and extra environment.
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn daemon");
        let (tx, rx) = mpsc::unbounded_channel();
        let name = Path::new(bin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for stream in [
            Box::new(child.stderr.take().expect("stderr"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stdout.take().expect("stdout")),
        ] {
            let tx = tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    eprintln!("[{name}] {l}");
                    let _ = tx.send(l);
                }
            });
        }
        Daemon {
            child,
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing every one of `needles` (earlier
    /// lines count).
    pub async fn wait_log(&mut self, needles: &[&str], within: Duration) -> String {
        self.wait_log_after(0, needles, within).await
    }

    /// The number of lines emitted so far, for [`Daemon::wait_log_after`].
    pub fn mark(&mut self) -> usize {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        self.log.len()
    }

    /// Waits for a line containing every one of `needles` that comes after
    /// the lines already emitted (earlier matches do not count).
    pub async fn wait_new_log(&mut self, needles: &[&str], within: Duration) -> String {
        let mark = self.mark();
        self.wait_log_after(mark, needles, within).await
    }

    /// Waits for a line containing every one of `needles` among the lines
    /// emitted after `mark` (see [`Daemon::mark`]).
    pub async fn wait_log_after(
        &mut self,
        mark: usize,
        needles: &[&str],
        within: Duration,
    ) -> String {
        let matches = |l: &str| needles.iter().all(|n| l.contains(n));
        if let Some(l) = self.log.iter().skip(mark).find(|l| matches(l)) {
            return l.clone();
        }
        let found = tokio::time::timeout(within, async {
            while let Some(l) = self.lines.recv().await {
                self.log.push(l.clone());
                if matches(&l) {
                    return Some(l);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        found.unwrap_or_else(|| {
            panic!(
                "no log line with {needles:?} within {within:?}; seen since:\n{}",
                self.log[mark.min(self.log.len())..].join("\n")
            )
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, sig: &str) {
        super::mosquitto::signal(self.pid(), sig);
    }

    /// Waits for the exit and the end of its output, both within `within`.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        let status = tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .expect("daemon exited in time")
            .expect("wait");
        // Collect the remaining lines, up to the end of both pipes (within
        // the same time): the exit can be seen before the readers have
        // passed on the last lines (a test read the log there and missed
        // "no result was waiting").
        let log = &mut self.log;
        let lines = &mut self.lines;
        let _ = tokio::time::timeout_at(deadline, async {
            while let Some(l) = lines.recv().await {
                log.push(l);
            }
        })
        .await;
        status
    }
}

/// Runs a binary to completion, returning (status, stdout + stderr).
pub async fn run(bin: &str, args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}
