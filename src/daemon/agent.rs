//! Before the owner's agent starts: its program is installed, or its
//! agent host (a loopback HTTP endpoint) is named and its secret readable.

use std::collections::BTreeMap;

use super::gate::Denial;
use super::{Daemon, agent_host, exec};
use crate::paths;
use crate::protocol::DenyCode;

impl Daemon {
    /// Checks that the owner's agent can start: its program is installed,
    /// or its agent host's secret can be read, in which case the request to
    /// the host is returned.
    ///
    /// # Errors
    /// A denial `AGENT_UNAVAILABLE` naming the program or file and the
    /// `[agent]` setting to change.
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
