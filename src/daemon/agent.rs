//! Before the owner's agent starts: its working folder exists and its
//! program is installed, or its agent host (a loopback HTTP endpoint) is
//! named and its secret readable. And what the agent gets besides: the
//! variables of a proxy, a private CA and the desktop session
//! ([`SESSION_ENV`]), and the idle limit ([`Idle`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use super::gate::Denial;
use super::{Daemon, agent_host, exec};
use crate::paths;
use crate::protocol::DenyCode;

/// Passed to the agent from the daemon's environment, each only when the
/// daemon has it, besides `PATH`, `HOME`, `LANG`, `USER` and `[agent] env`:
/// a proxy (curl(1)'s and Node's names, both cases), a private CA (OpenSSL's
/// `SSL_CERT_*`, Node's `NODE_EXTRA_CA_CERTS`, Python requests'
/// `REQUESTS_CA_BUNDLE`), and the desktop session's bus and runtime folder,
/// where a keyring keeps a CLI's login. Without them an agent behind a proxy
/// retries for minutes and then reports a connection error.
pub const SESSION_ENV: [&str; 14] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
];

/// The names passed to an agent task: `[agent] env` and [`SESSION_ENV`].
pub(super) fn env_names(configured: &[String]) -> Vec<String> {
    let mut names = configured.to_vec();
    names.extend(SESSION_ENV.iter().map(|n| n.to_string()).filter(|n| !configured.contains(n)));
    names
}

/// The agent's idle limit (`[agent] idle_timeout_s`): the task ends
/// `failed`, "no progress for N s", once the agent has done nothing but
/// retry for `limit`: from the first line that is not progress
/// ([`crate::transcript::LineKind::is_progress`]: retries, reconnects,
/// errors, stderr, raw lines) after the last line that is, with no
/// progress since. Silence is not idleness (a long command or a long
/// answer of the model is quiet; `timeout_s` bounds it), and once the
/// output is cut at `max_output_bytes` nothing more is read for progress,
/// so the limit no longer applies.
#[derive(Clone, Debug)]
pub struct Idle {
    /// How long the agent may go on retrying without progress.
    pub limit: Duration,
    /// Since when the agent has only retried: `None` at the start and
    /// after each line that shows progress, the first other line's instant
    /// after that (see `task.rs`, which watches the transcript).
    pub retrying_since: watch::Receiver<Option<tokio::time::Instant>>,
}

impl Idle {
    /// When the agent counts as idle, as things stand now; `None` while it
    /// is not retrying.
    pub(super) fn at(&self) -> Option<tokio::time::Instant> {
        self.retrying_since.borrow().map(|since| since + self.limit)
    }

    /// Whether that moment has passed.
    pub(super) fn passed(&self) -> bool {
        self.at().is_some_and(|at| at <= tokio::time::Instant::now())
    }
}

impl Daemon {
    /// Checks that the owner's agent can start: its program is installed,
    /// or its agent host's secret can be read, in which case the request to
    /// the host is returned.
    ///
    /// # Errors
    /// A denial `AGENT_UNAVAILABLE` naming the working folder, program or
    /// file and the `[agent]` setting to change.
    pub(super) fn prepare_agent(
        &self,
        rendered: &crate::policy::Rendered,
        params: &BTreeMap<String, String>,
        task_id: &str,
        env: &[(String, String)],
        cwd: &std::path::Path,
    ) -> Result<Option<exec::HttpAgent>, Denial> {
        let unavailable = |message: String| Denial { code: DenyCode::AgentUnavailable, message };
        let config = &self.catalogue().agent;
        let Some(endpoint) = &config.endpoint else {
            // Else the start fails on chdir(2) and reads like a missing program.
            if !cwd.is_dir() {
                return Err(unavailable(format!(
                    "the agent's working folder {} does not exist on this device (or is not a folder); \
                     create it, or set [agent] cwd in a policy.d file and restart the daemon",
                    cwd.display()
                )));
            }
            let program = rendered.commands.first().and_then(|c| c.first()).map(String::as_str).unwrap_or("");
            let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("");
            return match exec::find_on_path(program, path, cwd) {
                Some(_) => Ok(None),
                None => Err(unavailable(format!(
                    "the owner's agent program `{program}` is not installed on this device (not found on the daemon's PATH); \
                     install it, or set [agent] argv (or endpoint) in a policy.d file and restart the daemon"
                ))),
            };
        };
        let target = agent_host::endpoint(endpoint).map_err(|m| unavailable(format!("[agent] endpoint: {m}")))?;
        let file = config.secret_file.as_deref().unwrap_or("");
        let path = paths::expand_home(file);
        let secret = match paths::read_secret(&path, 4096) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).trim().to_string(),
            Ok(None) => String::new(),
            Err(e) => {
                return Err(unavailable(format!(
                    "the agent host's secret cannot be read: {}; fix it, or set [agent] secret_file in a policy.d file",
                    crate::ErrorChain(&e)
                )));
            }
        };
        let header_safe = secret.bytes().all(|b| b.is_ascii_graphic());
        if secret.is_empty() || !header_safe {
            return Err(unavailable(format!(
                "the agent host's secret file {} is missing, empty or not printable ASCII; \
                 fix it, or set [agent] secret_file in a policy.d file",
                path.display()
            )));
        }
        let body = agent_host::AgentRequest {
            task_id,
            task_id_camel: task_id,
            prompt: params.get("prompt").map(String::as_str).unwrap_or_default(),
            mode: params.get("mode").map(String::as_str).unwrap_or("plan"),
        };
        Ok(Some(exec::HttpAgent {
            addr: target.0,
            host: target.1,
            path: target.2,
            secret: crate::Secret::new(secret),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }))
    }
}
