//! A catalogue action's typed parameters: their types, the check every
//! value passes before it reaches an argv element, and the error that
//! becomes the denial code `INVALID_PARAMS`.

use regex::Regex;

use crate::paths;

/// A parameter value is never longer than this, whatever `max_len` says.
pub const MAX_VALUE_BYTES: usize = 4096;

/// A parameter value rejected by its type; the denial code is `INVALID_PARAMS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("INVALID_PARAMS: parameter `{param}`: {why}")]
pub struct ParamError {
    /// The parameter's name as the operator sent it.
    pub param: String,
    /// Why the value was refused, for people; never the whole value.
    pub why: String,
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
    Integer {
        /// The smallest value accepted.
        min: i64,
        /// The largest value accepted.
        max: i64,
        /// The value must be the pid of a live process of the current user.
        owned_process: bool,
    },
    /// Free text (only for the agent's prompt and the shell's command).
    Text,
}

/// A declared, typed parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// Its name: `[a-z][a-z0-9_]{0,31}`, written `{name}` in argv.
    pub name: String,
    /// What a value must be.
    pub ty: ParamType,
    /// Bytes.
    pub max_len: usize,
    /// Whether the operator must give a value (otherwise `default` is used).
    pub required: bool,
    /// The value used when none is given, already checked against `ty`.
    pub default: Option<String>,
    /// What the parameter means, for people.
    pub description: String,
}

/// Whether `name` is a parameter name: `[a-z][a-z0-9_]{0,31}`.
pub(super) fn is_param_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A required free-text parameter (the agent's prompt, the shell's command line).
pub(super) fn text_param(name: &str, max_len: usize, description: &str) -> Param {
    Param {
        name: name.into(),
        ty: ParamType::Text,
        max_len,
        required: true,
        default: None,
        description: description.into(),
    }
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
