//! A reference agent host: a small hyper server that implements the
//! contract in docs/PROTOCOL.md ("The agent host contract") the way a
//! host someone writes from that text would, so the daemon is tested
//! against the spec and not against its own idea of it.
//!
//! - `POST` only (405 otherwise); `X-Support-Secret` must equal the
//!   secret (403); the body is JSON with `task_id` (or `taskId`), a
//!   string `prompt` and `mode` (400 when any is missing);
//! - `mode` is honoured or refused: a mode outside [`HostScript::modes`]
//!   is answered 400, naming it;
//! - the answer is `application/x-ndjson`: a `{"type":"text"}` chunk
//!   saying which mode it works in, then the script's chunks; then it
//!   ends the body, or with `hold` keeps it open until the daemon closes
//!   it (a stop), which the host notices when a keep-alive newline can
//!   no longer be sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full, StreamBody};
use hyper::body::Frame;

/// What the host answers.
#[derive(Clone, Debug)]
pub struct HostScript {
    /// The secret the `X-Support-Secret` header must carry.
    pub secret: String,
    /// The modes this host can work in; others are refused with 400.
    pub modes: Vec<&'static str>,
    /// NDJSON chunks sent after the mode line, one per line.
    pub chunks: Vec<String>,
    /// Keep the body open after the chunks, until the daemon closes it.
    pub hold: bool,
    /// Answer this status with this body instead (e.g. 503).
    pub status: Option<(u16, &'static str)>,
    /// Accept the connection and never answer.
    pub silent: bool,
}

impl HostScript {
    /// A host that does `plan` and `build` and sends `chunks`.
    pub fn new(secret: &str, chunks: &[&str]) -> HostScript {
        HostScript {
            secret: secret.into(),
            modes: vec!["plan", "build"],
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            hold: false,
            status: None,
            silent: false,
        }
    }
}

/// What the host saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Request headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The parsed JSON body.
    pub body: Option<serde_json::Value>,
    /// The daemon closed the response stream before the host ended it.
    pub closed_by_daemon: bool,
}

impl Seen {
    /// A request header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

type Body =
    Either<Full<Bytes>, StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>>;

fn plain(status: u16, text: String) -> hyper::Response<Body> {
    hyper::Response::builder().status(status).body(Either::Left(Full::new(Bytes::from(text)))).unwrap()
}

/// Serves `script` on 127.0.0.1:0 (every connection); returns its address and what it saw.
pub async fn start(script: HostScript) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (script, seen) = (script.clone(), shared.clone());
            tokio::spawn(async move {
                if script.silent {
                    // Holds the socket open, reads nothing, answers nothing.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(stream);
                    return;
                }
                let service = hyper::service::service_fn(move |req| serve(req, script.clone(), seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    script: HostScript,
    seen: Arc<Mutex<Seen>>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    seen.lock().unwrap().headers = headers;
    if req.method() != hyper::Method::POST {
        return Ok(plain(405, "POST only\n".into()));
    }
    let secret = req.headers().get("x-support-secret").and_then(|v| v.to_str().ok()).map(String::from);
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    seen.lock().unwrap().body = body.clone();
    if secret.as_deref() != Some(script.secret.as_str()) {
        return Ok(plain(403, "wrong or missing X-Support-Secret\n".into()));
    }
    let Some(body) = body else { return Ok(plain(400, "the body is not JSON\n".into())) };
    let task_id = body.get("task_id").or_else(|| body.get("taskId")).and_then(|v| v.as_str());
    let (Some(_task), Some(_prompt), Some(mode)) = (task_id, body["prompt"].as_str(), body["mode"].as_str()) else {
        return Ok(plain(400, "task_id, prompt and mode are required\n".into()));
    };
    if !script.modes.contains(&mode) {
        return Ok(plain(400, format!("this host does not do mode `{mode}`\n")));
    }
    if let Some((status, text)) = script.status {
        return Ok(plain(status, text.into()));
    }
    let mut lines = vec![serde_json::json!({"type": "text", "text": format!("working in {mode} mode")}).to_string()];
    lines.extend(script.chunks.iter().cloned());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let hold = script.hold;
    tokio::spawn(async move {
        for line in lines {
            if tx.send(Ok(Frame::data(Bytes::from(format!("{line}\n"))))).await.is_err() {
                seen.lock().unwrap().closed_by_daemon = true;
                return;
            }
        }
        if !hold {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if tx.send(Ok(Frame::data(Bytes::from_static(b"\n")))).await.is_err() {
                seen.lock().unwrap().closed_by_daemon = true;
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
    let body = StreamBody::new(futures_util::StreamExt::boxed(stream));
    Ok(hyper::Response::builder().header("content-type", "application/x-ndjson").body(Either::Right(body)).unwrap())
}
