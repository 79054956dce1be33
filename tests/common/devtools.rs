//! A headless chromium driven over the DevTools protocol (a WebSocket on a
//! loopback port): enough to load a page once and read its live DOM while
//! it updates itself. The WebSocket client is the few frames the protocol
//! needs (RFC 6455: masked text frames out, unmasked frames in).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Headless chromium as root on a machine without a display, with nothing
/// fetched but the page under test.
pub const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1100,520",
];

pub struct Browser {
    _child: Child,
    ws: TcpStream,
    next_id: u64,
}

impl Browser {
    /// Starts chromium with a fresh profile in `profile` and attaches to its
    /// first page.
    pub async fn start(profile: &Path) -> Browser {
        let child = Command::new("chromium")
            .args(HEADLESS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium runs (CI installs Debian's chromium: apt-get install chromium)");
        // Chromium writes its port to DevToolsActivePort once listening.
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(text) = tokio::fs::read_to_string(&port_file).await {
                    if let Some(p) = text.lines().next().and_then(|l| l.parse().ok()) {
                        return p;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("chromium's DevTools port within 30 s");
        let list: serde_json::Value = serde_json::from_str(
            &reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
                .await
                .expect("DevTools /json/list")
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        let ws_url = list
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let path = ws_url
            .split_once(&format!("127.0.0.1:{port}"))
            .map(|(_, p)| p.to_owned())
            .expect("ws URL on loopback");
        let mut ws = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        ws.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c3dhcm1pbmctdGVzdC1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(ws.read_u8().await.unwrap());
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "WebSocket upgrade: {head}"
        );
        Browser {
            _child: child,
            ws,
            next_id: 1,
        }
    }

    async fn send_frame(&mut self, text: &[u8]) {
        let mut frame = vec![0x81u8];
        // Client frames are masked; a zero key leaves the bytes as they are.
        match text.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(text);
        self.ws.write_all(&frame).await.unwrap();
    }

    /// The next whole text message.
    async fn recv_message(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let b0 = self.ws.read_u8().await.unwrap();
            let b1 = self.ws.read_u8().await.unwrap();
            let len = match b1 & 0x7f {
                126 => u64::from(self.ws.read_u16().await.unwrap()),
                127 => self.ws.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.ws.read_exact(&mut payload).await.unwrap();
            match b0 & 0x0f {
                0x0 | 0x1 => message.extend_from_slice(&payload),
                _ => continue, // ping, pong, binary: not used by DevTools
            }
            if b0 & 0x80 != 0 {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Sends one command and returns its `result` (events in between are
    /// skipped).
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.send_frame(msg.to_string().as_bytes()).await;
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let v: serde_json::Value =
                    serde_json::from_str(&self.recv_message().await).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"))
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Loads `url`.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({"url": url}))
            .await;
    }
}
