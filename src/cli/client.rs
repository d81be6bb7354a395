//! The owner's client of the daemon's loopback control API
//! ([`crate::daemon::control`]): finds the daemon through `daemon.json`,
//! authenticates with the `secret` file, and speaks HTTP/1.1 with hyper,
//! over `control.sock` when the daemon serves it (no other user can crowd
//! it), else over the TCP port.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{AUTHORIZATION, HOST};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::control_api::ApiError;
use crate::daemon::{self, DaemonInfo};
use crate::paths::{self, Paths};
use crate::{Error, paths::FileError};

/// How long to wait for the daemon to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole request may take (a stop waits up to 5 s for the task's end).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest response read (bytes).
const MAX_RESPONSE: usize = 8 << 20;
/// The longest an event stream may stay silent (it pings every 15 s).
const STREAM_SILENCE: Duration = Duration::from_secs(60);
/// The longest line of the event stream (bytes).
const MAX_EVENT_LINE: usize = 2 << 20;

/// A connection-less client: each call opens one connection.
pub(crate) struct Client {
    info: DaemonInfo,
    secret: crate::Secret,
    /// `control.sock`, when it is a socket of ours.
    socket: Option<std::path::PathBuf>,
}

fn unreachable(paths: &Paths, why: &str) -> Error {
    let home = paths.home.display();
    Error::DaemonUnreachable(format!("{why} (home {home}); start it with `support daemon`"))
}

impl Client {
    /// Finds the daemon of `paths`' home.
    ///
    /// # Errors
    /// [`Error::DaemonUnreachable`] when there is no `daemon.json` or no
    /// secret; [`Error::File`] when the secret file is unsafe.
    pub fn find(paths: &Paths) -> Result<Client, Error> {
        // A daemon.json left by a daemon that died is not trusted with the
        // secret: whoever listens on that port now may not be ours.
        if !daemon::is_running(paths) {
            return Err(unreachable(paths, "no daemon is running for this home"));
        }
        let info = daemon::read_info(paths).ok_or_else(|| unreachable(paths, "no daemon is running for this home"))?;
        let secret = match paths::read_secret(&paths.secret(), 1024) {
            Ok(Some(s)) => crate::Secret::new(String::from_utf8_lossy(&s).trim()),
            Ok(None) => return Err(unreachable(paths, "the control API secret is missing")),
            Err(e @ FileError::Unsafe { .. }) => return Err(e.into()),
            Err(e) => {
                return Err(unreachable(
                    paths,
                    &format!("the control API secret cannot be read: {}", crate::ErrorChain(&e)),
                ));
            }
        };
        Ok(Client { info, secret, socket: own_socket(&paths.control_socket()) })
    }

    /// The daemon's `daemon.json`.
    pub fn info(&self) -> &DaemonInfo {
        &self.info
    }

    fn runtime() -> Result<tokio::runtime::Runtime, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))
    }

    async fn send(&self, method: &str, path: &str) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let port = self.info.control_port;
        let gone = |e: &dyn std::fmt::Display| {
            Error::DaemonUnreachable(format!(
                "the daemon (pid {}, port {port}) does not answer: {e}; start it with `support daemon`",
                self.info.pid
            ))
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, format!("127.0.0.1:{port}"))
            .header(AUTHORIZATION, format!("Bearer {}", self.secret.expose()))
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Failed(format!("bad request: {e}")))?;
        // The socket first: the TCP port's slots are open to every local user.
        if let Some(socket) = &self.socket
            && let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(socket)).await
        {
            return exchange(stream, req).await.map_err(|e| gone(&e));
        }
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(gone(&e)),
                Err(_) => return Err(gone(&"timed out")),
            };
        exchange(stream, req).await.map_err(|e| gone(&e))
    }

    /// Sends a request and returns the body of a 2xx answer as `T` (one
    /// of the [`crate::control_api`] types).
    ///
    /// # Errors
    /// [`Error::DaemonUnreachable`] when it does not answer in time;
    /// [`Error::Refused`] with the daemon's message for a 403;
    /// [`Error::Failed`] with it for any other status, or when the answer
    /// is not a `T`.
    pub fn call<T: DeserializeOwned>(&self, method: &str, path: &str) -> Result<T, Error> {
        self.call_found(method, path)?.ok_or_else(|| Error::Failed(format!("the daemon has no {path}")))
    }

    /// As [`Client::call`], but a 404 answer is `Ok(None)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_found<T: DeserializeOwned>(&self, method: &str, path: &str) -> Result<Option<T>, Error> {
        Self::runtime()?.block_on(async {
            let work = async {
                let resp = self.send(method, path).await?;
                let status = resp.status();
                let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|e| Error::Failed(format!("reading the daemon's answer: {e}")))?
                    .to_bytes();
                if status.is_success() {
                    return serde_json::from_slice(&body)
                        .map(Some)
                        .map_err(|e| Error::Failed(format!("the daemon's answer to {method} {path}: {e}")));
                }
                if status == hyper::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let message = serde_json::from_slice::<ApiError>(&body).map(|e| e.error);
                let message = crate::text::printable(message.as_deref().unwrap_or("no message"));
                if status == hyper::StatusCode::FORBIDDEN {
                    return Err(Error::Refused(format!("the daemon refused: {message}")));
                }
                Err(Error::Failed(format!("the daemon answered {status}: {message}")))
            };
            tokio::time::timeout(REQUEST_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| Err(Error::DaemonUnreachable("the daemon did not answer in time".into())))
        })
    }

    /// Reads an NDJSON stream, calling `each` per line until it returns
    /// false or the daemon ends the stream.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn stream(&self, path: &str, mut each: impl FnMut(&str) -> bool) -> Result<(), Error> {
        Self::runtime()?.block_on(async {
            let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send("GET", path))
                .await
                .map_err(|_| Error::Failed("the daemon did not answer in time".into()))??;
            if !resp.status().is_success() {
                return Err(Error::Failed(format!("the daemon answered {}", resp.status())));
            }
            let mut body = resp.into_body();
            let mut pending: Vec<u8> = Vec::new();
            // The daemon sends a ping every 15 s: a minute of silence is a hung daemon.
            while let Some(frame) = tokio::time::timeout(STREAM_SILENCE, body.frame())
                .await
                .map_err(|_| Error::Failed("the daemon went silent for a minute".into()))?
            {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else { continue };
                pending.extend_from_slice(data);
                while let Some(end) = memchr::memchr(b'\n', &pending) {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if !each(String::from_utf8_lossy(&line[..end]).as_ref()) {
                        return Ok(());
                    }
                }
                if pending.len() > MAX_EVENT_LINE {
                    return Err(Error::Failed("the daemon sent an over-long event line".into()));
                }
            }
            Ok(())
        })
    }
}

/// `path` if it is a Unix socket owned by this user (a socket or link put
/// there by anyone else is never handed the secret).
fn own_socket(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let meta = std::fs::symlink_metadata(path).ok()?;
    (meta.file_type().is_socket() && meta.uid() == paths::current_uid()).then(|| path.to_path_buf())
}

/// Sends `req` on a fresh HTTP/1.1 connection over `stream`.
async fn exchange<S>(
    stream: S,
    req: Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}

/// Tells a running daemon that the grant changed, so it acts at once.
/// Returns whether a daemon was told; no daemon is not an error (it reads
/// the grant when it starts).
pub(crate) fn tell_consent_changed(paths: &Paths) -> bool {
    match Client::find(paths) {
        // Only the status code matters here; the answer's shape does not.
        Ok(client) => match client.call::<serde::de::IgnoredAny>("POST", "/v1/consent/changed") {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %crate::ErrorChain(&e), "could not tell the daemon; it will see the change within a second");
                false
            }
        },
        Err(_) => false,
    }
}
