//! Interactive shell figures (issue 16), each beside its baseline in the
//! same run, everything on 127.0.0.1 and thrown away at the end:
//!
//! 1. Keystroke echo: one byte typed into `support operator shell DEVICE`
//!    (the real CLI on a pty of the bench's own, in raw mode as a person
//!    runs it) until its echo is read back from that pty: operator →
//!    relay → daemon → the session's pty (the device's line discipline
//!    echoes it; the program is `/bin/sh`) → relay → operator. Beside it
//!    the same through `ssh -S CTL -tt 127.0.0.1 /bin/sh` over an open
//!    OpenSSH ControlMaster to an sshd started here (root, throwaway host
//!    and user keys). SUPPORT_BENCH_KEYS (default 200) keystrokes each,
//!    taking turns in batches of 20; p50/p99 in ms.
//! 2. Recording's cost on throughput: `cat` of a 50 MiB text file in the
//!    recorded interactive session (time from the Enter key to the marker
//!    echoed after it, on the operator's pty), MiB/s. There is no switch to
//!    run a session unrecorded (recording every session is the promise, and
//!    none was added for a bench), so the recording's own cost is measured
//!    beside it in the same run: the library's `support::recording::Recorder`
//!    (what the session's recorder thread runs) fed the same byte stream
//!    (the file as the pty writes it, `\n` as `\r\n`, in the daemon's
//!    `exec::CHUNK_BYTES` reads) into a file in the same kind of directory,
//!    fsync at the end included, MiB/s of the file. From the two, the session
//!    with that work taken out of its per-MiB time, `1 / (1/with - 1/recorder)`:
//!    an upper bound on "without", as if the recorder's work were all on the
//!    session's path (it runs on a thread of its own, beside it). Beside
//!    them, as before, the one-shot `support operator shell DEVICE -- cat
//!    FILE` (tier 4, same relay and daemon, a pipe not a pty, NOT recorded,
//!    whole process timed, connection included), and the same `cat` in the
//!    ssh session.
//!
//! Reproduce: `nice -n 19 cargo bench --bench shell` (as root, for sshd;
//! without sshd the support figures print alone, with the reason).

mod common;
#[path = "../tests/common/operator_pty.rs"]
mod operator_pty;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Rig, owner, percentile};
use operator_pty::OnPty;

const PATIENCE: Duration = Duration::from_secs(120);
const FILE_MIB: usize = 50;

/// The keystroke and `cat` figures, on any shell on a pty.
trait Figures {
    /// One byte typed until its echo is back; the time.
    fn echo(&mut self, c: u8) -> Duration;
    /// `cat FILE` typed, timed from Enter to the marker after it (MiB/s).
    fn cat(&mut self, file: &Path, n: usize) -> f64;
    /// `exit` typed; killed if still there after 30 s.
    fn exit(&mut self);
}

impl Figures for OnPty {
    fn echo(&mut self, c: u8) -> Duration {
        let from = self.len();
        let t0 = Instant::now();
        self.type_text([c]);
        self.expect_after(from, [c]);
        t0.elapsed()
    }

    fn cat(&mut self, file: &Path, n: usize) -> f64 {
        let line = format!("cat {} && echo cat-done-$((40+{n}))", file.display());
        let from = self.len();
        self.type_text(&line);
        let echoed = self.expect_after(from, &line);
        let t0 = Instant::now();
        self.type_text("\r");
        self.expect_after(echoed, format!("cat-done-{}", 40 + n));
        mib_per_s(t0.elapsed())
    }

    fn exit(&mut self) {
        self.type_text("\x15exit\r");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// `cmd` on an 80x24 pty of the bench's own, waiting up to [`PATIENCE`].
fn on_pty(cmd: &Command) -> OnPty {
    OnPty::spawn(cmd, 80, 24).with_patience(PATIENCE)
}

fn mib_per_s(d: Duration) -> f64 {
    FILE_MIB as f64 / d.as_secs_f64()
}

/// The OpenSSH side: an sshd on a free loopback port and a ControlMaster to it.
struct Sshd {
    sshd: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Sshd {
    /// Started, or why not (the reason is printed beside the figures).
    fn start(dir: &Path) -> Result<Sshd, String> {
        let sshd_bin = ["/usr/sbin/sshd", "/usr/bin/sshd"].into_iter().find(|p| Path::new(p).exists());
        let sshd_bin = sshd_bin.ok_or("no sshd (apt-get install -y openssh-server)")?;
        if !nix::unistd::Uid::effective().is_root() {
            return Err("not root: sshd needs root to start a session for a user".into());
        }
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        for key in ["host_key", "user_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .output()
                .map_err(|e| format!("ssh-keygen: {e}"))?;
            if !out.status.success() {
                return Err(format!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nPidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\n"
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let sshd = Command::new(sshd_bin)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .map_err(|e| format!("{sshd_bin}: {e}"))?;
        let me = Sshd { sshd, dir: dir.into(), port };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("sshd did not listen: {}", me.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new("ssh")
            .args(me.options())
            .args(["-M", "-o", "ControlPersist=yes", "-f", "-N", "127.0.0.1"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ssh: {e}"))?;
        if !out.status.success() {
            return Err(format!("no ControlMaster: {}; sshd: {}", String::from_utf8_lossy(&out.stderr), me.log()));
        }
        Ok(me)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            &format!("UserKnownHostsFile={d}/known_hosts"),
            "-o",
            &format!("IdentityFile={d}/user_key"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &self.port.to_string(),
            "-S",
            &format!("{d}/ctl"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `ssh -S CTL -tt 127.0.0.1 /bin/sh` on a pty, its prompt seen.
    fn session(&self) -> OnPty {
        let mut cmd = Command::new("ssh");
        cmd.args(self.options());
        cmd.args(["-tt", "127.0.0.1", "/bin/sh"]);
        cmd.current_dir(&self.dir);
        let mut pty = on_pty(&cmd);
        ready(&mut pty);
        pty
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = Command::new("ssh").args(self.options()).args(["-O", "exit", "127.0.0.1"]).output();
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// Waits until the shell on `pty` answers a command (its start is over).
fn ready(pty: &mut OnPty) {
    pty.type_text("echo ready-$((6*7))\r");
    pty.expect("ready-42");
}

/// The operator environment for `support operator ...` against `rig`.
fn operator_env(rig: &Rig) -> [(&'static str, PathBuf); 3] {
    [
        ("SUPPORT_OPERATOR_RELAY", format!("wss://{}", rig.relay.addr).into()),
        ("SUPPORT_OPERATOR_RELAY_CA", rig.relay.state.join("cert.pem")),
        ("SUPPORT_OPERATOR_KEY", rig.op_key.clone()),
    ]
}

/// `support operator shell DEVICE` on a pty, the session accepted and its shell answering.
fn support_session(rig: &Rig) -> OnPty {
    let mut cmd = Command::new(BIN);
    cmd.args(["operator", "shell", &rig.device_id]).envs(operator_env(rig)).env("NO_COLOR", "1");
    let mut pty = on_pty(&cmd);
    pty.expect("accepted as task");
    ready(&mut pty);
    pty
}

/// The one-shot `support operator shell DEVICE -- cat FILE` (unrecorded), MiB/s.
fn one_shot_cat(rig: &Rig, file: &Path) -> f64 {
    let mut cmd = Command::new(BIN);
    cmd.args(["operator", "shell", &rig.device_id, "--", "cat"]).arg(file);
    cmd.envs(operator_env(rig)).stdout(Stdio::piped()).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0usize;
    while let Ok(k @ 1..) = out.read(&mut buf) {
        n += k;
    }
    let status = child.wait().unwrap();
    let d = t0.elapsed();
    assert!(status.success() && n == FILE_MIB << 20, "one-shot cat: {status}, {n} bytes");
    mib_per_s(d)
}

/// The recorder alone on `file`'s bytes as a session's pty gives them: MiB/s (of the file).
fn recorder_alone(file: &Path, dir: &Path, n: usize) -> f64 {
    let pty_bytes: Vec<u8> = std::fs::read(file)
        .unwrap()
        .into_iter()
        .flat_map(|b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] })
        .collect();
    let header = support::recording::Header {
        width: 80,
        height: 24,
        timestamp: 0,
        title: "bench".into(),
        env: Default::default(),
    };
    let t0 = Instant::now();
    let mut rec = support::recording::Recorder::create(dir, &format!("t-bench-{n}"), &header, u64::MAX).unwrap();
    for chunk in pty_bytes.chunks(support::daemon::exec::CHUNK_BYTES) {
        rec.output(t0.elapsed(), chunk).unwrap();
    }
    let done = rec.finish().unwrap();
    let d = t0.elapsed();
    std::fs::remove_file(done.path).unwrap();
    mib_per_s(d)
}

/// A 50 MiB text file of 80-column lines.
fn text_file(dir: &Path) -> PathBuf {
    let line: Vec<u8> = (0..79u8).map(|i| b'!' + (i % 90)).chain([b'\n']).collect();
    let mut all = Vec::with_capacity(FILE_MIB << 20);
    while all.len() < FILE_MIB << 20 {
        all.extend_from_slice(&line);
    }
    all.truncate(FILE_MIB << 20);
    let path = dir.join("fifty.txt");
    std::fs::write(&path, all).unwrap();
    path
}

fn summary(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!("  {what:<44} p50 {:6.2} ms  p99 {:6.2} ms  (n = {})", percentile(&v, 0.5), percentile(&v, 0.99), v.len());
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("owner");
    std::fs::create_dir_all(home.join("policy.d")).unwrap();
    // Room for the 50 MiB cat: the recording (JSON-escaped, so larger than
    // the output) and the one-shot's output cap.
    std::fs::write(
        home.join("policy.d/shell.toml"),
        "[shell]\nprogram = \"/bin/sh\"\nmax_recording_bytes = 268435456\nmax_output_bytes = 67108864\n",
    )
    .unwrap();
    let rig = Rig::start(BIN, dir.path());
    owner(BIN, &rig.home, &["allow", "--tier", "4", "--minutes", "60", "--yes"]);
    let keys: usize = std::env::var("SUPPORT_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);

    let ssh_dir = dir.path().join("ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let sshd = Sshd::start(&ssh_dir);
    let mut support = support_session(&rig);
    let mut ssh = sshd.as_ref().ok().map(Sshd::session);

    println!("keystroke echo (one byte typed -> its echo read back on the typing pty), {keys} each:");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for batch in 0..keys.div_ceil(20) {
        let n = 20.min(keys - batch * 20);
        for pty in [Some(&mut support), ssh.as_mut()].into_iter().flatten() {
            pty.type_text(": ");
        }
        for i in 0..n {
            let c = b'a' + (i % 26) as u8;
            ours.push(support.echo(c));
            if let Some(ssh) = ssh.as_mut() {
                theirs.push(ssh.echo(c));
            }
        }
        for pty in [Some(&mut support), ssh.as_mut()].into_iter().flatten() {
            let from = pty.len();
            pty.type_text(format!("\recho batch-{batch}-$((1+1))\r"));
            pty.expect_after(from, format!("batch-{batch}-2"));
        }
    }
    summary("support operator shell (relay, recorded)", ours);
    match &sshd {
        Ok(_) => summary("ssh -S CTL -tt (OpenSSH ControlMaster)", theirs),
        Err(why) => println!("  OpenSSH baseline not measured: {why}"),
    }

    let file = text_file(dir.path());
    println!("`cat` of a {FILE_MIB} MiB text file (80-column lines), MiB/s, 3 runs each, taking turns:");
    let (mut recorded, mut one_shot, mut over_ssh) = (Vec::new(), Vec::new(), Vec::new());
    let mut recorder = Vec::new();
    let recordings = dir.path().join("recorder-alone");
    std::fs::create_dir_all(&recordings).unwrap();
    for n in 0..3 {
        recorded.push(support.cat(&file, n));
        recorder.push(recorder_alone(&file, &recordings, n));
        one_shot.push(one_shot_cat(&rig, &file));
        if let Some(ssh) = ssh.as_mut() {
            over_ssh.push(ssh.cat(&file, n));
        }
    }
    let show = |what: &str, v: &[f64]| {
        let runs: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        let median = {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        };
        println!("  {what:<62} median {median:7.1}  ({})", runs.join(", "));
        median
    };
    let with = show("interactive session, recorded (pty, operator's pty)", &recorded);
    let alone = show("the recorder alone on the same bytes (Recorder, fsync'd)", &recorder);
    let without = show("one-shot `operator shell DEV -- cat`, not recorded (pipe)", &one_shot);
    if !over_ssh.is_empty() {
        show("ssh -S CTL -tt session (pty)", &over_ssh);
    }
    let at_most = match 1.0 / with - 1.0 / alone {
        left if left > 0.0 => format!("at most {:.1} MiB/s", 1.0 / left),
        _ => "not bounded (the recorder alone was slower than the whole session)".into(),
    };
    println!(
        "  the recording's share of the session's time per MiB: {:.0} %; the session without it, {at_most}",
        100.0 * with / alone
    );
    println!("  recorded session / unrecorded one-shot: {:.2}", with / without);
    support.exit();
    if let Some(mut ssh) = ssh {
        ssh.exit();
    }
    let recordings = owner(BIN, &rig.home, &["recordings"]);
    println!("recordings on the device after the run:\n{}", recordings.trim_end());
}
