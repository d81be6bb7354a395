//! A real headless Chromium driven through chromedriver (WebDriver) with
//! fantoccini: chromedriver on an ephemeral loopback port (the one it
//! prints for `--port=0`), a fresh profile per browser, and everything
//! killed when the [`Browser`] is dropped.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs: when either is missing the test fails saying
//! so, it never skips.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Where Debian puts the browser (a wrapper script that chromedriver accepts).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A host name the browser resolves to 127.0.0.1 (`--host-resolver-rules`),
/// as a DNS rebinding attack would make it: the console must refuse it.
pub const REBIND_HOST: &str = "rebind.test";

/// How long the browser may take for anything a test awaits; generous for
/// a machine shared by many builds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A headless Chromium session, its chromedriver and its profile.
pub struct Browser {
    client: Client,
    session: String,
    driver_port: u16,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width` x `height` CSS pixels. Panics, naming the package, when
    /// either program is missing.
    pub async fn start(width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the browser tests need Debian's chromium and chromium-driver \
             (`apt-get install -y chromium chromium-driver`, as .ci/run does)"
        );
        let (driver, driver_port) = tokio::task::spawn_blocking(start_driver).await.unwrap();
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-breakpad".into(),
            "--disable-crash-reporter".into(),
            "--disable-dev-shm-usage".into(),
            format!("--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1"),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut driver = DriverGuard(Some(driver));
        let client = tokio::time::timeout(
            PATIENCE,
            ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{driver_port}")),
        )
        .await
        .expect("chromium starts within 30 s")
        .expect("a WebDriver session with headless chromium");
        let session = client.session_id().await.unwrap().expect("a session id");
        let browser = Browser { client, session, driver_port, driver: driver.0.take().unwrap(), _profile: profile };
        // A headless window may start at another size than asked: make it so.
        browser.client.set_window_size(width, height).await.unwrap();
        browser
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Navigates to `url` and waits for the load.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The address bar.
    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` asynchronously: it ends by calling its last argument with the value.
    pub async fn js_async(&self, script: &str) -> Value {
        self.client.execute_async(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The element at `css`, waiting for it (at most [`PATIENCE`]).
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .every(Duration::from_millis(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within 30 s: {e}"))
    }

    /// The visible text of `css` (empty when absent).
    pub async fn text(&self, css: &str) -> String {
        let v = self
            .js("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", vec![json!(css)])
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Polls the text of `css` (every 20 ms, at most [`PATIENCE`]) until
    /// `ok` holds; returns it. Panics with `what` and the last text.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {css} still says {text:?}\n--- body\n{}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `script`'s value (every 20 ms, at most [`PATIENCE`]) until `ok` holds.
    pub async fn wait_js(&self, script: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.js(script, vec![]).await;
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: the page says {v}\n--- body\n{}", self.text("body").await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Clicks the element at `css` (waiting for it).
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Saves a PNG of the window to `path` (creating its folder).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session and chromedriver now (drop does the same).
    pub fn close(self) {}
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The client cannot be awaited here: end the session over a plain
        // request, so chromedriver quits chromium, then end its process group.
        let _ = http(self.driver_port, "DELETE", &format!("/session/{}", self.session));
        kill_group(&mut self.driver);
    }
}

/// Kills chromedriver's group if the session never came up.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            kill_group(child);
        }
    }
}

fn kill_group(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// `chromedriver --port=0` in its own process group; returns it and the
/// port it printed, once its `/status` says ready.
fn start_driver() -> (Child, u16) {
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): the browser tests need Debian's chromium and chromium-driver \
                 (`apt-get install -y chromium chromium-driver`, as .ci/run does)"
            )
        });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the port, then drains what chromedriver prints until it exits.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(port) = line.split("started successfully on port ").nth(1) {
                let _ = tx.send(port.trim_end_matches('.').trim().parse::<u16>().ok());
            }
        }
    });
    let mut guard = DriverGuard(Some(child));
    let port = rx
        .recv_timeout(PATIENCE)
        .ok()
        .flatten()
        .expect("chromedriver prints `started successfully on port N` within 30 s");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(reply) = http(port, "GET", "/status")
            && reply.status == 200
            && serde_json::from_str::<Value>(&reply.body).is_ok_and(|v| v["value"]["ready"] == true)
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver on port {port} never said ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    (guard.0.take().unwrap(), port)
}

/// One HTTP/1.1 request to chromedriver on 127.0.0.1:`port` over a plain
/// socket, read up to the end its headers announce (chromedriver keeps the
/// connection open): where no async runtime can be awaited (drop), and
/// before a session exists (`/status`).
fn http(port: u16, method: &str, path: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    // Some servers (chromedriver) keep the connection open despite
    // `Connection: close`: read up to the end the headers announce.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if raw.is_empty() => return Err(e),
            Err(_) => 0,
        };
        raw.extend_from_slice(&buf[..n]);
        // 1 MiB is far more than any answer a test reads this way.
        if n == 0 || raw.len() > 1 << 20 || complete(&raw) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(Reply { status, body: body.to_string() })
}

/// An answer read by [`http`].
#[derive(Debug)]
struct Reply {
    /// The status code (0 when the status line could not be read).
    status: u16,
    body: String,
}

/// Whether `raw` holds a whole response: its headers and the
/// `Content-Length` bytes they announce (chromedriver always sends one).
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|n| n.trim().parse().ok());
    len.is_some_and(|n: usize| raw.len() - end - 4 >= n)
}

/// `target/` of this build (CARGO_TARGET_TMPDIR is `target/tmp`), where
/// the screenshots go.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf()
}
