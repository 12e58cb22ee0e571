//! A real headless Chromium, driven over the DevTools protocol.
//!
//! Just enough of the protocol for page tests: open a tab, load a URL, run
//! JavaScript in it and wait for the page to reach a state, take a
//! screenshot, and collect every uncaught exception the page threw.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Uncaught exceptions and console errors the page reported.
    pub problems: Vec<String>,
}

/// Chromium without a display, a sandbox (tests may run as root) or any
/// traffic of its own (updates, sync): what every browser test starts with.
pub const QUIET_HEADLESS: [&str; 8] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The installed Chromium, or why there is none (the caller decides whether
/// that skips or fails; see `skip_or_fail_in_ci`).
pub fn find_chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|c| {
        Command::new(c).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| c.to_string())
    })
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile in `profile`, and opens one tab.
    pub fn launch(chromium: &str, profile: &Path) -> Browser {
        let mut child = Command::new(chromium)
            .args(QUIET_HEADLESS)
            .args([
                "--window-size=1200,800",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        // Chromium prints where its protocol listens; port 0 picked a free one.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium did not start its DevTools server");
        let (socket, _) = tungstenite::connect(url.as_str()).expect("connecting to chromium");
        let mut b = Browser { child, socket, session: String::new(), next_id: 0, problems: Vec::new() };
        let target = b.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().expect("a target id").to_string();
        let attached = b.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true }));
        b.session = attached["sessionId"].as_str().expect("a session id").to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.call_page(domain, json!({}));
        }
        b
    }

    /// Sends one command and waits for its answer, keeping the events that
    /// arrive meanwhile that report a problem.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.socket.send(Message::text(msg.to_string())).expect("sending to chromium");
        loop {
            let reply = match self.socket.read().expect("reading from chromium") {
                Message::Text(t) => serde_json::from_str::<Value>(&t).expect("protocol JSON"),
                _ => continue,
            };
            if reply["id"] == json!(id) {
                if let Some(e) = reply.get("error") {
                    panic!("{method} failed: {e}");
                }
                return reply["result"].clone();
            }
            self.note_event(&reply);
        }
    }

    fn note_event(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.problems.push(event["params"]["exceptionDetails"].to_string()),
            Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => {
                self.problems.push(event["params"]["args"].to_string())
            }
            _ => {}
        }
    }

    fn call_page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    pub fn navigate(&mut self, url: &str) {
        self.call_page("Page.navigate", json!({ "url": url }));
    }

    /// Runs `expression` in the page (awaiting it if it is a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call_page(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; panics with `what` and
    /// the page's text after `secs`.
    pub fn wait_for(&mut self, secs: u64, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            // Not there yet while the page is still loading (no body yet).
            let test = format!("(() => {{ try {{ return Boolean({expression}); }} catch (e) {{ return false; }} }})()");
            if self.eval(&test) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = self.eval("document.body ? document.body.innerText : ''");
        panic!("timed out after {secs} s waiting for {what} ({expression}); the page shows:\n{text}");
    }

    /// A PNG of what the tab shows, into `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let shot = self.call_page("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
