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
