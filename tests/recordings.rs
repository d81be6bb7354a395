//! `support recordings` and `support play` through the real binary, on
//! recordings written by the daemon's own writer; and `asciinema` reading
//! the same files, where it is installed.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Home, Run};
use support::recording::{self, Header, Recorder};

/// What the session's terminal showed, in the chunks a pty might hand
/// over: a character split between two chunks, escape sequences, CR LF.
fn chunks() -> Vec<(u64, Vec<u8>)> {
    vec![
        (10, b"\x1b[?2004h$ ".to_vec()),
        (400, b"echo d\xc3".to_vec()),
        (420, b"\xa9j\xc3\xa0 \xe2\x82".to_vec()),
        (440, b"\xac \xf0\x9f\x98\x80\r\n".to_vec()),
        (500, b"\x1b[1;32mok\x1b[0m\r\n$ ".to_vec()),
    ]
}

fn sent() -> Vec<u8> {
    chunks().into_iter().flat_map(|(_, c)| c).collect()
}

fn record(h: &Home, id: &str) -> recording::Finished {
    let env = BTreeMap::from([
        ("SHELL".to_string(), "/bin/sh".to_string()),
        ("TERM".to_string(), "xterm-256color".to_string()),
    ]);
    let header = Header { width: 80, height: 24, timestamp: 1_764_600_000, title: "alice on laptop".into(), env };
    let mut rec = Recorder::create(&recording::dir(&h.path), id, &header, 1 << 20).unwrap();
    rec.resize(Duration::from_millis(5), 100, 30).unwrap();
    for (ms, chunk) in chunks() {
        rec.output(Duration::from_millis(ms), &chunk).unwrap();
        if ms == 400 {
            rec.input(Duration::from_millis(ms + 5), b"echo d\xc3\xa9j\xc3\xa0\r").unwrap();
        }
    }
    rec.finish().unwrap()
}

/// Runs `support play ARGS`, stdout as bytes.
fn play(h: &Home, args: &[&str]) -> (Vec<u8>, Run) {
    let out = h.cmd(&[&["play"], args].concat()).output().unwrap();
    let stdout = out.stdout.clone();
    (stdout, Run::from(out))
}

#[test]
fn play_replays_the_same_bytes_as_recorded_at_its_real_pace() {
    let h = Home::new();
    let done = record(&h, "t-0001");

    let started = Instant::now();
    let (stdout, run) = play(&h, &["t-0001"]);
    let took = started.elapsed();
    run.code(0);
    assert_eq!(stdout, sent(), "{}", String::from_utf8_lossy(&stdout));
    // The last output is 500 ms after the start: real pace waits that long.
    assert!(took >= Duration::from_millis(490), "played in {took:?}");

    // Faster, and the same bytes: only the output, never what was typed or the resize.
    let started = Instant::now();
    let (fast, run) = play(&h, &["t-0001", "--speed", "100"]);
    run.code(0);
    assert_eq!(fast, sent());
    assert!(started.elapsed() < took, "--speed 100 took {:?}, real pace {took:?}", started.elapsed());

    let list = h.run(&["recordings", "--json"]).code(0).stdout.clone();
    let rows: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["id"], "t-0001");
    assert_eq!(rows[0]["started"], "2025-12-01T14:40:00Z");
    assert_eq!(rows[0]["title"], "alice on laptop");
    assert_eq!(rows[0]["duration_s"], 0.5);
    assert_eq!(rows[0]["bytes"], done.bytes);
    assert_eq!(rows[0]["sha256"], done.sha256.as_str());
    h.run(&["recordings"]).code(0).says("t-0001").says("alice on laptop").says(&done.sha256);
}

#[test]
fn a_recording_changed_after_its_session_no_longer_matches_its_record() {
    let h = Home::new();
    let done = record(&h, "t-rec");
    record(&h, "t-unrecorded");
    let mut finished = support::Record::new(support::Event::ActionFinished);
    finished.task_id = Some("t-rec".into());
    finished.recording_sha256 = Some(done.sha256.clone());
    support::AuditLog::open(&support::Paths::under(h.path.clone())).unwrap().append(finished).unwrap();
    let listed = |h: &Home| -> BTreeMap<String, serde_json::Value> {
        let out = h.run(&["recordings", "--json"]).code(0).stdout.clone();
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["id"].as_str().unwrap().to_string(), v))
            .collect()
    };
    let rows = listed(&h);
    assert_eq!(rows["t-rec"]["matches_record"], true, "{rows:?}");
    assert_eq!(rows["t-rec"]["recorded_sha256"], done.sha256.as_str());
    assert!(rows["t-unrecorded"]["matches_record"].is_null(), "{rows:?}");
    h.run(&["recordings"]).code(0).says("matches");

    // Someone rewrites what the shell showed, keeping the file well-formed.
    let text = std::fs::read_to_string(&done.path).unwrap().replace("ok", "no");
    std::fs::write(&done.path, text).unwrap();
    let rows = listed(&h);
    assert_eq!(rows["t-rec"]["matches_record"], false, "{rows:?}");
    assert_ne!(rows["t-rec"]["sha256"], rows["t-rec"]["recorded_sha256"]);
    h.run(&["recordings"]).code(0).says("ALTERED");
}

#[test]
fn a_bad_an_oversized_or_a_linked_file_plays_nothing_and_exits_1() {
    let h = Home::new();
    record(&h, "t-good");
    let dir = recording::dir(&h.path);
    let put = |id: &str, text: &[u8]| -> PathBuf {
        let p = dir.join(format!("{id}.cast"));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    };
    // Damaged after output that would have played: nothing plays.
    put("t-bad", b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1, \"o\", \"secret\"]\n[0.2, \"o\", 7]\n");
    let (stdout, run) = play(&h, &["t-bad", "--speed", "1000"]);
    run.code(1).says("is not an asciicast v2 recording: line 3");
    assert!(stdout.is_empty(), "{}", String::from_utf8_lossy(&stdout));

    let long =
        [b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1, \"o\", \"".as_slice(), &vec![b'a'; 2 << 20], b"\"]\n"]
            .concat();
    put("t-long", &long);
    play(&h, &["t-long"]).1.code(1).says("line 2: longer than 1048576 bytes");

    let big = put("t-big", b"{\"version\":2,\"width\":80,\"height\":24}\n");
    std::fs::File::options().write(true).open(&big).unwrap().set_len(recording::MAX_FILE_BYTES + 1).unwrap();
    play(&h, &["t-big"]).1.code(1).says("is larger than 1073741824 bytes");

    std::os::unix::fs::symlink(dir.join("t-good.cast"), dir.join("t-link.cast")).unwrap();
    play(&h, &["t-link"]).1.code(1).says("symbolic link");

    // The listing goes on past the damaged ones and names them.
    let list = h.run(&["recordings", "--json"]).code(0).stdout.clone();
    let rows: BTreeMap<String, serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["id"].as_str().unwrap().to_string(), v))
        .collect();
    assert!(rows["t-good"]["sha256"].is_string());
    assert!(rows["t-bad"]["error"].as_str().unwrap().contains("line 3"), "{list}");
    assert!(rows["t-big"]["error"].as_str().unwrap().contains("larger than"), "{list}");
}

#[test]
fn ids_that_are_not_one_safe_segment_and_bad_speeds_exit_2() {
    let h = Home::new();
    record(&h, "t-1");
    std::fs::write(h.path.join("outside.cast"), "{\"version\":2,\"width\":80,\"height\":24}\n").unwrap();
    for id in ["../outside", "recordings/../../outside", "/etc/passwd", ".t-1", "t-1.cast", ""] {
        play(&h, &[id]).1.code(2).says("is not a recording id");
    }
    play(&h, &["t-none"]).1.code(2).says("there is no recording").says("recordings` lists them");
    for speed in ["0", "-1", "NaN", "inf", "5000"] {
        play(&h, &["t-1", &format!("--speed={speed}")]).1.code(2).says("--speed must be 0.01 to 1000");
    }
    play(&h, &["t-1", "--idle-limit=-1"]).1.code(2).says("--idle-limit");
}

#[test]
fn asciinema_plays_our_files_to_the_same_bytes() {
    if Command::new("asciinema").arg("--version").output().is_err() {
        eprintln!("skipped: asciinema is not installed (apt-get install asciinema; .ci/run installs it)");
        return;
    }
    let h = Home::new();
    let done = record(&h, "t-cat");
    // `asciinema cat` needs /dev/tty (none in CI); `play` with stdin not a
    // terminal plays straight through, header and every event read.
    let out = Command::new("asciinema")
        .args(["play", "--speed", "100", "--idle-time-limit", "0.1"])
        .arg(&done.path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "asciinema play: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, sent(), "{:?}", String::from_utf8_lossy(&out.stdout));
}
