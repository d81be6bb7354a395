//! Before the owner's agent starts: its program is installed, or its
//! agent host (a loopback HTTP endpoint) is named and its secret readable.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::gate::Denial;
use super::{Daemon, exec};
use crate::paths;
use crate::protocol::DenyCode;

/// What the daemon posts to an agent host (docs/PROTOCOL.md).
#[derive(serde::Serialize)]
struct AgentRequest<'a> {
    task_id: &'a str,
    prompt: &'a str,
    /// `plan` or `build`.
    mode: &'a str,
}

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
    ) -> Result<Option<exec::HttpAgent>, Denial> {
        let unavailable = |message: String| Denial { code: DenyCode::AgentUnavailable, message };
        let config = &self.catalogue().agent;
        let Some(endpoint) = &config.endpoint else {
            let program = rendered.commands.first().and_then(|c| c.first()).map(String::as_str).unwrap_or("");
            let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("");
            return match find_program(program, path) {
                Some(_) => Ok(None),
                None => Err(unavailable(format!(
                    "the owner's agent program `{program}` is not installed on this device (not found on the daemon's PATH); \
                     install it, or set [agent] argv (or endpoint) in a policy.d file and restart the daemon"
                ))),
            };
        };
        let target = agent_endpoint(endpoint).map_err(|m| unavailable(format!("[agent] endpoint: {m}")))?;
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
        let body = AgentRequest {
            task_id,
            prompt: params.get("prompt").map(String::as_str).unwrap_or_default(),
            mode: params.get("mode").map(String::as_str).unwrap_or("plan"),
        };
        Ok(Some(exec::HttpAgent {
            addr: target.0,
            host: target.1,
            path: target.2,
            secret,
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }))
    }
}

/// Where `program` would be found, as execvp(3) looks for it: a name with
/// a slash as it stands, else each directory of `path` in turn. Only a
/// regular file with an execute bit counts.
fn find_program(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable =
        |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return runnable(&p).then_some(p);
    }
    path.split(':').filter(|d| !d.is_empty()).map(|d| std::path::Path::new(d).join(program)).find(|p| runnable(p))
}

/// An `[agent] endpoint` (already checked to be loopback when the policy
/// loaded) as the address to connect to, the `Host` header and the path.
/// `localhost` is taken as 127.0.0.1, never looked up.
fn agent_endpoint(endpoint: &str) -> Result<(std::net::SocketAddr, String, String), String> {
    let rest = endpoint.strip_prefix("http://").ok_or("must start with http://")?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let (host, port) = authority.rsplit_once(':').ok_or("needs a port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port `{port}`"))?;
    let ip: std::net::IpAddr = match host {
        "localhost" | "127.0.0.1" => std::net::Ipv4Addr::LOCALHOST.into(),
        "[::1]" => std::net::Ipv6Addr::LOCALHOST.into(),
        other => return Err(format!("`{other}` is not a loopback address")),
    };
    Ok((std::net::SocketAddr::new(ip, port), authority.to_string(), path))
}
