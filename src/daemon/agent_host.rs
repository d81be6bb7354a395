//! The agent host client: one HTTP/1.1 POST to a loopback agent host
//! (`[agent] endpoint`), whose NDJSON response body is the task's output.
//!
//! The secret and the prompt go only to a listener owned by the daemon's
//! own user ([`listener_uids`]); a stop, the deadline or the idle limit
//! drops the connection, which aborts the request on the host's side.
//! The contract a host implements: docs/PROTOCOL.md, "The agent host contract".

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::agent::Idle;
use super::end::End;
use super::exec::{CHUNK_BYTES, Chunk, Delivered, stop_requested};
use super::tree;
use crate::protocol::{StoppedBy, Stream};
use crate::secret::Secret;

/// How long connecting to an agent host and getting its response head may
/// take; then the task fails, "the agent host at ADDR sent no answer in 10 s".
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
    /// The JSON body: `{"task_id", "taskId", "prompt", "mode"}`.
    pub body: Vec<u8>,
}

/// What the daemon posts to an agent host (docs/PROTOCOL.md).
#[derive(serde::Serialize)]
pub(super) struct AgentRequest<'a> {
    /// The daemon's task id.
    pub(super) task_id: &'a str,
    /// The same, for hosts written against the camelCase seed contract.
    #[serde(rename = "taskId")]
    pub(super) task_id_camel: &'a str,
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
/// stdout (docs/PROTOCOL.md, "The agent host contract"). A non-2xx answer,
/// a refused connection or no answer within [`HTTP_CONNECT_TIMEOUT`] fails
/// the task with that reason (said on stderr too); an `end` chunk's
/// `code` is the task's exit code, and without one an `error` chunk fails
/// it. A stop, the deadline or the idle limit drops the connection, which
/// aborts the request on the host's side.
pub(super) async fn run_http(
    http: &HttpAgent,
    out: &mpsc::Sender<Chunk>,
    stop: &mut watch::Receiver<Option<StoppedBy>>,
    deadline: tokio::time::Instant,
    idle: Option<&Idle>,
    delivered: &mut Delivered,
) -> End {
    use http_body_util::BodyExt as _;

    if let Some(by) = *stop.borrow() {
        return End::Stopped(by);
    }
    let fail = |delivered: &mut Delivered, why: String| {
        let why = cut(why.trim());
        let text = format!("support: {why}\n");
        let keep = delivered.take(text.as_bytes());
        delivered.offer(out, Stream::Stderr, keep);
        End::Failed(why)
    };
    let at = http.addr;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(at).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => format!("the agent host at {at} refused the connection"),
            _ => format!("the agent host at {at} could not be reached: {e}"),
        })?;
        // Another local user may hold the port while the host is down: the
        // secret and the prompt go only to a listener of the owner's own.
        match listener_uids(at.port()) {
            uids if !uids.is_empty() && uids.iter().all(|u| *u == crate::paths::current_uid()) => {}
            uids if uids.is_empty() => {
                return Err(format!(
                    "the agent host at {at}: cannot tell who listens on that port (/proc/net/tcp); not sending the secret"
                ));
            }
            uids => {
                return Err(format!(
                    "the agent host at {at}: the port is held by another user (uid {uids:?}); not sending it the secret"
                ));
            }
        }
        let _ = stream.set_nodelay(true);
        let broke = |e: hyper::Error| format!("the agent host at {at} broke off the exchange: {e}");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(broke)?;
        // The connection is driven here and aborted with this task: a stop aborts the request.
        let driver = AbortOnDrop(tokio::spawn(conn));
        let request = hyper::Request::post(http.path.as_str())
            .header(hyper::header::HOST, http.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/x-ndjson")
            .header("X-Support-Secret", http.secret.expose())
            .body(http_body_util::Full::new(bytes::Bytes::from(http.body.clone())))
            .map_err(|e| format!("the request to the agent host could not be built: {e}"))?;
        let response = sender.send_request(request).await.map_err(broke)?;
        Ok::<_, String>((response, driver))
    };
    let connect_by = (tokio::time::Instant::now() + HTTP_CONNECT_TIMEOUT).min(deadline);
    let (response, driver) = tokio::select! {
        r = exchange => match r {
            Ok(r) => r,
            Err(why) => return fail(delivered, why),
        },
        by = stop_requested(stop) => return End::Stopped(by),
        _ = tokio::time::sleep_until(connect_by) => {
            if connect_by >= deadline {
                return End::TimedOut;
            }
            let secs = HTTP_CONNECT_TIMEOUT.as_secs();
            return fail(delivered, format!("the agent host at {at} sent no answer in {secs} s"));
        }
    };
    // Aborting the driver closes the socket, whichever way this ends.
    let _driver = driver;
    let status = response.status();
    let mut body = response.into_body();
    let ok = status.is_success();
    let mut error_head = Vec::new();
    let mut chunks = Chunks::default();
    while chunks.end.is_none() {
        let idle_at = idle.filter(|_| !delivered.truncated).and_then(Idle::at);
        let frame = tokio::select! {
            f = body.frame() => f,
            by = stop_requested(stop) => return End::Stopped(by),
            _ = tokio::time::sleep_until(deadline) => return End::TimedOut,
            _ = tokio::time::sleep_until(idle_at.unwrap_or(deadline)), if idle_at.is_some() => {
                match idle {
                    Some(idle) if idle.passed() => return End::Idle(idle.limit),
                    _ => continue,
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return fail(delivered, format!("the agent host's response broke off: {e}")),
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
        chunks.read(&data);
        for piece in data.chunks(CHUNK_BYTES) {
            let keep = delivered.take(piece);
            if keep.is_empty() || out.is_closed() {
                continue;
            }
            tokio::select! {
                permit = out.reserve() => if let Ok(permit) = permit {
                    delivered.deliver(permit, Stream::Stdout, keep);
                },
                by = stop_requested(stop) => return End::Stopped(by),
                _ = tokio::time::sleep_until(deadline) => return End::TimedOut,
            }
        }
    }
    if !ok {
        let head = String::from_utf8_lossy(&error_head);
        let head = head.trim();
        let sep = if head.is_empty() { "" } else { ": " };
        return fail(delivered, format!("the agent host answered {status}{sep}{head}"));
    }
    match (chunks.end, chunks.error) {
        (Some(Some(code)), _) => End::Code(code),
        (_, Some(message)) => fail(delivered, format!("the agent host reported an error: {message}")),
        _ => End::Code(0),
    }
}

/// At most this many bytes of a reason (on a char boundary, "…" added).
const MAX_REASON_BYTES: usize = 300;

/// `text` cut to [`MAX_REASON_BYTES`] on one line.
fn cut(text: &str) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.len() <= MAX_REASON_BYTES {
        return line;
    }
    let mut end = MAX_REASON_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// The chunks of an agent host's NDJSON body that decide the task's end:
/// `{"type":"end","code":N}` and `{"type":"error",...}`. Other lines only
/// pass through to the transcript.
#[derive(Default)]
pub(super) struct Chunks {
    /// The partial last line, at most [`PENDING_CAP`] bytes.
    pending: Vec<u8>,
    /// The partial line outgrew the cap: drop up to its newline.
    skipping: bool,
    /// An `end` chunk came: its `code` (`None`: absent or not an integer).
    pub(super) end: Option<Option<i32>>,
    /// The first `error` chunk's message.
    pub(super) error: Option<String>,
}

/// A chunk that decides the end is short; a longer line is content.
const PENDING_CAP: usize = 64 * 1024;

impl Chunks {
    /// Reads the complete lines in `data` (the rest waits for its newline).
    pub(super) fn read(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if !std::mem::take(&mut self.skipping) {
                self.pending.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line);
            }
            self.pending.clear();
            rest = &rest[i + 1..];
        }
        if self.skipping {
            return;
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > PENDING_CAP {
            // Too long to read, but an error must not read as success.
            let head = String::from_utf8_lossy(&self.pending[..self.pending.len().min(4096)]);
            let compact: String = head.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.contains(r#""type":"error""#) && self.error.is_none() {
                self.error = Some(format!("(an error chunk of over {} KiB, too long to read)", PENDING_CAP >> 10));
            }
            self.pending.clear();
            self.skipping = true;
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(line) else { return };
        match obj.get("type").and_then(|t| t.as_str()) {
            Some("end") if self.end.is_none() => {
                let given = obj.get("code").filter(|c| !c.is_null());
                // `1.0` is the integer 1 to a reader; anything else unreadable fails the task.
                let code = given.and_then(|c| {
                    c.as_i64().or_else(|| c.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
                });
                if let (Some(value), None) = (given, code) {
                    self.error.get_or_insert_with(|| cut(&format!("an end chunk with an unreadable code ({value})")));
                }
                self.end = Some(code.map(|c| c.clamp(i32::MIN.into(), i32::MAX.into()) as i32));
            }
            Some("error") if self.error.is_none() => {
                let message = ["message", "error"].iter().find_map(|k| match obj.get(*k) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Object(o)) => o.get("message").and_then(|m| m.as_str()).map(String::from),
                    _ => None,
                });
                self.error = Some(cut(message.as_deref().unwrap_or("(no message)")));
            }
            _ => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::Chunks;

    #[test]
    fn end_and_error_chunks_are_read_across_reads_and_long_lines_are_passed_over() {
        let mut c = Chunks::default();
        c.read(b"{\"type\":\"text\",\"text\":\"hi\"}\n{\"type\":\"err");
        assert_eq!((c.end, c.error.as_deref()), (None, None));
        c.read(b"or\",\"error\":{\"message\":\"overloaded\"}}\n");
        assert_eq!(c.error.as_deref(), Some("overloaded"));
        // A line longer than the cap is content, even if it ends like an end chunk.
        c.read(&vec![b' '; super::PENDING_CAP + 1]);
        c.read(b"{\"type\":\"end\",\"code\":1}\n{\"type\":\"end\",\"code\":");
        assert_eq!(c.end, None, "the long line's tail is skipped");
        c.read(b"4}\n");
        assert_eq!(c.end, Some(Some(4)));
        let mut c = Chunks::default();
        c.read(b"{\"type\":\"end\",\"code\":\"x\"}\n");
        assert_eq!(c.end, Some(None), "a code that is not an integer is no code");
    }
}
