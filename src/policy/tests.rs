use super::*;

fn cat(extra: &str) -> Result<Catalogue, PolicyError> {
    let mut c = Catalogue::default_only().unwrap();
    c.merge_str(extra, "test.toml").map(|()| c)
}

fn rejects(extra: &str, needle: &str) {
    match cat(extra) {
        Err(e) => assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`"),
        Ok(_) => panic!("accepted:\n{extra}"),
    }
}

const OK: &str = r#"
[[action]]
name = "echo-unit"
tier = 1
kind = "diagnostic"
description = "echo"
argv = ["echo", "--", "{unit}"]
params.unit = { pattern = "^[a-z]+$", max_len = 8 }
"#;

#[test]
fn the_default_catalogue_loads_and_declares_every_tier() {
    let c = Catalogue::default_only().unwrap();
    let names: Vec<String> = c.actions().into_iter().map(|a| a.name).collect();
    for n in [
        "system-info",
        "disk-usage",
        "memory",
        "top-processes",
        "network-summary",
        "service-status",
        "journal-tail",
        "restart-user-service",
        "kill-process",
        "agent",
        "shell",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert_eq!(c.get("agent").unwrap().tier, Tier::AGENT);
    assert_eq!(c.get("shell").unwrap().tier, Tier::SHELL);
}

#[test]
fn catalogue_rules() {
    assert!(cat(OK).is_ok());
    // What argv starts with, instead of `echo --`.
    for (start, needle) in [
        (r#""{unit}", "--""#, "argv[0] may not be a placeholder"),
        (r#""bash", "-c""#, "shell interpreter"),
        (r#""/usr/bin/env", "sh", "-ec""#, "shell interpreter"),
        (r#""nice", "sh""#, "shell interpreter"),
        (r#""echo", "/usr/bin/rbash""#, "shell interpreter"),
        (r#""env", "--""#, "may not start through `env`"),
        (r#""/usr/bin/xargs", "--""#, "may not start through"),
        (r#""python3.11", "-c""#, "code given on the command line"),
    ] {
        rejects(&OK.replace(r#""echo", "--""#, start), needle);
    }
    rejects(&OK.replace("tier = 1", "tier = 1\nbogus = 2"), "unknown field");
    rejects(&OK.replace("kind = \"diagnostic\"", "kind = \"fix\""), "needs tier 2");
    rejects(&OK.replace("tier = 1", "tier = 5"), "tier must be 1 to 4");
    rejects(&OK.replace("\"{unit}\"", "\"--unit={unit}\""), "whole argv element");
    rejects(&OK.replace("\"{unit}\"", "\"{other}\""), "names no declared parameter");
    rejects(&format!("{OK}{OK}"), "defined twice");
    rejects(&OK.replace("\"^[a-z]+$\"", "\"[a-z]+\""), "anchored");
    rejects(&OK.replace("echo-unit", "Echo_Unit"), "[a-z0-9-]");
    rejects(&OK.replace("echo-unit", "shell"), "[shell] sections");
    rejects(&OK.replace("pattern = \"^[a-z]+$\"", "pattern = \"^[a-z]+$\", min = 1, max = 2"), "exactly one type");
    rejects(&OK.replace("max_len = 8", "max_len = 8, default = \"TOOLONGVALUE\""), "default does not validate");
    rejects(&format!("{OK}env = [\"SUPPORT_SECRET\"]"), "never passed");
    rejects(&format!("{OK}cwd = \"relative\""), "must be absolute");
    // Overrides may raise a tier, never lower it.
    rejects(
        "[[action]]\nname = \"kill-process\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"x\"\nargv = [\"true\"]",
        "may not lower the tier",
    );
    let raised =
        cat("[[action]]\nname = \"memory\"\ntier = 2\nkind = \"diagnostic\"\ndescription = \"x\"\nargv = [\"true\"]")
            .unwrap();
    assert_eq!(raised.get("memory").unwrap().tier, Tier::FIXES);
    rejects(&OK.replace("\"^[a-z]+$\"", "\"^[a-z]+)|(x$\""), "does not compile");
    rejects(&OK.replace("max_len = 8", "max_len = 8, required = false"), "needs a default");
    let agent_kind = OK.replace("tier = 1", "tier = 3").replace("\"diagnostic\"", "\"agent\"");
    rejects(&agent_kind.replace("\"echo\", \"--\"", "\"sh\", \"-c\""), "only kind = \"shell\"");
    // The agent section: argv always checked; an endpoint only on loopback, with a secret.
    rejects("[agent]\nprompt = \"argv\"\nargv = [\"{prompt}\"]", "argv[0] may not be a placeholder");
    rejects("[agent]\nendpoint = \"http://10.0.0.5:8080/run\"\nsecret_file = \"/s\"", "must be http://127.0.0.1");
    rejects("[agent]\nendpoint = \"http://127.0.0.1.evil.example:80/\"\nsecret_file = \"/s\"", "must be");
    rejects("[agent]\nendpoint = \"https://127.0.0.1:8080/\"\nsecret_file = \"/s\"", "must be");
    rejects("[agent]\nendpoint = \"http://127.0.0.1:8080/run\"", "needs secret_file");
    for ok in ["http://127.0.0.1:8080/run", "http://[::1]:9/x", "http://localhost:3000"] {
        let c = cat(&format!("[agent]\nendpoint = \"{ok}\"\nsecret_file = \"~/.agent-secret\""));
        assert!(c.is_ok(), "{ok}: {:?}", c.err());
    }
    // A shell kind may use sh -c.
    assert!(cat("[[action]]\nname = \"s\"\ntier = 4\nkind = \"shell\"\ndescription = \"x\"\nargv = [\"sh\", \"-c\", \"true\"]").is_ok());
}

#[test]
fn values_land_in_one_element_or_are_rejected() {
    let c = cat(OK).unwrap();
    let a = c.get("echo-unit").unwrap();
    let render = |v: &str| a.render(&BTreeMap::from([("unit".to_string(), v.to_string())]));
    assert_eq!(render("abc").unwrap().commands, vec![vec!["echo", "--", "abc"]]);
    for bad in
        ["; rm -rf ~", "$(id)", "`id`", "a\nb", "../../etc/passwd", &"a".repeat(10 * 1024), "abc\n", "ab\u{202E}c"]
    {
        assert!(render(bad).is_err(), "{bad:?} accepted");
    }
    // A permissive pattern still yields exactly one literal element.
    let loose = cat(&OK.replace("\"^[a-z]+$\", max_len = 8", "\"^.+$\", max_len = 64")).unwrap();
    let a = loose.get("echo-unit").unwrap();
    for v in ["; rm -rf ~", "$(id)", "`id`", "../../etc/passwd"] {
        let r = a.render(&BTreeMap::from([("unit".to_string(), v.to_string())])).unwrap();
        assert_eq!(r.commands, vec![vec!["echo".to_string(), "--".into(), v.into()]]);
    }
    assert!(a.render(&BTreeMap::from([("unit".to_string(), "a\nb".to_string())])).is_err());
    assert!(a.render(&BTreeMap::from([("unit".to_string(), "safe\u{202E}txt.exe".to_string())])).is_err());
    assert!(a.render(&BTreeMap::from([("other".to_string(), "x".to_string())])).is_err());
    assert!(a.render(&BTreeMap::new()).unwrap_err().why.contains("required"));
}

#[test]
fn integers_are_range_checked_and_canonical() {
    let c = Catalogue::default_only().unwrap();
    let j = c.get("journal-tail").unwrap();
    let r = |lines: &str| {
        j.render(&BTreeMap::from([("unit".into(), "ssh.service".into()), ("lines".into(), lines.into())]))
    };
    assert!(r("007").unwrap().commands[0].contains(&"7".to_string()));
    for bad in ["0", "1001", "-5", "5x", "", "+5", "99999999999999999999"] {
        assert!(r(bad).is_err(), "{bad:?} accepted");
    }
    let k = c.get("kill-process").unwrap();
    let pid = |p: String| k.render(&BTreeMap::from([("pid".into(), p)]));
    assert!(pid(std::process::id().to_string()).unwrap_err().why.contains("own process"));
    assert!(pid("1".into()).is_err());
    assert!(pid("4194304".into()).unwrap_err().why.contains("no process"));
    let mine = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let mine_pid = mine.id().to_string();
    let ok = pid(mine_pid.clone());
    kill(mine);
    assert_eq!(ok.unwrap().commands[0], ["kill", "-s", "TERM", "--", mine_pid.as_str()]);
    // Another user's process, where this test can make one (as root, with setpriv).
    if nix::unistd::geteuid().is_root()
        && let Ok(other) = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "30"])
            .spawn()
    {
        let wait_for_uid = (0..200).any(|_| {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata(format!("/proc/{}", other.id())).map(|m| m.uid());
            uid.is_ok_and(|u| u == 65534) || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                false
            }
        });
        let refused = pid(other.id().to_string());
        kill(other);
        assert!(wait_for_uid);
        assert!(refused.unwrap_err().why.contains("belongs to another user"));
    }
}

#[test]
fn agent_mode_arguments_go_where_argv_says_or_at_the_end() {
    let params = |mode: &str| {
        BTreeMap::from([("prompt".to_string(), "fix it".to_string()), ("mode".to_string(), mode.to_string())])
    };
    let codex = cat(r#"
[agent]
argv = ["codex", "exec", "--json", "{mode_args}", "-"]
plan_args = ["--sandbox", "read-only"]
build_args = ["--sandbox", "workspace-write"]
"#)
    .unwrap();
    let r = codex.get("agent").unwrap().render(&params("build")).unwrap();
    assert_eq!(r.commands[0], ["codex", "exec", "--json", "--sandbox", "workspace-write", "-"]);
    assert_eq!(r.stdin.as_deref(), Some("fix it"));
    let r = codex.get("agent").unwrap().render(&BTreeMap::from([("prompt".into(), "x".into())])).unwrap();
    assert_eq!(r.commands[0], ["codex", "exec", "--json", "--sandbox", "read-only", "-"], "plan by default");
    let claude = Catalogue::default_only().unwrap();
    let r = claude.get("agent").unwrap().render(&params("plan")).unwrap();
    assert_eq!(r.commands[0].last().map(String::as_str), Some("plan"));
    assert_eq!(r.commands[0][r.commands[0].len() - 2], "--permission-mode");
    let argv =
        cat("[agent]\nargv = [\"agent\", \"--\", \"{prompt}\"]\nprompt = \"argv\"\nplan_args = [\"--plan\"]\nbuild_args = []\n")
            .unwrap();
    let r = argv.get("agent").unwrap().render(&params("plan")).unwrap();
    assert_eq!(
        (r.commands[0].clone(), r.stdin),
        (["agent", "--plan", "--", "fix it"].map(String::from).to_vec(), None)
    );
    rejects(
        "[agent]\nargv = [\"agent\", \"{prompt}\"]\nprompt = \"argv\"\nplan_args = []\nbuild_args = []\n",
        "right before",
    );
    rejects("[agent]\nargv = [\"my-agent\"]\nbuild_args = []\n", "set plan_args and build_args");
    rejects("[agent]\nplan_args = [\"{prompt}\"]\n", "plan_args");
    rejects("[agent]\nbuild_args = [\"-c\", \"sh\"]\n", "build_args");
    rejects("[agent]\nargv = [\"a\", \"{mode_args}\", \"{mode_args}\"]\n", "once");
}

fn kill(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A fix whose argv is `program` and `args`, as catalogue text.
fn fix_running(program: &str, args: &[&str]) -> String {
    let argv: Vec<String> = std::iter::once(program).chain(args.iter().copied()).map(|e| format!("{e:?}")).collect();
    format!(
        "[[action]]\nname = \"inline\"\ntier = 2\nkind = \"fix\"\ndescription = \"x\"\nargv = [{}]\n",
        argv.join(", ")
    )
}

#[test]
fn inline_code_is_refused_in_combined_and_attached_options() {
    for (program, args) in [
        ("python3", &["-Sc", "import os"][..]),
        ("python3", &["-Ic", "import os"]),
        ("/usr/bin/python3.12", &["-u", "-BSc", "x"]),
        ("python3", &["-cimport os"]),
        ("pypy3", &["-Ec", "x"]),
        ("perl", &["-we", "system 1"]),
        ("perl", &["-lne", "print"]),
        ("perl", &["-E", "say 1"]),
        ("perl", &["-MPOSIX;system(1)", "/x"]),
        ("perl5.36", &["-wEsay"]),
        ("node", &["-p", "process.exit()"]),
        ("node", &["-pe", "1"]),
        ("nodejs", &["--print", "1"]),
        ("node", &["--eval=require('fs')"]),
        ("node", &["--import", "data:text/javascript,1"]),
        ("ruby", &["-ne", "puts 1"]),
        ("php", &["-B", "system(1);"]),
        ("php", &["-R", "echo 1;"]),
        ("lua5.4", &["-e", "os.exit()"]),
        ("python3", &["--command=x"]),
    ] {
        rejects(&fix_running(program, args), "code given on the command line");
    }
    // Letters after an option that takes the rest of the cluster are its argument, not options.
    for (program, args) in [
        ("python3", &["-Wdefault", "-u", "/opt/fix.py"][..]),
        ("python3", &["-X", "dev", "/opt/fix.py"]),
        ("perl", &["-I/usr/share/perl5", "-w", "/opt/fix.pl"]),
        ("ruby", &["-rjson", "/opt/fix.rb"]),
        ("node", &["--max-old-space-size=64", "/opt/fix.js"]),
        ("tclsh", &["/opt/fix.tcl"]),
    ] {
        let text = fix_running(program, args);
        assert!(cat(&text).is_ok(), "{program} {args:?}: {:?}", cat(&text).err());
    }
}

#[test]
fn the_agent_idle_limit_defaults_to_300_s_allows_0_and_refuses_past_the_timeout_cap() {
    assert_eq!(cat("").unwrap().agent.idle_timeout_s, 300);
    assert_eq!(cat("[agent]\nidle_timeout_s = 0\n").unwrap().agent.idle_timeout_s, 0);
    // Longer than timeout_s is allowed (never reached): the default must not refuse a short timeout_s.
    assert_eq!(cat("[agent]\ntimeout_s = 60\n").unwrap().agent.idle_timeout_s, 300);
    rejects("[agent]\nidle_timeout_s = 99999999\n", "idle_timeout_s must be 0 (never) to");
}
