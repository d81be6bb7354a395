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
//!
//! # Layout
//!
//! - `format`: the serde shapes of a catalogue file and their defaults.
//! - `rules`: every load-time rule that makes a file invalid (the file a
//!   security reviewer reads alone).
//! - `params`: parameter types and the check every value passes.
//! - `render`: argv from typed values, and where an agent's mode arguments go.
//! - this module: [`Catalogue`] (load, merge, look up) and [`Action`].

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::consent::Tier;
use crate::paths::{self, FileError, Paths};

mod format;
mod params;
mod render;
mod rules;

pub use format::{AgentConfig, ShellConfig};
pub use params::{MAX_VALUE_BYTES, Param, ParamError, ParamType};
pub use render::Rendered;
pub(crate) use rules::valid_name as valid_action_name;

use format::{FileDef, default_build_args, default_plan_args};
use params::text_param;

/// The catalogue compiled into the binary.
pub const DEFAULT_CATALOGUE: &str = include_str!("../../policy/default.toml");
/// The largest catalogue file read, in bytes.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// The most `policy.d` files read.
const MAX_POLICY_FILES: usize = 256;

/// A catalogue that cannot be loaded, or parameters that do not validate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A catalogue file or `policy.d` that is unsafe (a symlink, another
    /// owner, group/other-writable) or cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The TOML does not parse or has unknown fields.
    #[error("{source_name}: {message}\nfix the file, then check it with `support policy check`")]
    Parse {
        /// The file (`default` for the embedded one, else its path).
        source_name: String,
        /// What is wrong, as the TOML parser says it.
        message: String,
    },
    /// A rule of the catalogue is broken.
    #[error("{source_name}: action `{action}`: {message}\nfix the file, then check it with `support policy check`")]
    Invalid {
        /// The file (`default` for the embedded one, else its path).
        source_name: String,
        /// The action's name, or `agent` / `shell` for those sections.
        action: String,
        /// The rule broken.
        message: String,
    },
    /// An action name that the catalogue does not hold.
    #[error("unknown action `{0}`; `support actions --all` lists the catalogue")]
    UnknownAction(String),
    /// Parameters that fail their types (denial code `INVALID_PARAMS`).
    #[error(transparent)]
    InvalidParams(#[from] ParamError),
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

/// One action of the catalogue, validated.
#[derive(Clone, Debug)]
pub struct Action {
    /// Its name: `[a-z0-9-]{1,64}`, or `agent` / `shell`.
    pub name: String,
    /// The lowest tier a grant needs to run it.
    pub tier: Tier,
    /// What kind of thing it does.
    pub kind: Kind,
    /// What it does, for the owner and the operator.
    pub description: String,
    /// The command, then any further commands run after it.
    pub commands: Vec<Vec<String>>,
    /// Its typed parameters, by name.
    pub params: Vec<Param>,
    /// Seconds.
    pub timeout_s: u64,
    /// Output beyond this many bytes is cut and the result marked truncated.
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

/// The whole catalogue in force.
#[derive(Clone, Debug)]
pub struct Catalogue {
    actions: BTreeMap<String, Action>,
    /// The `[agent]` section in force.
    pub agent: AgentConfig,
    /// The `[shell]` section in force.
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
        let compiled = rules::check_file(&file, source_name, &self.actions)?;
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
                description: "Run a raw shell command as you, or without cmd an interactive shell".into(),
                commands: vec![argv],
                params: vec![
                    Param {
                        required: false,
                        ..text_param("cmd", MAX_VALUE_BYTES, "the shell command line; none opens an interactive shell")
                    },
                    cells_param("cols", "an interactive shell's columns"),
                    cells_param("rows", "an interactive shell's rows"),
                ],
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

/// An optional window side of an interactive session, 1 to [`crate::protocol::session::MAX_CELLS`].
fn cells_param(name: &str, description: &str) -> Param {
    Param {
        name: name.into(),
        ty: ParamType::Integer { min: 1, max: i64::from(crate::protocol::session::MAX_CELLS), owned_process: false },
        max_len: 4,
        required: false,
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

#[cfg(test)]
mod tests;
