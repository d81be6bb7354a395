//! The agent host client: one HTTP/1.1 POST to a loopback agent host
//! (`[agent] endpoint`), whose NDJSON response body is the task's output.
//!
//! The secret and the prompt go only to a listener owned by the daemon's
//! own user ([`listener_uids`]); a stop or the deadline drops the
//! connection, which aborts the request on the host's side.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::exec::{CHUNK_BYTES, Chunk, Delivered, End, stop_requested};
use super::tree;
use crate::protocol::{StoppedBy, Stream};
use crate::secret::Secret;

/// How long connecting to an agent host and getting its response head may take.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request to an agent host on loopback (`[agent] endpoint`).
#[derive(Clone, Debug)]
pub struct HttpAgent {
    /// A loopback address (the policy refuses any other host).
    pub addr: std::net::SocketAddr,
    /// The `Host` header: the endpoint's authority as written.
    pub host: String,
    /// The path and query.
    pub path: String,
    /// Sent as `X-Support-Secret`.
    pub secret: Secret,
    /// The JSON body: `{"task_id", "prompt", "mode"}`.
    pub body: Vec<u8>,
}

/// What the daemon posts to an agent host (docs/PROTOCOL.md).
#[derive(serde::Serialize)]
pub(super) struct AgentRequest<'a> {
    /// The daemon's task id.
    pub(super) task_id: &'a str,
    /// The operator's prompt.
    pub(super) prompt: &'a str,
    /// `plan` or `build`.
    pub(super) mode: &'a str,
}

/// An `[agent] endpoint` (already checked to be loopback when the policy
/// loaded) as the address to connect to, the `Host` header and the path.
/// `localhost` is taken as 127.0.0.1, never looked up.
pub(super) fn endpoint(endpoint: &str) -> Result<(std::net::SocketAddr, String, String), String> {
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

/// Posts the task to an agent host and relays its response body as
/// stdout. A non-2xx answer is a failure with the head of its body on
/// stderr; a stop or the deadline drops the connection, which aborts the
/// request on the host's side.
pub(super) async fn run_http(
    http: &HttpAgent,
    out: &mpsc::Sender<Chunk>,
    stop: &mut watch::Receiver<Option<StoppedBy>>,
    deadline: tokio::time::Instant,
    delivered: &mut Delivered,
) -> End {
    use http_body_util::BodyExt as _;

    if let Some(by) = *stop.borrow() {
        return End::Stopped(by);
    }
    let say = |delivered: &mut Delivered, msg: String| {
        let keep = delivered.take(format!("support: {msg}\n").as_bytes()).to_vec();
        let _ = out.try_send(Chunk { stream: Stream::Stderr, data: keep });
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(http.addr).await.map_err(|e| format!("connect: {e}"))?;
        // Another local user may hold the port while the host is down: the
        // secret and the prompt go only to a listener of the owner's own.
        match listener_uids(http.addr.port()) {
            uids if !uids.is_empty() && uids.iter().all(|u| *u == crate::paths::current_uid()) => {}
            uids if uids.is_empty() => {
                return Err("cannot tell who listens on that port (/proc/net/tcp); not sending the secret".into());
            }
            uids => return Err(format!("the port is held by another user (uid {uids:?}); not sending it the secret")),
        }
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection is driven here and aborted with this task: a stop aborts the request.
        let driver = AbortOnDrop(tokio::spawn(conn));
        let request = hyper::Request::post(http.path.as_str())
            .header(hyper::header::HOST, http.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/x-ndjson")
            .header("X-Support-Secret", http.secret.expose())
            .body(http_body_util::Full::new(bytes::Bytes::from(http.body.clone())))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        Ok::<_, String>((response, driver))
    };
    let connect_by = (tokio::time::Instant::now() + HTTP_CONNECT_TIMEOUT).min(deadline);
    let (response, driver) = tokio::select! {
        r = exchange => match r {
            Ok(r) => r,
            Err(e) => {
                say(delivered, format!("the agent host at {} failed: {e}", http.addr));
                return End::NotStarted;
            }
        },
        by = stop_requested(stop) => return End::Stopped(by),
        _ = tokio::time::sleep_until(connect_by) => {
            if connect_by >= deadline {
                return End::TimedOut;
            }
            say(delivered, format!("the agent host at {} did not answer within {} s", http.addr, HTTP_CONNECT_TIMEOUT.as_secs()));
            return End::NotStarted;
        }
    };
    // Aborting the driver closes the socket, whichever way this ends.
    let _driver = driver;
    let status = response.status();
    let mut body = response.into_body();
    let ok = status.is_success();
    let mut error_head = Vec::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            by = stop_requested(stop) => return End::Stopped(by),
            _ = tokio::time::sleep_until(deadline) => return End::TimedOut,
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                say(delivered, format!("the agent host's response broke off: {e}"));
                return End::Failed;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if !ok {
            // The head of an error body is enough for the message.
            let room = 1024usize.saturating_sub(error_head.len());
            error_head.extend_from_slice(&data[..data.len().min(room)]);
            if error_head.len() >= 1024 {
                break;
            }
            continue;
        }
        for piece in data.chunks(CHUNK_BYTES) {
            let keep = delivered.take(piece);
            if keep.is_empty() || out.is_closed() {
                continue;
            }
            let chunk = Chunk { stream: Stream::Stdout, data: keep.to_vec() };
            tokio::select! {
                _ = out.send(chunk) => {}
                by = stop_requested(stop) => return End::Stopped(by),
                _ = tokio::time::sleep_until(deadline) => return End::TimedOut,
            }
        }
    }
    if !ok {
        let head = String::from_utf8_lossy(&error_head);
        say(delivered, format!("the agent host answered HTTP {status}: {}", head.trim()));
        return End::Failed;
    }
    End::Exited(std::os::unix::process::ExitStatusExt::from_raw(0))
}

/// The uids of the TCP sockets listening on `port` on a loopback or
/// wildcard address, from `/proc/net/tcp` and `/proc/net/tcp6` (proc(5)):
/// the address is hex in host byte order, the port hex, state `0A` is
/// LISTEN, the uid is the eighth field.
fn listener_uids(port: u16) -> Vec<u32> {
    const LOCAL: [&str; 6] = [
        "0100007F",
        "7F000001",
        "00000000",
        "00000000000000000000000001000000",
        "00000000000000000000000000000001",
        "00000000000000000000000000000000",
    ];
    let mut uids = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Some(text) = tree::read_proc(std::path::Path::new(file), 32 << 20) else { continue };
        for line in String::from_utf8_lossy(&text).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(uid)) = (f.get(1), f.get(3), f.get(7)) else { continue };
            let Some((addr, p)) = local.split_once(':') else { continue };
            let v4_mapped_loopback = addr.len() == 32 && addr.starts_with("0000000000000000FFFF0000");
            if *state == "0A"
                && u16::from_str_radix(p, 16) == Ok(port)
                && (LOCAL.contains(&addr) || v4_mapped_loopback)
                && let Ok(uid) = uid.parse()
            {
                uids.push(uid);
            }
        }
    }
    uids
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
