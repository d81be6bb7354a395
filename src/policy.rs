//! The action catalogue: what support may run, at which tier, with which
//! typed parameters.
//!
//! The format is documented at the top of `policy/default.toml`, which is
//! embedded in the binary. Files in `policy.d/*.toml` (in name order) add
//! actions or replace them by name, and may replace the `[agent]` and
//! `[shell]` sections; a replacement may never lower a tier.
//!
//! Commands are rendered by putting each typed value into exactly one argv
//! element. Nothing is ever passed through a shell, so a value like
//! `; rm -rf ~` is at most one literal argument, and usually rejected by
//! its type first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::consent::Tier;
use crate::paths::{self, FileError, Paths};

/// The catalogue compiled into the binary.
pub const DEFAULT_CATALOGUE: &str = include_str!("../policy/default.toml");
/// The largest catalogue file read, in bytes.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// The most `policy.d` files read.
const MAX_POLICY_FILES: usize = 256;
/// A parameter value is never longer than this, whatever `max_len` says.
pub const MAX_VALUE_BYTES: usize = 4096;
/// `max_len` when a parameter does not set one.
const DEFAULT_MAX_LEN: usize = 256;
/// The agent's prompt is at most this, whatever `max_prompt_bytes` says (the frame cap).
const MAX_PROMPT_CAP: usize = 512 * 1024;
const MAX_TIMEOUT_S: u64 = 24 * 3600;
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
const CODE_INTERPRETERS: &[&str] =
    &["python", "python2", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh", "Rscript", "osascript"];

/// A catalogue that cannot be loaded, or parameters that do not validate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error(transparent)]
    File(#[from] FileError),
    /// The TOML does not parse or has unknown fields.
    #[error("{source_name}: {message}\nfix the file, then check it with `support policy check`")]
    Parse { source_name: String, message: String },
    /// A rule of the catalogue is broken.
    #[error("{source_name}: action `{action}`: {message}\nfix the file, then check it with `support policy check`")]
    Invalid { source_name: String, action: String, message: String },
    /// An action name that the catalogue does not hold.
    #[error("unknown action `{0}`; `support actions --all` lists the catalogue")]
    UnknownAction(String),
    /// Parameters that fail their types (denial code `INVALID_PARAMS`).
    #[error(transparent)]
    InvalidParams(#[from] ParamError),
}

/// A parameter value rejected by its type; the denial code is `INVALID_PARAMS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("INVALID_PARAMS: parameter `{param}`: {why}")]
pub struct ParamError {
    pub param: String,
    pub why: String,
}

/// What kind of thing an action does; each kind has a lowest tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only; tier 1 or higher.
    Diagnostic,
    /// Changes something; tier 2 or higher.
    Fix,
    /// Drives the owner's AI agent; tier 3 or higher.
    Agent,
    /// Raw shell; tier 4.
    Shell,
}

impl Kind {
    /// The lowest tier this kind may have.
    pub fn min_tier(self) -> Tier {
        match self {
            Kind::Diagnostic => Tier::DIAGNOSTICS,
            Kind::Fix => Tier::FIXES,
            Kind::Agent => Tier::AGENT,
            Kind::Shell => Tier::SHELL,
        }
    }
    /// Its name as written in the catalogue.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Diagnostic => "diagnostic",
            Kind::Fix => "fix",
            Kind::Agent => "agent",
            Kind::Shell => "shell",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parameter's default, written as a string or an integer.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum DefaultValue {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    action: Vec<ActionDef>,
    agent: Option<AgentConfig>,
    shell: Option<ShellConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionDef {
    name: String,
    tier: u8,
    kind: Kind,
    description: String,
    argv: Vec<String>,
    #[serde(default)]
    then: Vec<Vec<String>>,
    #[serde(default)]
    params: BTreeMap<String, ParamDef>,
    #[serde(default = "default_timeout_s")]
    timeout_s: u64,
    #[serde(default = "default_max_output")]
    max_output_bytes: u64,
    #[serde(default)]
    env: Vec<String>,
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamDef {
    pattern: Option<String>,
    #[serde(rename = "enum")]
    choices: Option<Vec<String>>,
    min: Option<i64>,
    max: Option<i64>,
    max_len: Option<usize>,
    #[serde(default = "yes")]
    required: bool,
    default: Option<DefaultValue>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    owned_process: bool,
}

fn yes() -> bool {
    true
}
fn default_timeout_s() -> u64 {
    30
}
fn default_max_output() -> u64 {
    256 * 1024
}

/// The `[agent]` section: how tier 3 drives the owner's AI agent.
///
/// # Defaults
/// `enabled = true`, `argv = ["claude", "-p", "--output-format",
/// "stream-json", "--verbose"]`, and with that argv only,
/// `plan_args = ["--permission-mode", "plan"]` and
/// `build_args = ["--permission-mode", "acceptEdits"]` (another argv must
/// set both: a mode that silently means nothing is refused), `prompt = "stdin"`,
/// `cwd = "~"`, `timeout_s = 1800`, `max_prompt_bytes = 65536`,
/// `max_output_bytes = 16 MiB`, `env = []`, no `endpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_agent_argv")]
    pub argv: Vec<String>,
    /// Arguments for the task's mode `plan` (propose only), put where
    /// `argv` holds the element `{mode_args}`, or after the last element.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_args: Option<Vec<String>>,
    /// Arguments for the mode `build` (make changes), placed the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<Vec<String>>,
    /// `stdin`, or `argv` (then `argv` holds a `{prompt}` element).
    #[serde(default = "default_prompt_mode")]
    pub prompt: String,
    #[serde(default = "default_home_cwd")]
    pub cwd: String,
    #[serde(default = "default_agent_timeout")]
    pub timeout_s: u64,
    #[serde(default = "default_max_prompt")]
    pub max_prompt_bytes: usize,
    #[serde(default = "default_agent_output")]
    pub max_output_bytes: u64,
    #[serde(default)]
    pub env: Vec<String>,
    /// An agent host on loopback (`http://127.0.0.1:PORT/PATH`) instead of a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The file holding the `X-Support-Secret` for `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
}

/// The `[shell]` section: tier 4 raw shell commands.
///
/// # Defaults
/// `enabled = true`, `argv = ["/bin/sh", "-c"]`, `cwd = "~"`,
/// `timeout_s = 300`, `max_output_bytes = 1 MiB`, `env = []`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_shell_argv")]
    pub argv: Vec<String>,
    #[serde(default = "default_home_cwd")]
    pub cwd: String,
    #[serde(default = "default_shell_timeout")]
    pub timeout_s: u64,
    #[serde(default = "default_shell_output")]
    pub max_output_bytes: u64,
    #[serde(default)]
    pub env: Vec<String>,
}

fn default_agent_argv() -> Vec<String> {
    ["claude", "-p", "--output-format", "stream-json", "--verbose"].map(String::from).to_vec()
}
fn default_plan_args() -> Vec<String> {
    ["--permission-mode", "plan"].map(String::from).to_vec()
}
fn default_build_args() -> Vec<String> {
    ["--permission-mode", "acceptEdits"].map(String::from).to_vec()
}
fn default_prompt_mode() -> String {
    "stdin".into()
}
fn default_home_cwd() -> String {
    "~".into()
}
fn default_agent_timeout() -> u64 {
    1800
}
fn default_max_prompt() -> usize {
    64 * 1024
}
fn default_agent_output() -> u64 {
    16 * 1024 * 1024
}
fn default_shell_argv() -> Vec<String> {
    ["/bin/sh", "-c"].map(String::from).to_vec()
}
fn default_shell_timeout() -> u64 {
    300
}
fn default_shell_output() -> u64 {
    1024 * 1024
}

impl Default for AgentConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}
impl Default for ShellConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

/// A parameter's type.
#[derive(Clone, Debug)]
pub enum ParamType {
    /// Matches an anchored regular expression (the source is kept for display).
    Pattern(Regex, String),
    /// One of a fixed list.
    Enum(Vec<String>),
    /// A decimal integer in `min..=max`; with `owned_process`, also the pid
    /// of a live process of the current user other than this one.
    Integer { min: i64, max: i64, owned_process: bool },
    /// Free text (only for the agent's prompt and the shell's command).
    Text,
}

/// A declared, typed parameter.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub ty: ParamType,
    /// Bytes.
    pub max_len: usize,
    pub required: bool,
    pub default: Option<String>,
    pub description: String,
}

/// One action of the catalogue, validated.
#[derive(Clone, Debug)]
pub struct Action {
    pub name: String,
    pub tier: Tier,
    pub kind: Kind,
    pub description: String,
    /// The command, then any further commands run after it.
    pub commands: Vec<Vec<String>>,
    pub params: Vec<Param>,
    /// Seconds.
    pub timeout_s: u64,
    pub max_output_bytes: u64,
    /// Environment variable names passed through besides PATH, HOME, LANG, USER.
    pub env: Vec<String>,
    /// Working directory: absolute, or `~` / `~/...` for the owner's home.
    pub cwd: String,
    /// Where the action was defined (`default` or a policy.d path).
    pub source: String,
    /// The agent's extra arguments per mode (`plan`, `build`); empty for other kinds.
    pub mode_args: BTreeMap<String, Vec<String>>,
}

/// A rendered command: argv lists ready to spawn, never through a shell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rendered {
    pub commands: Vec<Vec<String>>,
    /// Bytes for the first command's stdin (the agent's prompt), if any.
    pub stdin: Option<String>,
}

/// The whole catalogue in force.
#[derive(Clone, Debug)]
pub struct Catalogue {
    actions: BTreeMap<String, Action>,
    pub agent: AgentConfig,
    pub shell: ShellConfig,
}

impl Catalogue {
    /// The embedded default catalogue plus `policy.d/*.toml` under `paths`.
    ///
    /// # Errors
    /// Any file that is unsafe, unreadable, or breaks a rule: the whole
    /// catalogue then fails to load (fail closed).
    pub fn load(paths: &Paths) -> Result<Catalogue, PolicyError> {
        let mut cat = Catalogue::default_only()?;
        for path in policy_files(&paths.policy_dir())? {
            cat.merge_file(&path)?;
        }
        Ok(cat)
    }

    /// The embedded default catalogue alone.
    ///
    /// # Errors
    /// Only if the embedded file is broken (a test catches that).
    pub fn default_only() -> Result<Catalogue, PolicyError> {
        let mut cat =
            Catalogue { actions: BTreeMap::new(), agent: AgentConfig::default(), shell: ShellConfig::default() };
        cat.merge_str(DEFAULT_CATALOGUE, "default")?;
        Ok(cat)
    }

    /// Reads a catalogue file (size-capped, ownership and mode checked)
    /// and merges it over this one.
    ///
    /// # Errors
    /// As [`Catalogue::load`].
    pub fn merge_file(&mut self, path: &Path) -> Result<(), PolicyError> {
        let name = path.display().to_string();
        let bytes = paths::read_capped(path, MAX_POLICY_BYTES)?
            .ok_or_else(|| PolicyError::Parse { source_name: name.clone(), message: "no such file".into() })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PolicyError::Parse { source_name: name.clone(), message: "not UTF-8".into() })?;
        self.merge_str(&text, &name)
    }

    /// Parses `text` and merges it over this catalogue: new names are
    /// added, existing names replaced (never at a lower tier), `[agent]`
    /// and `[shell]` replaced whole.
    ///
    /// # Errors
    /// [`PolicyError::Parse`] or [`PolicyError::Invalid`].
    pub fn merge_str(&mut self, text: &str, source_name: &str) -> Result<(), PolicyError> {
        let file: FileDef = toml::from_str(text)
            .map_err(|e| PolicyError::Parse { source_name: source_name.into(), message: e.to_string() })?;
        let mut seen = std::collections::HashSet::new();
        let mut compiled = Vec::new();
        for def in file.action {
            let invalid = |message: String| PolicyError::Invalid {
                source_name: source_name.into(),
                action: def.name.clone(),
                message,
            };
            if !seen.insert(def.name.clone()) {
                return Err(invalid("the name is defined twice in this file".into()));
            }
            let action = compile_action(&def, source_name).map_err(invalid)?;
            if let Some(old) = self.actions.get(&action.name)
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
        for action in compiled {
            self.actions.insert(action.name.clone(), action);
        }
        if let Some(agent) = file.agent {
            self.agent = agent;
        }
        if let Some(shell) = file.shell {
            self.shell = shell;
        }
        Ok(())
    }

    /// Every action, by name, including the enabled `agent` (tier 3) and
    /// `shell` (tier 4) entries built from their sections.
    pub fn actions(&self) -> Vec<Action> {
        let mut all: Vec<Action> = self.actions.values().cloned().collect();
        all.extend(self.agent_action());
        all.extend(self.shell_action());
        all.sort_by(|a, b| (a.tier, &a.name).cmp(&(b.tier, &b.name)));
        all
    }

    /// The action called `name`.
    ///
    /// # Errors
    /// [`PolicyError::UnknownAction`] (a disabled agent or shell is unknown).
    pub fn get(&self, name: &str) -> Result<Action, PolicyError> {
        let found = match name {
            "agent" => self.agent_action(),
            "shell" => self.shell_action(),
            _ => self.actions.get(name).cloned(),
        };
        found.ok_or_else(|| PolicyError::UnknownAction(name.into()))
    }

    fn agent_action(&self) -> Option<Action> {
        let a = &self.agent;
        a.enabled.then(|| {
            let mut params = vec![text_param("prompt", a.max_prompt_bytes, "the task for the agent")];
            params.push(Param {
                name: "mode".into(),
                ty: ParamType::Enum(vec!["plan".into(), "build".into()]),
                max_len: 5,
                required: false,
                default: Some("plan".into()),
                description: "plan: propose only; build: make changes".into(),
            });
            Action {
                name: "agent".into(),
                tier: Tier::AGENT,
                kind: Kind::Agent,
                description: "Operate your AI coding agent on a task".into(),
                commands: vec![a.argv.clone()],
                params,
                timeout_s: a.timeout_s,
                max_output_bytes: a.max_output_bytes,
                env: a.env.clone(),
                cwd: a.cwd.clone(),
                source: "[agent]".into(),
                mode_args: BTreeMap::from([
                    ("plan".to_string(), a.plan_args.clone().unwrap_or_else(default_plan_args)),
                    ("build".to_string(), a.build_args.clone().unwrap_or_else(default_build_args)),
                ]),
            }
        })
    }

    fn shell_action(&self) -> Option<Action> {
        let s = &self.shell;
        s.enabled.then(|| {
            let mut argv = s.argv.clone();
            argv.push("{cmd}".into());
            Action {
                name: "shell".into(),
                tier: Tier::SHELL,
                kind: Kind::Shell,
                description: "Run a raw shell command as you".into(),
                commands: vec![argv],
                params: vec![text_param("cmd", MAX_VALUE_BYTES, "the shell command line")],
                timeout_s: s.timeout_s,
                max_output_bytes: s.max_output_bytes,
                env: s.env.clone(),
                cwd: s.cwd.clone(),
                source: "[shell]".into(),
                mode_args: BTreeMap::new(),
            }
        })
    }
}

fn text_param(name: &str, max_len: usize, description: &str) -> Param {
    Param {
        name: name.into(),
        ty: ParamType::Text,
        max_len,
        required: true,
        default: None,
        description: description.into(),
    }
}

/// `policy.d/*.toml`, sorted by name; hidden files are skipped.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    paths::check_dir(dir)?;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(FileError::Io { op: "list", path: dir.into(), source }.into()),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FileError::Io { op: "list", path: dir.into(), source })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".toml") && !name.starts_with('.') {
            files.push(entry.path());
        }
    }
    if files.len() > MAX_POLICY_FILES {
        return Err(PolicyError::Parse {
            source_name: dir.display().to_string(),
            message: format!("more than {MAX_POLICY_FILES} files; merge some"),
        });
    }
    files.sort();
    Ok(files)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_param_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `{name}` as a whole element names a parameter.
fn placeholder(element: &str) -> Option<&str> {
    element.strip_prefix('{')?.strip_suffix('}').filter(|n| valid_param_name(n))
}

fn placeholder_inside(element: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\{[a-z][a-z0-9_]*\}").expect("valid")).is_match(element)
}

fn basename(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn check_argv(argv: &[String], params: &BTreeMap<String, ParamDef>, kind: Kind) -> Result<(), String> {
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
            Some(name) if !params.contains_key(name) => {
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
        let eval_flag = argv.iter().any(|e| matches!(e.as_str(), "-c" | "-e" | "-E" | "--eval" | "--command" | "-r"));
        if CODE_INTERPRETERS.contains(&basename(program).trim_end_matches(|c: char| c.is_ascii_digit() || c == '.'))
            && eval_flag
        {
            return Err(format!("a {kind} may not run code given on the command line (`{program}` with -c/-e)"));
        }
    }
    Ok(())
}

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

fn check_cwd(cwd: &str) -> Result<(), String> {
    if cwd == "~" || cwd.starts_with("~/") || cwd.starts_with('/') {
        if cwd.split('/').any(|c| c == "..") {
            return Err(format!("cwd `{cwd}` may not contain `..`"));
        }
        return Ok(());
    }
    Err(format!("cwd `{cwd}` must be absolute, `~` or `~/...`"))
}

fn check_limits(timeout_s: u64, max_output_bytes: u64) -> Result<(), String> {
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        return Err(format!("timeout_s must be 1 to {MAX_TIMEOUT_S} seconds"));
    }
    if !(1..=MAX_OUTPUT_CAP).contains(&max_output_bytes) {
        return Err(format!("max_output_bytes must be 1 to {MAX_OUTPUT_CAP}"));
    }
    Ok(())
}

fn check_agent(a: &AgentConfig) -> Result<(), String> {
    check_limits(a.timeout_s, a.max_output_bytes)?;
    check_env(&a.env)?;
    check_cwd(&a.cwd)?;
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
    let mut params = BTreeMap::new();
    params.insert("prompt".to_string(), text_param_def());
    params.insert(MODE_ARGS.to_string(), text_param_def());
    check_argv(&a.argv, &params, Kind::Agent)?;
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
        check_argv(&whole, &params, Kind::Agent).map_err(|m| format!("{name}: {m}"))?;
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

/// The argv element where the agent's mode arguments go.
const MODE_ARGS: &str = "mode_args";

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

fn text_param_def() -> ParamDef {
    ParamDef {
        pattern: None,
        choices: None,
        min: None,
        max: None,
        max_len: None,
        required: true,
        default: None,
        description: String::new(),
        owned_process: false,
    }
}

fn check_shell(s: &ShellConfig) -> Result<(), String> {
    check_limits(s.timeout_s, s.max_output_bytes)?;
    check_env(&s.env)?;
    check_cwd(&s.cwd)?;
    check_argv(&s.argv, &BTreeMap::new(), Kind::Shell)
}

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
        check_argv(argv, &def.params, def.kind)?;
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

fn compile_param(name: &str, def: &ParamDef) -> Result<Param, String> {
    if !valid_param_name(name) {
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

impl Param {
    /// Checks one value against the type; returns the value to put in argv
    /// (integers in canonical decimal form).
    ///
    /// # Errors
    /// [`ParamError`] saying why, without echoing the whole value.
    pub fn check(&self, value: &str) -> Result<String, ParamError> {
        let error = |why: String| ParamError { param: self.name.clone(), why };
        let fail = |why: String| Err(error(why));
        if value.len() > self.max_len {
            return fail(format!("{} bytes, longer than max_len {}", value.len(), self.max_len));
        }
        if value.contains('\0') {
            return fail("holds a NUL byte".into());
        }
        match &self.ty {
            ParamType::Text => Ok(value.to_string()),
            _ if value.chars().any(crate::text::is_unprintable) => {
                fail("holds control or invisible formatting characters (newline, tab, escape, bidi)".into())
            }
            ParamType::Pattern(re, src) => {
                if re.is_match(value) {
                    Ok(value.to_string())
                } else {
                    fail(format!("does not match {src}"))
                }
            }
            ParamType::Enum(list) => {
                if list.iter().any(|v| v == value) {
                    Ok(value.to_string())
                } else {
                    fail(format!("must be one of: {}", list.join(", ")))
                }
            }
            ParamType::Integer { min, max, owned_process } => {
                let digits = value.strip_prefix('-').unwrap_or(value);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return fail(format!("not a decimal integer (expected {min}..={max})"));
                }
                let n: i64 = value.parse().map_err(|_| error(format!("not an integer in {min}..={max}")))?;
                if n < *min || n > *max {
                    return fail(format!("{n} is outside {min}..={max}"));
                }
                if *owned_process {
                    check_owned_process(n).map_err(error)?;
                }
                Ok(n.to_string())
            }
        }
    }

    /// The type as shown to people: `/^...$/`, `a|b`, `1..=100`, `text`.
    pub fn type_label(&self) -> String {
        match &self.ty {
            ParamType::Pattern(_, src) => format!("/{src}/"),
            ParamType::Enum(list) => list.join("|"),
            ParamType::Integer { min, max, owned_process: false } => format!("{min}..={max}"),
            ParamType::Integer { owned_process: true, .. } => "pid of your own process".into(),
            ParamType::Text => format!("text, at most {} bytes", self.max_len),
        }
    }
}

/// The pid must be a live process of the current user, other than this one.
fn check_owned_process(pid: i64) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if pid == i64::from(std::process::id()) {
        return Err("is support's own process".into());
    }
    match std::fs::metadata(format!("/proc/{pid}")) {
        Ok(meta) if meta.uid() == paths::current_uid() => Ok(()),
        Ok(_) => Err(format!("process {pid} belongs to another user")),
        Err(_) => Err(format!("no process {pid}")),
    }
}

impl Action {
    /// Renders the command for `params` (name to value). Each value goes
    /// into exactly one argv element; an optional parameter without a
    /// value or default drops its element.
    ///
    /// # Errors
    /// [`ParamError`] (code `INVALID_PARAMS`) for an unknown name, a
    /// missing required value, or a value that fails its type.
    pub fn render(&self, params: &BTreeMap<String, String>) -> Result<Rendered, ParamError> {
        if let Some(unknown) = params.keys().find(|k| !self.params.iter().any(|p| &p.name == *k)) {
            let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
            return Err(ParamError {
                param: unknown.clone(),
                why: format!(
                    "`{}` takes no such parameter (it takes: {})",
                    self.name,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ),
            });
        }
        let mut values = BTreeMap::new();
        for p in &self.params {
            let value = match (params.get(&p.name), &p.default) {
                (Some(v), _) => Some(p.check(v)?),
                (None, Some(d)) => Some(d.clone()),
                (None, None) if p.required => {
                    return Err(ParamError { param: p.name.clone(), why: "is required".into() });
                }
                (None, None) => None,
            };
            values.insert(p.name.as_str(), value);
        }
        let stdin = match (self.kind, self.commands[0].iter().any(|e| e == "{prompt}")) {
            (Kind::Agent, false) => values.remove("prompt").flatten(),
            _ => None,
        };
        let mode_args =
            values.get("mode").cloned().flatten().and_then(|m| self.mode_args.get(&m).cloned()).unwrap_or_default();
        let mut commands: Vec<Vec<String>> = self
            .commands
            .iter()
            .map(|argv| {
                argv.iter()
                    .flat_map(|e| match placeholder(e) {
                        Some(MODE_ARGS) if self.kind == Kind::Agent => mode_args.clone(),
                        Some(name) => values.get(name).cloned().flatten().into_iter().collect(),
                        None => vec![e.clone()],
                    })
                    .collect()
            })
            .collect();
        let template = &self.commands[0];
        if self.kind == Kind::Agent && !template.iter().any(|e| placeholder(e) == Some(MODE_ARGS)) {
            // At the end, or before the `--` that guards an argv prompt
            // (the elements before it are plain, so positions match).
            match template.iter().position(|e| e == "{prompt}") {
                Some(at) if at > 0 && template[at - 1] == "--" => {
                    commands[0].splice(at - 1..at - 1, mode_args);
                }
                _ => commands[0].extend(mode_args),
            }
        }
        Ok(Rendered { commands, stdin })
    }
}

#[cfg(test)]
mod tests {
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
        let raised = cat(
            "[[action]]\nname = \"memory\"\ntier = 2\nkind = \"diagnostic\"\ndescription = \"x\"\nargv = [\"true\"]",
        )
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
}
