//! The load-time rules of a catalogue file: every rule that makes a file
//! invalid, and nothing else. Any broken rule refuses the whole file, and
//! with it the whole catalogue (fail closed).
//!
//! A definition that passes is compiled here, into the [`Action`] or
//! [`Param`] that the rest of the crate uses, so nothing reaches a
//! catalogue without passing every rule below:
//!
//! - names: an action `[a-z0-9-]{1,64}`, unique within a file, never
//!   `agent` or `shell`; a parameter `[a-z][a-z0-9_]{0,31}`;
//! - tiers: 1 to 4, never below the kind's lowest tier, and an override
//!   never lowers the tier of the action it replaces;
//! - argv ([`check_argv`]): `argv[0]` fixed (no placeholder) and a bare name
//!   or absolute path; a placeholder is a whole element naming a declared
//!   parameter; no NUL; only kind `shell` names a shell interpreter, and
//!   other kinds never start through an exec wrapper nor hand code to an
//!   interpreter with `-c`/`-e` and the like ([`passes_code`]: alone,
//!   combined with other short options as in `-Sc` or `-we`, or attached);
//! - every declared parameter used, of exactly one type, anchored patterns
//!   that compile alone, optional parameters with a valid default;
//! - env: variable names only, never `SUPPORT_*`; cwd absolute or `~/...`
//!   without `..`; timeout and output limits within their caps;
//! - `[agent]`: the prompt on stdin or after `--` in argv, mode arguments
//!   for any argv other than the default, an endpoint only on loopback and
//!   with a secret file;
//! - `[shell]`: its limits, env, cwd and argv.

use std::collections::{BTreeMap, HashSet};

use super::format::{ActionDef, AgentConfig, DefaultValue, FileDef, ParamDef, ShellConfig, default_agent_argv};
use super::params::{MAX_VALUE_BYTES, Param, ParamType, is_param_name};
use super::render::{MODE_ARGS, placeholder, placeholder_inside};
use super::{Action, Kind, PolicyError};
use crate::consent::Tier;

/// `max_len` when a parameter does not set one.
const DEFAULT_MAX_LEN: usize = 256;
/// The agent's prompt is at most this, whatever `max_prompt_bytes` says (the frame cap).
const MAX_PROMPT_CAP: usize = 512 * 1024;
/// The longest `timeout_s`: a day.
const MAX_TIMEOUT_S: u64 = 24 * 3600;
/// The largest `max_output_bytes`: 256 MiB.
const MAX_OUTPUT_CAP: u64 = 256 * 1024 * 1024;

/// Interpreters that turn a string into code; never in a diagnostic or fix.
const SHELLS: &[&str] = &[
    "sh",
    "bash",
    "rbash",
    "dash",
    "zsh",
    "ksh",
    "ksh93",
    "mksh",
    "pdksh",
    "ash",
    "yash",
    "fish",
    "csh",
    "tcsh",
    "busybox",
    "pwsh",
    "powershell",
    "nu",
    "elvish",
    "xonsh",
    "ion",
];
/// Programs that run another program named by their arguments. A catalogue
/// has `env` and `timeout_s` of its own, so none is needed as `argv[0]`.
const EXEC_WRAPPERS: &[&str] = &[
    "env",
    "sudo",
    "doas",
    "su",
    "runuser",
    "pkexec",
    "setpriv",
    "xargs",
    "nice",
    "ionice",
    "nohup",
    "timeout",
    "setsid",
    "stdbuf",
    "chroot",
    "unshare",
    "nsenter",
    "taskset",
    "chrt",
    "flock",
    "script",
    "watch",
    "time",
    "systemd-run",
    "exec",
    "ssh",
    "parallel",
    "find",
];
/// Interpreters that run code given on their command line with -c or -e.
const CODE_INTERPRETERS: &[&str] = &[
    "python",
    "python2",
    "python3",
    "pypy",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "bun",
    "php",
    "lua",
    "tclsh",
    "Rscript",
    "osascript",
];
/// Whole argv elements that hand code to any interpreter above.
const EVAL_FLAGS: &[&str] = &["-c", "-e", "-E", "--eval", "--command", "-r"];

/// How one interpreter takes code on its command line, as its manual
/// says (python(1), perlrun(1), ruby(1), node(1), php(1), lua(1)): the
/// short options whose argument is code (alone or in a cluster such as
/// `-Sc`, `-we`, `-pe`, or with the code attached, `-cprint(1)`), the
/// short options whose argument is the rest of the cluster (so letters
/// after them are not options: `-Wdefault`, `-I/usr/share/perl5`), and
/// long options whose argument is code.
struct InlineCode {
    code: &'static str,
    rest: &'static str,
    long: &'static [&'static str],
}

/// The [`InlineCode`] of an interpreter's base name (version digits cut).
fn inline_code(interpreter: &str) -> InlineCode {
    let (code, rest, long): (&str, &str, &[&str]) = match interpreter {
        "python" | "pypy" => ("c", "WXmQ", &[]),
        // -M and -m put their argument in a `use` statement: `-M'POSIX;system(...)'` is code.
        "perl" => ("eEMm", "IDxi", &[]),
        "ruby" => ("e", "IrEKxCF0", &[]),
        // --import and the loaders take a URL, and a data: URL is code.
        "node" | "nodejs" | "bun" => {
            ("ep", "r", &["--eval", "--print", "--import", "--loader", "--experimental-loader"])
        }
        "php" => ("rBRE", "dcfz", &["--run", "--process-begin", "--process-code", "--process-end"]),
        "lua" | "Rscript" | "osascript" => ("e", "l", &["--expr"]),
        _ => ("", "", &[]),
    };
    InlineCode { code, rest, long }
}

/// Whether `element`, an argument of `interpreter`, hands it code: an
/// inline-code option alone, combined with other short options, with its
/// code attached, or a long option with its argument after `=`.
fn passes_code(interpreter: &str, element: &str) -> bool {
    if EVAL_FLAGS.contains(&element) {
        return true;
    }
    let rules = inline_code(interpreter);
    if let Some(long) = element.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        let flags = EVAL_FLAGS.iter().chain(rules.long);
        return !name.is_empty() && flags.filter_map(|f| f.strip_prefix("--")).any(|f| f == name);
    }
    let Some(cluster) = element.strip_prefix('-') else { return false };
    for c in cluster.chars() {
        if rules.code.contains(c) {
            return true;
        }
        if rules.rest.contains(c) {
            return false;
        }
    }
    false
}

/// Checks every rule of one parsed file against the catalogue in force
/// (`current`, name to action) and compiles its actions, in file order.
///
/// # Errors
/// [`PolicyError::Invalid`] naming the action (or `agent` / `shell`
/// section) and the first rule it breaks.
pub(super) fn check_file(
    file: &FileDef,
    source_name: &str,
    current: &BTreeMap<String, Action>,
) -> Result<Vec<Action>, PolicyError> {
    let mut seen = HashSet::new();
    let mut compiled = Vec::new();
    for def in &file.action {
        let invalid = |message: String| PolicyError::Invalid {
            source_name: source_name.into(),
            action: def.name.clone(),
            message,
        };
        if !seen.insert(def.name.clone()) {
            return Err(invalid("the name is defined twice in this file".into()));
        }
        let action = compile_action(def, source_name).map_err(invalid)?;
        if let Some(old) = current.get(&action.name)
            && action.tier < old.tier
        {
            return Err(invalid(format!(
                "an override may not lower the tier ({} in {}, {} here)",
                old.tier.get(),
                old.source,
                action.tier.get()
            )));
        }
        compiled.push(action);
    }
    let invalid_section = |name: &str, message: String| PolicyError::Invalid {
        source_name: source_name.into(),
        action: name.into(),
        message,
    };
    if let Some(agent) = &file.agent {
        check_agent(agent).map_err(|m| invalid_section("agent", m))?;
    }
    if let Some(shell) = &file.shell {
        check_shell(shell).map_err(|m| invalid_section("shell", m))?;
    }
    Ok(compiled)
}

/// An action name: `[a-z0-9-]{1,64}`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A program's file name, which the interpreter and wrapper lists are matched against.
fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// One argv list of an action, `[agent]` or `[shell]`; `declared` says
/// whether a placeholder's name is a parameter.
fn check_argv(argv: &[String], declared: impl Fn(&str) -> bool, kind: Kind) -> Result<(), String> {
    let Some(program) = argv.first() else { return Err("argv is empty".into()) };
    if placeholder(program).is_some() || placeholder_inside(program) {
        return Err("argv[0] may not be a placeholder: the program is fixed by the catalogue".into());
    }
    if program.contains('/') && !program.starts_with('/') {
        return Err(format!("argv[0] `{program}` must be a bare program name or an absolute path"));
    }
    for element in argv {
        if element.contains('\0') {
            return Err("argv holds a NUL byte".into());
        }
        match placeholder(element) {
            Some(name) if !declared(name) => {
                return Err(format!("placeholder {{{name}}} names no declared parameter"));
            }
            Some(_) => {}
            None if placeholder_inside(element) => {
                return Err(format!(
                    "`{element}`: a placeholder must be a whole argv element (split `--opt={{x}}` into `--opt`, `{{x}}`)"
                ));
            }
            None => {}
        }
    }
    if kind != Kind::Shell {
        // Only the tier-4 shell kind may hand a string to an interpreter.
        if let Some(shell) = argv.iter().find(|e| SHELLS.contains(&basename(e))) {
            return Err(format!("a {kind} may not run a shell interpreter (`{shell}`); only kind = \"shell\" may"));
        }
        if EXEC_WRAPPERS.contains(&basename(program)) {
            return Err(format!(
                "a {kind} may not start through `{program}`, which runs other programs; use the action's env and timeout_s"
            ));
        }
        let interpreter = basename(program).trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        if CODE_INTERPRETERS.contains(&interpreter) && argv[1..].iter().any(|e| passes_code(interpreter, e)) {
            return Err(format!("a {kind} may not run code given on the command line (`{program}` with -c/-e)"));
        }
    }
    Ok(())
}

/// `env`: variable names only; `SUPPORT_*` (support's own settings and secrets) never reaches an action.
fn check_env(env: &[String]) -> Result<(), String> {
    for name in env {
        let ok = !name.is_empty()
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(format!("env: `{name}` is not a variable name"));
        }
        if name.starts_with("SUPPORT_") {
            return Err(format!("env: `{name}`: SUPPORT_* variables are never passed to actions"));
        }
    }
    Ok(())
}

/// `cwd`: absolute or in the owner's home, never climbing out with `..`.
fn check_cwd(cwd: &str) -> Result<(), String> {
    if cwd == "~" || cwd.starts_with("~/") || cwd.starts_with('/') {
        if cwd.split('/').any(|c| c == "..") {
            return Err(format!("cwd `{cwd}` may not contain `..`"));
        }
        return Ok(());
    }
    Err(format!("cwd `{cwd}` must be absolute, `~` or `~/...`"))
}

/// `timeout_s` and `max_output_bytes` within their caps.
fn check_limits(timeout_s: u64, max_output_bytes: u64) -> Result<(), String> {
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        return Err(format!("timeout_s must be 1 to {MAX_TIMEOUT_S} seconds"));
    }
    if !(1..=MAX_OUTPUT_CAP).contains(&max_output_bytes) {
        return Err(format!("max_output_bytes must be 1 to {MAX_OUTPUT_CAP}"));
    }
    Ok(())
}

/// The `[agent]` section: its limits, env and cwd, where the prompt goes,
/// the mode arguments, and an endpoint only on loopback.
fn check_agent(a: &AgentConfig) -> Result<(), String> {
    check_limits(a.timeout_s, a.max_output_bytes)?;
    check_env(&a.env)?;
    check_cwd(&a.cwd)?;
    // Longer than timeout_s is allowed and never reached: the default must not refuse a short timeout_s.
    if a.idle_timeout_s > MAX_TIMEOUT_S {
        return Err(format!("idle_timeout_s must be 0 (never) to {MAX_TIMEOUT_S} seconds"));
    }
    if !(1..=MAX_PROMPT_CAP).contains(&a.max_prompt_bytes) {
        return Err(format!("max_prompt_bytes must be 1 to {MAX_PROMPT_CAP}"));
    }
    let has_prompt = a.argv.iter().any(|e| e == "{prompt}");
    match a.prompt.as_str() {
        "stdin" if has_prompt => return Err("prompt = \"stdin\" but argv holds {prompt}".into()),
        "stdin" => {}
        "argv" if !has_prompt => return Err("prompt = \"argv\" needs a `{prompt}` element in argv".into()),
        "argv" => {
            // The operator writes the prompt: after `--` it can never be read as an option.
            let at = a.argv.iter().position(|e| e == "{prompt}").unwrap_or(0);
            if at > 0 && a.argv[at - 1] != "--" {
                return Err("prompt = \"argv\": put \"--\" right before \"{prompt}\", so a prompt starting with - is never an option".into());
            }
        }
        other => return Err(format!("prompt must be \"stdin\" or \"argv\", not `{other}`")),
    }
    let declared = |name: &str| name == "prompt" || name == MODE_ARGS;
    check_argv(&a.argv, declared, Kind::Agent)?;
    if a.argv.iter().filter(|e| e.as_str() == "{mode_args}").count() > 1 {
        return Err("argv may hold `{mode_args}` once".into());
    }
    if a.argv != default_agent_argv() && (a.plan_args.is_none() || a.build_args.is_none()) {
        return Err("with your own argv, set plan_args and build_args: the arguments that keep the agent to \
                    proposing (plan) and let it make changes (build); [] only if it has none"
            .into());
    }
    let (plan, build) = (a.plan_args.clone().unwrap_or_default(), a.build_args.clone().unwrap_or_default());
    for (name, args) in [("plan_args", &plan), ("build_args", &build)] {
        if args.iter().any(|e| e.contains('\0') || placeholder_inside(e)) {
            return Err(format!("{name}: plain arguments only, no NUL and no placeholders"));
        }
        let mut whole = a.argv.clone();
        whole.extend(args.iter().cloned());
        check_argv(&whole, declared, Kind::Agent).map_err(|m| format!("{name}: {m}"))?;
    }
    if let Some(endpoint) = &a.endpoint {
        check_loopback_endpoint(endpoint)?;
        match &a.secret_file {
            Some(f) if f.starts_with('/') || f.starts_with("~/") => {}
            Some(f) => return Err(format!("secret_file `{f}` must be absolute or ~/...")),
            None => return Err("an endpoint needs secret_file, the file holding its X-Support-Secret".into()),
        }
    }
    Ok(())
}

/// `http://127.0.0.1:PORT/...`, `http://[::1]:PORT/...` or
/// `http://localhost:PORT/...`: the agent host must be on this machine.
fn check_loopback_endpoint(endpoint: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "endpoint `{endpoint}` must be http://127.0.0.1:PORT/PATH, http://[::1]:PORT/PATH or http://localhost:PORT/PATH"
        ))
    };
    let Some(rest) = endpoint.strip_prefix("http://") else { return refuse() };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse::<u32>().unwrap_or(0)),
        _ => return refuse(),
    };
    if !matches!(host, "127.0.0.1" | "[::1]" | "localhost") || !(1..=65535).contains(&port) {
        return refuse();
    }
    Ok(())
}

/// The `[shell]` section: its limits, env, cwd and argv (which may name a shell).
fn check_shell(s: &ShellConfig) -> Result<(), String> {
    check_limits(s.timeout_s, s.max_output_bytes)?;
    if let Some(p) = &s.program
        && (!p.starts_with('/') || p.contains('\0'))
    {
        return Err(format!("program must be an absolute path, not `{p}`"));
    }
    if s.idle_timeout_s == 0 || s.max_recording_bytes == 0 {
        return Err("idle_timeout_s and max_recording_bytes must be above 0".into());
    }
    check_env(&s.env)?;
    check_cwd(&s.cwd)?;
    check_argv(&s.argv, |_| false, Kind::Shell)
}

/// One `[[action]]`: every rule, then the [`Action`] it defines.
fn compile_action(def: &ActionDef, source: &str) -> Result<Action, String> {
    if !valid_name(&def.name) {
        return Err("the name must match [a-z0-9-]{1,64}".into());
    }
    if def.name == "agent" || def.name == "shell" {
        return Err("`agent` and `shell` are set in the [agent] and [shell] sections".into());
    }
    let tier = Tier::new(def.tier).ok_or_else(|| format!("tier must be 1 to 4, not {}", def.tier))?;
    if tier < def.kind.min_tier() {
        return Err(format!(
            "a {} needs tier {} or higher, not {}; a catalogue may raise a tier, never lower it",
            def.kind,
            def.kind.min_tier().get(),
            tier.get()
        ));
    }
    if def.description.trim().is_empty() {
        return Err("description is empty".into());
    }
    let mut commands = vec![def.argv.clone()];
    commands.extend(def.then.iter().cloned());
    for argv in &commands {
        check_argv(argv, |name| def.params.contains_key(name), def.kind)?;
    }
    for name in def.params.keys() {
        if !commands.iter().flatten().any(|e| placeholder(e) == Some(name)) {
            return Err(format!("parameter `{name}` is declared but no argv element is {{{name}}}"));
        }
    }
    check_limits(def.timeout_s, def.max_output_bytes)?;
    check_env(&def.env)?;
    let cwd = def.cwd.clone().unwrap_or_else(|| "~".into());
    check_cwd(&cwd)?;
    let params = def.params.iter().map(|(n, p)| compile_param(n, p)).collect::<Result<Vec<_>, _>>()?;
    Ok(Action {
        name: def.name.clone(),
        tier,
        kind: def.kind,
        description: def.description.clone(),
        commands,
        params,
        timeout_s: def.timeout_s,
        max_output_bytes: def.max_output_bytes,
        env: def.env.clone(),
        cwd,
        source: source.into(),
        mode_args: BTreeMap::new(),
    })
}

/// One parameter: its name, exactly one type, a default valid under that type.
fn compile_param(name: &str, def: &ParamDef) -> Result<Param, String> {
    if !is_param_name(name) {
        return Err(format!("parameter `{name}`: the name must match [a-z][a-z0-9_]{{0,31}}"));
    }
    let err = |m: &str| format!("parameter `{name}`: {m}");
    let max_len = def.max_len.unwrap_or(DEFAULT_MAX_LEN);
    if !(1..=MAX_VALUE_BYTES).contains(&max_len) {
        return Err(err(&format!("max_len must be 1 to {MAX_VALUE_BYTES}")));
    }
    let ty = match (&def.pattern, &def.choices, def.min, def.max) {
        (Some(p), None, None, None) => {
            if !p.starts_with('^') || !p.ends_with('$') || p.ends_with("\\$") {
                return Err(err("pattern must be anchored: start with ^ and end with $"));
            }
            // It must compile alone, so that wrapping cannot change its structure
            // (`^a)|(b$` compiles only once wrapped)...
            regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| err(&format!("pattern does not compile: {e}")))?;
            // ...and is wrapped again so that an alternation such as `^a|b$` stays anchored on both sides.
            let re = regex::RegexBuilder::new(&format!(r"\A(?:{p})\z"))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| err(&format!("pattern does not compile: {e}")))?;
            ParamType::Pattern(re, p.clone())
        }
        (None, Some(list), None, None) => {
            if list.is_empty()
                || list.iter().any(|v| v.is_empty() || v.len() > max_len || v.chars().any(char::is_control))
            {
                return Err(err(
                    "enum needs one or more non-empty values without control characters, each within max_len",
                ));
            }
            ParamType::Enum(list.clone())
        }
        (None, None, Some(min), Some(max)) if min <= max => {
            ParamType::Integer { min, max, owned_process: def.owned_process }
        }
        _ => return Err(err("give exactly one type: pattern, enum, or integer min and max (min <= max)")),
    };
    if !def.required && def.default.is_none() {
        // Dropping an element would shift what the flag before it applies to.
        return Err(err("an optional parameter needs a default"));
    }
    if def.owned_process && !matches!(ty, ParamType::Integer { .. }) {
        return Err(err("owned_process applies to an integer parameter"));
    }
    let mut param = Param {
        name: name.into(),
        ty,
        max_len,
        required: def.required,
        default: None,
        description: def.description.clone(),
    };
    if let Some(d) = &def.default {
        let text = match d {
            DefaultValue::Int(n) => n.to_string(),
            DefaultValue::Str(s) => s.clone(),
        };
        param.default =
            Some(param.check(&text).map_err(|e| err(&format!("the default does not validate: {}", e.why)))?);
    }
    Ok(param)
}
