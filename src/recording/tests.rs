use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::time::{Duration, SystemTime};

use super::*;

fn header() -> Header {
    let env = [("SHELL", "/bin/bash"), ("TERM", "xterm-256color")].map(|(k, v)| (k.to_string(), v.to_string()));
    Header { width: 80, height: 24, timestamp: 1_764_600_000, title: "alice on laptop".into(), env: env.into() }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Every event of the file, through the bounded reader.
fn events(path: &Path) -> Vec<Event> {
    let mut r = Reader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_event().unwrap() {
        out.push(e);
    }
    out
}

fn output_of(events: &[Event]) -> String {
    events.iter().filter(|e| e.code == "o").map(|e| e.data.as_str()).collect()
}

#[test]
fn a_session_is_written_as_asciicast_v2_with_modes_and_digest() {
    let home = tempfile::tempdir().unwrap();
    let dir = dir(home.path());
    let mut rec = Recorder::create(&dir, "t-00ab", &header(), 1 << 20).unwrap();
    rec.output(ms(5), b"$ ").unwrap();
    rec.input(ms(1200), b"ls\r").unwrap();
    rec.output(ms(1250), b"ls\r\n\x1b[1;34mdir\x1b[0m\r\n").unwrap();
    rec.resize(ms(2000), 100, 30).unwrap();
    let done = rec.finish().unwrap();

    assert_eq!(done.path, dir.join("t-00ab.cast"));
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(fs::metadata(&done.path).unwrap().mode() & 0o777, 0o600);
    let bytes = fs::read(&done.path).unwrap();
    assert_eq!(done.bytes, bytes.len() as u64);
    assert_eq!(done.sha256, sha256(&bytes));

    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let head: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        head,
        serde_json::json!({"version": 2, "width": 80, "height": 24, "timestamp": 1_764_600_000,
            "title": "alice on laptop", "env": {"SHELL": "/bin/bash", "TERM": "xterm-256color"}})
    );
    assert_eq!(lines[1], r#"[0.005000, "o", "$ "]"#);
    assert_eq!(lines[2], r#"[1.200000, "i", "ls\r"]"#);
    assert_eq!(lines[3], r#"[1.250000, "o", "ls\r\n\u001b[1;34mdir\u001b[0m\r\n"]"#);
    assert_eq!(lines[4], r#"[2.000000, "r", "100x30"]"#);
    assert_eq!(lines.len(), 5);

    let mut r = Reader::open(&done.path).unwrap();
    assert_eq!((r.header().width, r.header().title.as_deref()), (80, Some("alice on laptop")));
    while r.next_event().unwrap().is_some() {}
    assert_eq!(r.sha256(), Some(done.sha256));
}

#[test]
fn a_character_split_between_two_chunks_is_recorded_whole() {
    let home = tempfile::tempdir().unwrap();
    let mut rec = Recorder::create(home.path(), "t-1", &header(), 1 << 20).unwrap();
    // "€" is E2 82 AC; "😀" is F0 9F 98 80.
    rec.output(ms(1), b"price \xe2\x82").unwrap();
    rec.output(ms(2), b"\xac \xf0").unwrap();
    rec.output(ms(3), b"\x9f\x98").unwrap();
    rec.output(ms(4), b"\x80!").unwrap();
    rec.output(ms(5), b"bad \xff end \xe2").unwrap();
    let done = rec.finish().unwrap();
    let ev = events(&done.path);
    assert_eq!(output_of(&ev), "price € 😀!bad \u{FFFD} end \u{FFFD}");
    // The piece that was only the start of a character waited: no event for it.
    assert_eq!(
        ev.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["price ", "€ ", "😀!", "bad \u{FFFD} end ", "\u{FFFD}"]
    );
}

#[test]
fn output_that_is_valid_utf8_replays_to_the_same_bytes_in_any_chunks() {
    let home = tempfile::tempdir().unwrap();
    let sent = "été \x1b[31m红色\x1b[0m 🎉\r\n".repeat(50);
    let mut rec = Recorder::create(home.path(), "t-2", &header(), 1 << 20).unwrap();
    for (i, chunk) in sent.as_bytes().chunks(7).enumerate() {
        rec.output(ms(i as u64), chunk).unwrap();
    }
    let done = rec.finish().unwrap();
    assert_eq!(output_of(&events(&done.path)).as_bytes(), sent.as_bytes());
}

#[test]
fn a_large_chunk_is_split_into_events_the_reader_accepts() {
    let home = tempfile::tempdir().unwrap();
    let sent = vec![0x1bu8; 3 * MAX_CHUNK + 5];
    let mut rec = Recorder::create(home.path(), "t-3", &header(), 64 << 20).unwrap();
    rec.output(ms(1), &sent).unwrap();
    let done = rec.finish().unwrap();
    let ev = events(&done.path);
    assert_eq!(ev.len(), 4);
    assert_eq!(output_of(&ev).as_bytes(), &sent[..]);
}

#[test]
fn the_cap_stops_the_recording_with_whole_events_and_a_true_digest() {
    let home = tempfile::tempdir().unwrap();
    let cap = 400;
    let mut rec = Recorder::create(home.path(), "t-cap", &header(), cap).unwrap();
    let mut n = 0;
    let err = loop {
        match rec.output(ms(n), b"0123456789") {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "the cap was never reached");
    };
    assert!(matches!(err, RecordError::CapReached { max_bytes: 400 }), "{err:?}");
    assert!(err.to_string().contains("400 bytes"), "{err}");
    // Once reached, nothing more goes in, of any kind.
    assert!(matches!(rec.input(ms(n), b"x"), Err(RecordError::CapReached { .. })));
    assert!(matches!(rec.resize(ms(n), 1, 1), Err(RecordError::CapReached { .. })));
    let done = rec.finish().unwrap();
    let bytes = fs::read(&done.path).unwrap();
    assert!(bytes.len() as u64 <= cap && bytes.len() as u64 > cap - 40, "{} bytes", bytes.len());
    assert_eq!(done.sha256, sha256(&bytes));
    assert_eq!(output_of(&events(&done.path)), "0123456789".repeat(n as usize));
}

#[test]
fn a_header_over_the_cap_is_refused() {
    let home = tempfile::tempdir().unwrap();
    assert!(matches!(Recorder::create(home.path(), "t-4", &header(), 10), Err(RecordError::CapReached { .. })));
    assert!(!home.path().join("t-4.cast").exists(), "the refused recording left a file");
}

#[test]
fn a_link_planted_at_the_path_is_refused_and_not_followed() {
    let home = tempfile::tempdir().unwrap();
    let dir = dir(home.path());
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let target = home.path().join("victim");
    fs::write(&target, "keep me").unwrap();
    symlink(&target, dir.join("t-5.cast")).unwrap();
    let err = Recorder::create(&dir, "t-5", &header(), 1 << 20).unwrap_err();
    assert!(matches!(&err, RecordError::Io(e) if e.kind() == io::ErrorKind::AlreadyExists), "{err:?}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");
    // A dangling link too (O_EXCL refuses any name that exists).
    symlink(home.path().join("nowhere"), dir.join("t-6.cast")).unwrap();
    assert!(Recorder::create(&dir, "t-6", &header(), 1 << 20).is_err());
    assert!(!home.path().join("nowhere").exists());
    // And a file already there is never appended to.
    fs::write(dir.join("t-7.cast"), "old").unwrap();
    assert!(Recorder::create(&dir, "t-7", &header(), 1 << 20).is_err());
    assert_eq!(fs::read_to_string(dir.join("t-7.cast")).unwrap(), "old");
}

#[test]
fn a_directory_that_is_a_link_or_open_to_others_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = home.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let dir = dir(home.path());
    symlink(&elsewhere, &dir).unwrap();
    assert!(Recorder::create(&dir, "t-8", &header(), 1 << 20).is_err());
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    fs::remove_file(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Recorder::create(&dir, "t-8", &header(), 1 << 20).unwrap_err();
    assert!(err.to_string().contains("chmod 700"), "{err}");
}

#[test]
fn ids_that_are_not_one_safe_segment_are_refused() {
    let home = tempfile::tempdir().unwrap();
    for id in ["", "../t-1", "a/b", ".hidden", "t-1.cast", &"a".repeat(65), "t 1", "t-é"] {
        assert!(!valid_id(id), "{id:?}");
        let err = Recorder::create(home.path(), id, &header(), 1 << 20).unwrap_err();
        assert!(matches!(&err, RecordError::Io(e) if e.kind() == io::ErrorKind::InvalidInput), "{id:?}: {err:?}");
    }
    assert_eq!(fs::read_dir(home.path()).unwrap().count(), 0);
    assert!(valid_id("t-0123abcd") && valid_id(&"a".repeat(64)));
}

fn age(path: &Path, days: u64) {
    let f = fs::File::options().append(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(days * 86_400)).unwrap();
}

#[test]
fn prune_removes_old_recordings_only_and_never_one_being_written() {
    let home = tempfile::tempdir().unwrap();
    let dir = dir(home.path());
    for id in ["t-old", "t-new"] {
        Recorder::create(&dir, id, &header(), 1 << 20).unwrap().finish().unwrap();
    }
    let live = Recorder::create(&dir, "t-live", &header(), 1 << 20).unwrap();
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    let outside = home.path().join("outside.cast");
    fs::write(&outside, "x").unwrap();
    symlink(&outside, dir.join("t-link.cast")).unwrap();
    for p in [dir.join("t-old.cast"), dir.join("t-live.cast"), dir.join("notes.txt"), outside.clone()] {
        age(&p, 31);
    }
    age(&dir.join("t-new.cast"), 29);

    assert_eq!(prune(&dir, 30, SystemTime::now()).unwrap(), 1);
    let mut left: Vec<String> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "t-link.cast", "t-live.cast", "t-new.cast"]);
    assert!(outside.exists());
    // Finished, the old live one goes at the next prune.
    live.finish().unwrap();
    age(&dir.join("t-live.cast"), 31);
    assert_eq!(prune(&dir, 30, SystemTime::now()).unwrap(), 1);
    assert_eq!(prune(&home.path().join("missing"), 30, SystemTime::now()).unwrap(), 0);
}

fn write_cast(dir: &Path, id: &str, text: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{id}.cast"));
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn the_reader_refuses_what_is_not_asciicast_v2_with_the_line() {
    let home = tempfile::tempdir().unwrap();
    let ok = "{\"version\":2,\"width\":80,\"height\":24}\n";
    let cases: [(&str, String, &str); 7] = [
        ("empty", String::new(), "line 1: the file is empty"),
        ("not-json", "hello\n".into(), "line 1: not a header object"),
        ("v3", "{\"version\":3,\"term\":{\"cols\":80,\"rows\":24}}\n".into(), "line 1:"),
        ("zero", "{\"version\":2,\"width\":0,\"height\":24}\n".into(), "width and height"),
        ("event", format!("{ok}[1.0, \"o\", \"a\"]\n[2.0, \"o\"]\n"), "line 3: not an event"),
        ("negative", format!("{ok}[-1.0, \"o\", \"a\"]\n"), "line 2: time -1 is not a time"),
        ("long", format!("{ok}[1.0, \"o\", \"{}\"]\n", "a".repeat(MAX_LINE_BYTES as usize)), "line 2: longer than"),
    ];
    for (id, text, want) in cases {
        let p = write_cast(home.path(), id, text.as_bytes());
        let err = (|| {
            let mut r = Reader::open(&p)?;
            while r.next_event()?.is_some() {}
            Ok::<_, ReadError>(())
        })()
        .unwrap_err();
        assert!(matches!(err, ReadError::Bad { .. }), "{id}: {err:?}");
        assert!(err.to_string().contains(want), "{id}: {err}");
    }
}

#[test]
fn the_reader_refuses_an_oversized_file_a_link_and_a_file_open_to_others() {
    let home = tempfile::tempdir().unwrap();
    let big = write_cast(home.path(), "big", b"{\"version\":2,\"width\":80,\"height\":24}\n");
    // Sparse: the size is checked before a byte is read.
    fs::File::options().write(true).open(&big).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
    assert!(matches!(Reader::open(&big), Err(ReadError::TooLarge { .. })));
    let good = write_cast(home.path(), "good", b"{\"version\":2,\"width\":80,\"height\":24}\n");
    symlink(&good, home.path().join("link.cast")).unwrap();
    assert!(matches!(Reader::open(&home.path().join("link.cast")), Err(ReadError::File(_))));
    fs::set_permissions(&good, fs::Permissions::from_mode(0o622)).unwrap();
    assert!(matches!(Reader::open(&good), Err(ReadError::File(_))));
    assert!(matches!(Reader::open(&home.path().join("none.cast")), Err(ReadError::NotFound(_))));
}

#[test]
fn list_summarises_each_recording_and_names_a_damaged_one() {
    let home = tempfile::tempdir().unwrap();
    let dir = dir(home.path());
    let mut rec = Recorder::create(&dir, "t-a", &header(), 1 << 20).unwrap();
    rec.output(ms(2500), b"hi").unwrap();
    let done = rec.finish().unwrap();
    write_cast(&dir, "t-b", b"{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1764700000}\n[1.0, \"o\"\n");
    fs::write(dir.join("other.txt"), "x").unwrap();
    let got = list(&dir).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, "t-a");
    assert_eq!(got[0].started.as_deref(), Some("2025-12-01T14:40:00Z"));
    assert_eq!(got[0].title.as_deref(), Some("alice on laptop"));
    assert_eq!(got[0].duration_s, Some(2.5));
    assert_eq!((got[0].bytes, got[0].sha256.as_deref()), (done.bytes, Some(done.sha256.as_str())));
    assert_eq!(got[1].id, "t-b");
    assert!(got[1].error.as_deref().unwrap().contains("line 2"), "{:?}", got[1]);
    assert!(list(&home.path().join("missing")).unwrap().is_empty());
}
