//! The real `support daemon` binary and its loopback control API, with
//! `curl` and the CLI as clients.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{Home, bin};

/// A running `support daemon`; killed if a test fails before stopping it.
struct DaemonProc {
    child: Child,
    port: u16,
    secret: String,
}

impl DaemonProc {
    /// Starts the daemon and waits for its "ready" log line.
    fn start(home: &Home) -> DaemonProc {
        let mut child = Command::new(bin())
            .arg("daemon")
            .env("SUPPORT_HOME", &home.path)
            .env("SUPPORT_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("daemon ready"));
        assert!(ready, "the daemon did not get ready");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.file("daemon.json")).unwrap()).unwrap();
        let secret = std::fs::read_to_string(home.file("secret")).unwrap().trim().to_string();
        DaemonProc { child, port: info["control_port"].as_u64().unwrap() as u16, secret }
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> i32 {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }

    /// `curl` with `args`; returns the HTTP status code it printed.
    fn curl(&self, args: &[&str], path: &str) -> u16 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(args)
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.secret)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_check_in_order_with_curl() {
    let home = Home::new();
    let d = DaemonProc::start(&home);
    let auth = d.bearer();
    assert_eq!(d.curl(&[], "/v1/status"), 401, "no secret");
    assert_eq!(d.curl(&["-H", "Authorization: Bearer wrong"], "/v1/status"), 401, "wrong secret");
    let almost = format!("{}x", auth);
    assert_eq!(d.curl(&["-H", &almost], "/v1/status"), 401, "secret with a byte more");
    assert_eq!(d.curl(&["-H", &auth, "-H", "Host: evil.example"], "/v1/status"), 403, "rebinding Host");
    let host_other_port = format!("Host: 127.0.0.1:{}", d.port + 1);
    assert_eq!(d.curl(&["-H", &auth, "-H", &host_other_port], "/v1/status"), 403, "Host with another port");
    assert_eq!(d.curl(&["-H", &auth, "-H", "Origin: http://127.0.0.1"], "/v1/status"), 403, "any Origin");
    assert_eq!(d.curl(&["-H", "Host: evil.example"], "/v1/status"), 403, "Host is checked before the secret");
    assert_eq!(d.curl(&["-H", &auth], "/v1/tasks/t-0000000000000000/stop"), 405, "GET on a POST route");
    assert_eq!(d.curl(&["-H", &auth, "-X", "POST"], "/v1/status"), 405, "POST on a GET route");
    assert_eq!(d.curl(&["-H", &auth], "/v1/nothing"), 404);
    let body = home.path.join("big");
    std::fs::write(&body, vec![b'x'; 1 << 20]).unwrap();
    let data = format!("@{}", body.display());
    assert_eq!(d.curl(&["-H", &auth, "--data-binary", &data], "/v1/consent/changed"), 413, "1 MB body");
    assert_eq!(d.curl(&["-H", &auth, "-X", "POST"], "/v1/consent/changed"), 200);
    assert_eq!(d.curl(&["-H", &auth, "-X", "POST"], "/v1/tasks/t-0000000000000000/stop"), 404);
    assert_eq!(d.curl(&["-H", &auth], "/v1/status"), 200, "everything right");
    assert_eq!(d.curl(&["-H", &auth, "-H", &format!("Host: localhost:{}", d.port)], "/v1/tasks"), 200);
    assert_eq!(d.terminate(), 0);
    // Three refusals in one window: one record (rate-limited), none of them with the secret.
    let log = std::fs::read_to_string(home.file("audit.jsonl")).unwrap();
    let unauthorized = log.lines().filter(|l| l.contains("control.unauthorized")).count();
    assert_eq!(unauthorized, 1, "{log}");
    assert!(!log.contains(&d_secret(&home)));
}

fn d_secret(home: &Home) -> String {
    std::fs::read_to_string(home.file("secret")).unwrap().trim().to_string()
}

#[test]
fn status_tasks_stop_and_shutdown_through_the_cli() {
    let home = Home::new();
    home.run(&["tasks"]).code(3).says("no daemon is running");
    home.run(&["stop"]).code(3).says("support daemon");
    home.run(&["watch"]).code(3);
    let d = DaemonProc::start(&home);
    let status = home.status();
    assert_eq!(status["daemon"]["pid"].as_u64(), Some(d.child.id() as u64));
    assert_eq!(status["daemon"]["connected"], false);
    assert_eq!(status["daemon"]["running_tasks"], 0);
    let device_id = status["device_id"].as_str().unwrap().to_string();
    assert!(device_id.starts_with("d-") && device_id.len() == 22, "{device_id}");
    assert_eq!(status["daemon"]["device_id"].as_str(), Some(device_id.as_str()));
    home.run(&["status"]).code(0).says("daemon  running").says(&device_id);
    home.run(&["tasks"]).code(0).says("No task is running");
    home.run(&["tasks", "--json"]).code(0).says(r#"{"tasks":[]}"#);
    home.run(&["stop"]).code(0).says("No task is running");
    home.run(&["stop", "../etc"]).code(2);
    home.run(&["allow", "--tier", "1", "--minutes", "5"]).code(0).says("The daemon was told");
    home.run(&["revoke"]).code(0).says("The daemon was told");

    // A second daemon on the same home refuses, naming the first.
    let second = home.run(&["daemon"]);
    second.code(1).says("already running").says(&d.child.id().to_string());

    let pid = d.child.id();
    assert_eq!(d.terminate(), 0);
    assert!(!home.file("daemon.json").exists());
    let log = std::fs::read_to_string(home.file("audit.jsonl")).unwrap();
    assert!(log.contains("daemon.started") && log.contains("daemon.stopped"), "{log}");
    assert!(log.contains(&format!("pid {pid}")));
    home.run(&["audit", "--verify"]).code(0);
    home.run(&["status"]).code(0).says("daemon  not running");
    home.run(&["tasks"]).code(3);
}

#[test]
fn watch_streams_what_the_daemon_sees() {
    let home = Home::new();
    let d = DaemonProc::start(&home);
    let mut watch = home.cmd(&["watch", "--json"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(r#""kind":"status""#), "{first}");
    home.run(&["allow", "--tier", "2", "--minutes", "5"]).code(0);
    let on = lines.map_while(Result::ok).find(|l| l.contains(r#""kind":"status""#)).unwrap();
    assert!(on.contains(r#""tier":2"#), "{on}");
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(d.terminate(), 0);
}

/// Sends `request` as it is on a fresh TCP connection to the daemon; the status code answered.
fn raw_status(port: u16, request: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn a_second_host_or_an_absolute_target_for_another_authority_is_400() {
    let home = Home::new();
    let d = DaemonProc::start(&home);
    let (p, auth) = (d.port, d.bearer());
    let get = |target: &str, hosts: &[String]| {
        let hosts: String = hosts.iter().map(|h| format!("Host: {h}\r\n")).collect();
        raw_status(p, &format!("GET {target} HTTP/1.1\r\n{hosts}{auth}\r\nConnection: close\r\n\r\n"))
    };
    let ours = format!("127.0.0.1:{p}");
    assert_eq!(get("/v1/status", std::slice::from_ref(&ours)), 200, "the plain request");
    // RFC 9112 §3.2: more than one Host is 400, whichever comes first.
    assert_eq!(get("/v1/status", &[ours.clone(), "evil.example".into()]), 400, "a second Host after ours");
    assert_eq!(get("/v1/status", &["evil.example".into(), ours.clone()]), 400, "a second Host before ours");
    assert_eq!(get("/v1/status", &[ours.clone(), ours.clone()]), 400, "ours twice");
    // §3.2.2: the absolute-form target's authority is the host.
    let evil = format!("http://evil.example:{p}/v1/status");
    assert_eq!(get(&evil, std::slice::from_ref(&ours)), 400, "absolute-form naming another authority");
    let other_port = format!("http://127.0.0.1:{}/v1/status", p + 1);
    assert_eq!(get(&other_port, std::slice::from_ref(&ours)), 400, "absolute-form naming another port");
    let tls = format!("https://127.0.0.1:{p}/v1/status");
    assert_eq!(get(&tls, std::slice::from_ref(&ours)), 400, "absolute-form with another scheme");
    let same = format!("http://127.0.0.1:{p}/v1/status");
    assert_eq!(get(&same, std::slice::from_ref(&ours)), 200, "absolute-form naming the Host itself");
    assert_eq!(get(&same, &["evil.example".into()]), 400, "a Host that differs from the target");
    assert_eq!(d.terminate(), 0);
}

/// `curl` over `control.sock`, as uid `uid` when given; the status code it printed (0: none).
fn curl_socket(home: &Home, uid: Option<u32>, args: &[&str]) -> u16 {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--unix-socket"])
        .arg(home.file("control.sock"))
        .args(args);
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    let out = cmd.output().expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn control_sock_serves_the_same_api_to_the_owner_only() {
    let home = Home::new();
    let d = DaemonProc::start(&home);
    let sock = home.file("control.sock");
    assert_eq!(common::mode(&sock), 0o600);
    assert_eq!(common::mode(&home.path), 0o700, "the state directory keeps everyone else from the socket");
    let url = format!("http://127.0.0.1:{}/v1/status", d.port);
    let auth = d.bearer();
    assert_eq!(curl_socket(&home, None, &["-H", &auth, &url]), 200);
    assert_eq!(curl_socket(&home, None, &[&url]), 401, "the secret is checked there too");
    assert_eq!(curl_socket(&home, None, &["-H", &auth, "-H", "Host: evil.example", &url]), 403, "and the Host");
    if common::is_root() {
        // Another user, even holding the secret, gets no answer at all.
        assert_eq!(curl_socket(&home, Some(65534), &["-H", &auth, &url]), 0, "nobody reached control.sock");
    }
    assert_eq!(d.terminate(), 0);
    assert!(!sock.exists(), "control.sock is removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_reaches_the_daemon_past_a_thousand_trickling_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt as _;

    const ATTACKERS: usize = 1000;
    // Four times the TCP port's 32 slots, established: a TCP client would
    // queue behind them for several header deadlines. The rest are still
    // connecting (the listen backlog is full, so their SYNs are retried):
    // on a loaded machine 320 took longer than a minute, 128 is reached well within it.
    const ENOUGH: usize = 128;
    let home = Home::new();
    let d = tokio::task::block_in_place(|| DaemonProc::start(&home));
    let port = d.port;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let connected = Arc::new(AtomicUsize::new(0));
    let (all_tx, mut all_in) = tokio::sync::mpsc::channel::<()>(1);
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..ATTACKERS {
        let (mut stop, connected, all_tx) = (stop_rx.clone(), connected.clone(), all_tx.clone());
        let last_error = last_error.clone();
        // Each holds a connection whose headers never end, and opens another
        // as soon as the daemon closes it, until told to stop.
        attackers.spawn(async move {
            let mut first = true;
            while !*stop.borrow() {
                let mut s = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => s,
                    Err(e) => {
                        // E.g. no ephemeral port free on a busy machine: retry, without spinning.
                        *last_error.lock().unwrap() = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if std::mem::take(&mut first) && connected.fetch_add(1, Ordering::SeqCst) + 1 == ENOUGH {
                    let _ = all_tx.send(()).await;
                }
                if s.write_all(b"GET /v1/status HTTP/1.1\r\n").await.is_err() {
                    continue;
                }
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {
                            if s.write_all(b"X-Slow: y\r\n").await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
    let enough = tokio::time::timeout(Duration::from_secs(60), all_in.recv()).await;
    let (n, error) = (connected.load(Ordering::SeqCst), last_error.lock().unwrap().clone());
    assert!(enough.is_ok(), "only {n} connections opened; the last connect error: {error:?}");
    let timed = |args: &'static [&'static str]| {
        tokio::task::block_in_place(|| {
            let began = Instant::now();
            let run = home.run(args);
            (run, began.elapsed())
        })
    };
    let (status, took) = timed(&["status", "--json"]);
    status.code(0);
    assert!(!status.json()["daemon"].is_null(), "status found the daemon: {}", status.stdout);
    assert!(took < Duration::from_secs(2), "status took {took:?}");
    let status_took = took;
    let (stop, took) = timed(&["stop", "--all"]);
    stop.code(0);
    assert!(took < Duration::from_secs(2), "stop --all took {took:?}");
    eprintln!("under {} connections: status {status_took:?}, stop --all {took:?}", connected.load(Ordering::SeqCst));
    stop_tx.send(true).unwrap();
    while attackers.join_next().await.is_some() {}

    // A connection whose headers trickle is closed at the header deadline.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let began = Instant::now();
    s.write_all(b"GET /v1/status HTTP/1.1\r\n").await.unwrap();
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-Slow: y\r\n").await.is_err() || began.elapsed() > Duration::from_secs(10) {
            break began.elapsed();
        }
    };
    assert!(closed < Duration::from_secs(4), "a trickling connection stayed {closed:?}");
    eprintln!("a trickling connection was closed after {closed:?}");
    tokio::task::block_in_place(|| assert_eq!(d.terminate(), 0));
}
