//! The CLI for scripts and shells (issue 17): `--json` on the commands
//! that change things, errors as one JSON object on stderr with the exit
//! code they have without `--json`, `support version`, and completions
//! and man pages made from the command line's definitions, covering every
//! command. The real binary in temporary homes.

mod common;
#[path = "common/owner.rs"]
mod owner;

use std::collections::BTreeSet;

use clap::CommandFactory as _;
use common::{Home, Run, bin};
use owner::Owner;
use serde_json::Value;

/// Every command's path (`allow`, `relay serve`, ...), hidden ones left out.
fn command_paths() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, prefix: &str, into: &mut BTreeSet<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let path =
                if prefix.is_empty() { sub.get_name().to_string() } else { format!("{prefix} {}", sub.get_name()) };
            walk(sub, &path, into);
            into.insert(path);
        }
    }
    let mut all = BTreeSet::new();
    walk(&support::cli::Cli::command(), "", &mut all);
    all
}

/// The one JSON object on stderr of a failed `--json` command.
fn json_error(run: &Run) -> Value {
    assert!(run.stdout.is_empty(), "a failed --json command printed on stdout: {}", run.stdout);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line on stderr: {}", run.stderr);
    let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", run.stderr));
    assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{v}");
    v
}

#[test]
fn an_error_with_json_is_one_object_on_stderr_with_the_same_exit_code() {
    let home = Home::new();
    for (args, code, kind) in [
        (&["allow", "--tier", "3", "--minutes", "5"][..], 2, "usage"),
        (&["allow", "--tier", "9", "--minutes", "5"][..], 2, "usage"),
        (&["status", "--bogus"][..], 2, "usage"),
        (&["stop", "--all"][..], 3, "daemon_unreachable"),
        (&["policy", "check", "/nonexistent/policy.toml"][..], 2, "policy"),
        (&["summary", "g-0000000000000000"][..], 2, "usage"),
    ] {
        let plain = home.run(args);
        plain.code(code);
        let mut with = args.to_vec();
        with.push("--json");
        let json = home.run(&with);
        json.code(code);
        let v = json_error(&json);
        assert_eq!(v["error"]["code"], kind, "{args:?}: {v}");
        // The same words as without --json, less the `support: ` / `error: ` prefix.
        let message = v["error"]["message"].as_str().unwrap();
        let first = message.lines().next().unwrap();
        assert!(plain.stderr.contains(first), "{args:?}: {first:?} not in {:?}", plain.stderr);
    }
    // After `--`, `--json` belongs to the command an operator runs, not to support.
    let run = home.run(&["stop", "--all", "--", "--json"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.starts_with("error:") || run.stderr.starts_with("support:"), "{}", run.stderr);
}

#[test]
fn allow_revoke_policy_check_and_audit_verify_print_json() {
    let home = Home::new();
    let allowed = home.run(&["allow", "--tier", "2", "--minutes", "5", "--reason", "printer", "--json"]);
    allowed.code(0);
    let v = allowed.json();
    let grant = &v["grant"];
    assert_eq!((grant["tier"].as_u64(), grant["reason"].as_str()), (Some(2), Some("printer")), "{v}");
    assert_eq!(v["daemon_told"], false, "{v}");
    // What it says is what `status` reads from consent.json.
    assert_eq!(home.status()["grant_id"], grant["grant_id"], "{v}");

    let checked = home.run(&["policy", "check", "--json"]);
    checked.code(0);
    let c = checked.json();
    assert_eq!(c["ok"], true);
    assert!(c["actions"].as_array().unwrap().iter().any(|a| a == "disk-usage"), "{c}");

    let verified = home.run(&["audit", "--verify", "--json"]);
    verified.code(0);
    let a = verified.json();
    let records = a["records"].as_u64().unwrap();
    assert!(records >= 1 && a["ok"] == true, "{a}");
    assert_eq!(a["head"]["seq"].as_u64(), Some(records), "{a}");

    let revoked = home.run(&["revoke", "--json"]);
    revoked.code(0);
    let r = revoked.json();
    assert_eq!(r["revoked"], grant["grant_id"], "{r}");
    assert_eq!(r["summary"]["grant_id"], grant["grant_id"], "{r}");
    assert!(r["message"].as_str().unwrap().contains("Revoked"), "{r}");
    // Nothing to revoke is not an error, and says so.
    let again = home.run(&["revoke", "--json"]).json();
    assert!(again["revoked"].is_null() && again["summary"].is_null(), "{again}");

    // A cut log fails --verify, as JSON on stderr, exit 1.
    let log = home.file("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"tier\":2", "\"tier\":4", 1)).unwrap();
    let broken = home.run(&["audit", "--verify", "--json"]);
    broken.code(1);
    assert_eq!(json_error(&broken)["error"]["code"], "audit");
}

#[test]
fn stop_prints_the_stopped_tasks_as_json() {
    let owner = Owner::start();
    owner.allow(1, 10);
    let pidfile = owner.work.path().join("tree.pids");
    let (mut operator, task_id, _) = owner.start_tree(&pidfile);
    let stopped = owner.home().run(&["stop", &task_id, "--json"]);
    stopped.code(0);
    let v = stopped.json();
    assert_eq!(v["stopped"][0]["task_id"], *task_id, "{v}");
    assert_eq!(v["stopped"][0]["result"]["cancelled_by"], "owner", "{v}");
    let none = owner.home().run(&["stop", "--all", "--json"]).json();
    assert_eq!(none["stopped"], serde_json::json!([]), "{none}");
    let _ = operator.wait();
}

#[test]
fn version_names_the_release_the_commit_and_the_protocol() {
    let home = Home::new();
    let v = home.run(&["version", "--json"]);
    v.code(0);
    let v = v.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["protocol"].as_u64(), Some(u64::from(support::protocol::PROTOCOL_VERSION)));
    let commit = v["commit"].as_str().unwrap();
    assert!(commit == "unknown" || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())), "{v}");
    let plain = home.run(&["version"]);
    plain.code(0).says(env!("CARGO_PKG_VERSION")).says(commit).says("protocol v1");
}

#[test]
fn completions_name_every_command_and_bash_parses_its_script() {
    let paths = command_paths();
    assert!(paths.contains("relay serve") && paths.contains("operator shell"), "{paths:?}");
    for shell in ["bash", "zsh", "fish"] {
        let run = Home::new().run(&["completions", shell]);
        run.code(0);
        for path in &paths {
            let leaf = path.rsplit(' ').next().unwrap();
            assert!(run.stdout.contains(leaf), "{shell} completions lack `{path}`");
        }
    }
    let bad = Home::new().run(&["completions", "tcsh"]);
    bad.code(2);
    // bash reads the script without a syntax error, and it defines the completion.
    let script = Home::new().run(&["completions", "bash"]).stdout;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("support.bash");
    std::fs::write(&file, &script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p support", file.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("support"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn man_writes_a_page_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let run = std::process::Command::new(bin()).arg("man").arg(&out).output().unwrap();
    let run = Run::from(run);
    run.code(0);
    let paths = command_paths();
    run.says(&format!("wrote {} man pages", paths.len() + 1));
    let mut want: BTreeSet<String> = paths.iter().map(|p| format!("support-{}.1", p.replace(' ', "-"))).collect();
    want.insert("support.1".into());
    let have: BTreeSet<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(have, want);
    for page in &want {
        let text = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(text.contains(".TH") && text.contains(".SH NAME"), "{page} is not a man page:\n{text}");
    }
    // The allow page documents its flags.
    let allow = std::fs::read_to_string(out.join("support-allow.1")).unwrap();
    for flag in ["tier", "minutes", "yes", "json"] {
        assert!(allow.contains(&format!("\\-\\-{flag}")), "support-allow.1 lacks --{flag}");
    }
    // A directory that cannot be made is an error that names it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let bad = Run::from(std::process::Command::new(bin()).arg("man").arg(file.join("x")).output().unwrap());
    bad.code(1).says("cannot write man pages to");
}
