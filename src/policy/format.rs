//! The catalogue file as written: the serde shapes of one TOML file
//! (`policy/default.toml` or `policy.d/*.toml`) and the defaults of every
//! field a file may leave out.
//!
//! Nothing here is checked beyond what TOML and serde check (unknown fields
//! are errors everywhere); the rules live in [`super::rules`], which turns
//! these shapes into [`super::Action`]s or refuses the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Kind;

/// A parameter's default, written as a string or an integer.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum DefaultValue {
    Int(i64),
    Str(String),
}

/// One catalogue file: `[[action]]` tables, then optional `[agent]` and `[shell]` sections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
    #[serde(default)]
    pub(super) action: Vec<ActionDef>,
    pub(super) agent: Option<AgentConfig>,
    pub(super) shell: Option<ShellConfig>,
}

/// One `[[action]]` table, as written; the format is documented at the top of `policy/default.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActionDef {
    pub(super) name: String,
    pub(super) tier: u8,
    pub(super) kind: Kind,
    pub(super) description: String,
    pub(super) argv: Vec<String>,
    #[serde(default)]
    pub(super) then: Vec<Vec<String>>,
    #[serde(default)]
    pub(super) params: BTreeMap<String, ParamDef>,
    #[serde(default = "default_timeout_s")]
    pub(super) timeout_s: u64,
    #[serde(default = "default_max_output")]
    pub(super) max_output_bytes: u64,
    #[serde(default)]
    pub(super) env: Vec<String>,
    pub(super) cwd: Option<String>,
}

/// One `[action.params.NAME]` table, as written: exactly one of `pattern`,
/// `enum` or `min`/`max` gives its type (a rule, not a serde shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ParamDef {
    pub(super) pattern: Option<String>,
    #[serde(rename = "enum")]
    pub(super) choices: Option<Vec<String>>,
    pub(super) min: Option<i64>,
    pub(super) max: Option<i64>,
    pub(super) max_len: Option<usize>,
    #[serde(default = "yes")]
    pub(super) required: bool,
    pub(super) default: Option<DefaultValue>,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default)]
    pub(super) owned_process: bool,
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
/// `max_output_bytes = 16 MiB`, `env = []`, no `endpoint`, `idle_timeout_s = 300`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// False leaves the `agent` action out of the catalogue (it is then unknown).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The agent's program and arguments, never run through a shell; may
    /// hold the elements `{prompt}` and `{mode_args}`.
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
    /// Working directory: absolute, or `~` / `~/...` for the owner's home.
    #[serde(default = "default_home_cwd")]
    pub cwd: String,
    /// How long a task may run, in seconds.
    #[serde(default = "default_agent_timeout")]
    pub timeout_s: u64,
    /// The longest prompt accepted, in bytes.
    #[serde(default = "default_max_prompt")]
    pub max_prompt_bytes: usize,
    /// Output beyond this many bytes is cut and the result marked truncated.
    #[serde(default = "default_agent_output")]
    pub max_output_bytes: u64,
    /// Environment variable names passed through besides PATH, HOME, LANG, USER.
    #[serde(default)]
    pub env: Vec<String>,
    /// An agent host on loopback (`http://127.0.0.1:PORT/PATH`) instead of a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The file holding the `X-Support-Secret` for `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Seconds without progress (no line on stdout but retries,
    /// reconnects, errors and raw text) after which the task ends
    /// `failed`, "no progress for N s"; 0 never ends it so.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
}

/// The `[shell]` section: tier 4 raw shell commands, and interactive
/// sessions (the `shell` action without `cmd`).
///
/// # Defaults
/// `enabled = true`, `argv = ["/bin/sh", "-c"]`, `cwd = "~"`,
/// `timeout_s = 300`, `max_output_bytes = 1 MiB`, `env = []`; for
/// sessions: no `program` (the owner's login shell), `idle_timeout_s = 900`,
/// `record_input = true`, `keep_recordings_days = 30`,
/// `max_recording_bytes = 64 MiB`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// False leaves the `shell` action out of the catalogue (it is then unknown).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The interpreter and its arguments; the operator's command line is
    /// appended as one more element.
    #[serde(default = "default_shell_argv")]
    pub argv: Vec<String>,
    /// Working directory: absolute, or `~` / `~/...` for the owner's home.
    #[serde(default = "default_home_cwd")]
    pub cwd: String,
    /// How long a command may run, in seconds.
    #[serde(default = "default_shell_timeout")]
    pub timeout_s: u64,
    /// Output beyond this many bytes is cut and the result marked truncated.
    #[serde(default = "default_shell_output")]
    pub max_output_bytes: u64,
    /// Environment variable names passed through besides PATH, HOME, LANG, USER.
    #[serde(default)]
    pub env: Vec<String>,
    /// An interactive session's program (absolute path, run with no
    /// arguments on the pty); `None`: the owner's login shell (the passwd
    /// entry of the daemon's uid, else `$SHELL`, else /bin/sh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Seconds with no input and no output after which a session ends.
    #[serde(default = "default_session_idle")]
    pub idle_timeout_s: u64,
    /// Whether a session's recording holds what the operator typed too.
    #[serde(default = "yes")]
    pub record_input: bool,
    /// Recordings older than this many days are removed at the daemon's start.
    #[serde(default = "default_keep_days")]
    pub keep_recordings_days: u64,
    /// A session whose recording reaches this many bytes ends.
    #[serde(default = "default_recording_bytes")]
    pub max_recording_bytes: u64,
}

fn default_session_idle() -> u64 {
    900
}
fn default_keep_days() -> u64 {
    30
}
fn default_recording_bytes() -> u64 {
    64 * 1024 * 1024
}

/// The default `[agent]` argv: Claude Code printing stream-JSON.
pub(super) fn default_agent_argv() -> Vec<String> {
    ["claude", "-p", "--output-format", "stream-json", "--verbose"].map(String::from).to_vec()
}
/// `plan_args` when the default argv leaves them unset.
pub(super) fn default_plan_args() -> Vec<String> {
    ["--permission-mode", "plan"].map(String::from).to_vec()
}
/// `build_args` when the default argv leaves them unset.
pub(super) fn default_build_args() -> Vec<String> {
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
fn default_idle_timeout() -> u64 {
    300
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
