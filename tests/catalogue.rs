//! The action catalogue through the real binary: `policy check`,
//! `policy.d` additions and overrides, `actions`, and rendering of hostile
//! values (`policy render` runs nothing; it prints the argv).

mod common;

use common::Home;

const ECHO: &str = r#"
[[action]]
name = "echo-text"
tier = 1
kind = "diagnostic"
description = "Echo one value back"
argv = ["echo", "--", "{text}"]
params.text = { pattern = "^.+$", max_len = 64 }
"#;

fn policy_d(h: &Home, name: &str, text: &str) -> std::path::PathBuf {
    let dir = h.file("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_default_catalogue_checks_and_lists() {
    let h = Home::new();
    h.run(&["policy", "check"]).code(0).says("ok: the catalogue in force has");
    let all = h.run(&["actions", "--all", "--json"]).code(0).json();
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    for n in
        ["system-info", "disk-usage", "memory", "top-processes", "network-summary", "service-status", "journal-tail"]
    {
        assert!(names.contains(&n), "{n}");
    }
    for n in ["restart-user-service", "kill-process", "agent", "shell"] {
        assert!(names.contains(&n), "{n}");
    }
    // Under tier 1, only tier-1 actions are listed.
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(0);
    let live = h.run(&["actions", "--json"]).code(0).json();
    assert!(live.as_array().unwrap().iter().all(|a| a["tier"] == 1 && a["allowed"] == true));
    h.run(&["actions"]).code(0).says("system-info").says("tier 1");
}

#[test]
fn hostile_values_are_rejected_or_stay_one_literal_element() {
    let h = Home::new();
    let ten_kb = "a".repeat(10 * 1024);
    let hostile = ["; rm -rf ~", "$(id)", "`id`", "a\nb", "../../etc/passwd", ten_kb.as_str()];
    for v in hostile {
        h.run(&["policy", "render", "service-status", &format!("unit={v}")]).code(2).says("INVALID_PARAMS");
    }
    policy_d(&h, "echo.toml", ECHO);
    for v in hostile {
        let r = h.run(&["policy", "render", "echo-text", &format!("text={v}")]);
        if v.contains('\n') || v.len() > 64 {
            r.code(2).says("INVALID_PARAMS");
        } else {
            let argv: Vec<String> = serde_json::from_str(r.code(0).stdout.trim()).unwrap();
            assert_eq!(argv, ["echo", "--", v], "{v:?}");
        }
    }
    h.run(&["policy", "render", "echo-text"]).code(2).says("`text`: is required");
    h.run(&["policy", "render", "echo-text", "text=a", "extra=b"]).code(2).says("no such parameter");
    h.run(&["policy", "render", "nope"]).code(2).says("unknown action `nope`");
    h.run(&["policy", "render", "echo-text", "novalue"]).code(2).says("NAME=VALUE");
}

#[test]
fn policy_d_adds_and_overrides_but_never_lowers_a_tier() {
    let h = Home::new();
    policy_d(&h, "10-echo.toml", ECHO);
    h.run(&["policy", "check"]).code(0);
    let all = h.run(&["actions", "--all", "--json"]).code(0).json();
    let echo = all.as_array().unwrap().iter().find(|a| a["name"] == "echo-text").unwrap().clone();
    assert!(echo["source"].as_str().unwrap().ends_with("10-echo.toml"));

    // Raising memory to tier 2 is allowed.
    policy_d(&h, "20-raise.toml", &ECHO.replace("echo-text", "memory").replace("tier = 1", "tier = 2"));
    let all = h.run(&["actions", "--all", "--json"]).code(0).json();
    assert_eq!(all.as_array().unwrap().iter().find(|a| a["name"] == "memory").unwrap()["tier"], 2);

    // Lowering kill-process to tier 1 breaks the whole catalogue: nothing loads.
    let lower = policy_d(&h, "30-lower.toml", &ECHO.replace("echo-text", "kill-process"));
    h.run(&["policy", "check"]).code(2).says("may not lower the tier");
    h.run(&["actions", "--all"]).code(2).says("30-lower.toml");
    std::fs::remove_file(&lower).unwrap();
    h.run(&["policy", "check"]).code(0);

    // The shell can be switched off.
    policy_d(&h, "40-noshell.toml", "[shell]\nenabled = false\n");
    let all = h.run(&["actions", "--all", "--json"]).code(0).json();
    assert!(all.as_array().unwrap().iter().all(|a| a["name"] != "shell"));
    h.run(&["policy", "render", "shell", "cmd=id"]).code(2).says("unknown action `shell`");
}

#[test]
fn an_unsafe_policy_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    let path = policy_d(&h, "echo.toml", ECHO);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    h.run(&["actions", "--all"]).code(1).says("echo.toml is unsafe").says("chmod 600");
}

#[test]
fn policy_check_names_each_broken_rule() {
    let h = Home::new();
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (ECHO.replace("kind = ", "colour = \"red\"\nkind = "), "unknown field `colour`"),
        (ECHO.replace("\"echo\", \"--\"", "\"{text}\", \"--\""), "argv[0] may not be a placeholder"),
        (ECHO.replace("\"{text}\"", "\"--text={text}\""), "whole argv element"),
        (ECHO.replace("\"{text}\"", "\"{other}\""), "names no declared parameter"),
        (format!("{ECHO}{ECHO}"), "defined twice"),
        (ECHO.replace("\"echo\", \"--\"", "\"bash\", \"-c\""), "shell interpreter"),
        (ECHO.replace("kind = \"diagnostic\"", "kind = \"fix\""), "needs tier 2 or higher"),
        (ECHO.replace("\"^.+$\"", "\".+\""), "anchored"),
        (ECHO.replace("echo-text", "Echo Text"), "[a-z0-9-]{1,64}"),
    ] {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        h.run(&["policy", "check", path.to_str().unwrap()]).code(2).says(needle);
    }
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, ECHO).unwrap();
    h.run(&["policy", "check", path.to_str().unwrap()]).code(0).says("is valid");
}
