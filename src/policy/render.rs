//! Rendering an action's argv from typed parameters: each checked value
//! becomes exactly one argv element, and an agent's mode arguments go where
//! its argv says. Nothing is ever passed through a shell.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Serialize;

use super::params::{ParamError, is_param_name};
use super::{Action, Kind};

/// A rendered command: argv lists ready to spawn, never through a shell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// The first command, then any `then` commands, each an argv list.
    pub commands: Vec<Vec<String>>,
    /// Bytes for the first command's stdin (the agent's prompt), if any.
    pub stdin: Option<String>,
}

/// The argv element where the agent's mode arguments go.
pub(super) const MODE_ARGS: &str = "mode_args";

/// `{name}` as a whole element names a parameter.
pub(super) fn placeholder(element: &str) -> Option<&str> {
    element.strip_prefix('{')?.strip_suffix('}').filter(|n| is_param_name(n))
}

/// Whether `element` holds something shaped like a placeholder anywhere in it.
pub(super) fn placeholder_inside(element: &str) -> bool {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\{[a-z][a-z0-9_]*\}").expect("valid")).is_match(element)
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
