//! A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! fd 3 carries our commands, fd 4 its answers, each message JSON ended by a NUL byte), so a test
//! can open a page, run script in it (click, fill a field), wait for the DOM to show something and
//! save screenshots. No port, no websocket. `Browser::launch` is None when no chromium is installed
//! and `PGTASKD_REQUIRE_BROWSER` is unset (CI sets it).
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The first chromium on PATH.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(move |dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .find(|p| p.is_file())
}

/// The directory for a test's screenshots: `target/console-screenshots/`.
pub fn artefact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

impl Browser {
    pub fn launch() -> Option<Browser> {
        let Some(binary) = chromium() else {
            assert!(
                std::env::var_os("PGTASKD_REQUIRE_BROWSER").is_none(),
                "PGTASKD_REQUIRE_BROWSER is set but no chromium is installed"
            );
            eprintln!("skipping: no chromium installed (apt-get install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let (cmd_read, cmd_write) = pipe();
        let (answer_read, answer_write) = pipe();
        let (cmd_fd, answer_fd) = (cmd_read.as_raw_fd(), answer_write.as_raw_fd());
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // first above 10, so that dup2 onto 3 and 4 cannot clobber one with the other
                let c = libc::fcntl(cmd_fd, libc::F_DUPFD, 10);
                let a = libc::fcntl(answer_fd, libc::F_DUPFD, 10);
                if c < 0 || a < 0 || libc::dup2(c, 3) < 0 || libc::dup2(a, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop(cmd_read);
        drop(answer_write);
        let (tx, rx) = mpsc::channel();
        let reader = File::from(answer_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: File::from(cmd_write),
            from_browser: rx,
            next_id: 0,
            session: None,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        );
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser.set_viewport(1400, 1000);
        Some(browser)
    }

    /// Sends one command (to the page once attached) and waits for its answer.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if answer["id"].as_u64() == Some(id) {
                if let Some(err) = answer.get("error") {
                    panic!("chromium refused {method}: {err}");
                }
                return answer["result"].clone();
            }
        }
    }

    pub fn set_viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    /// Opens `url` in the page.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("script failed: {expression}\n{ex}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page; panics with `what` and the page's text.
    pub fn wait_for(&mut self, what: &str, expression: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        let wrapped =
            format!("(function(){{try{{return ({expression});}}catch(e){{return null;}}}})()");
        loop {
            let v = self.eval(&wrapped);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what} ({expression}); the page shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Saves a PNG of the whole page (up to 4000 px high) to `target/console-screenshots/<name>`.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000) as u32;
        self.set_viewport(1400, height);
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        self.set_viewport(1400, 1000);
        let data = shot["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 screenshot");
        let path = artefact_dir().join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
