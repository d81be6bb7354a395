//! The admin socket: the running relay's side of `support relay devices`
//! and of every admin change that must take effect at once.
//!
//! `admin.sock` is a Unix socket in the state directory (which is 0700),
//! made 0600, and the relay answers only a peer whose uid is its own
//! (`SO_PEERCRED`), so it is exactly as private as the registry beside it.
//! A client writes one [`Request`] as a JSON line; the relay writes one
//! JSON answer and closes:
//!
//! - `{"op":"devices"}`: the listing, one JSON array.
//! - `{"op":"reload"}`: the relay re-reads the registry (which the admin
//!   command has just changed under its lock) and ends the sessions of
//!   every device and operator no longer in it; the answer is
//!   `{"closed":N}`, written once they have been told.
//!
//! Every change itself is made on `registry.json` under its lock, whether
//! a relay runs or not; the socket only makes a running relay act on it now.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::hub::Hub;
use crate::paths::{self, RelayPaths};
use crate::protocol::DeviceEntry;

/// How long either side waits for the other.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers being written at once; a connection past them is closed.
const MAX_ANSWERING: usize = 4;
/// The largest answer read (bytes).
const MAX_ANSWER_BYTES: u64 = 256 << 20;
/// The largest request read (bytes).
const MAX_REQUEST_BYTES: u64 = 4 << 10;

/// What a client asks the running relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// Every enrolled device with its presence.
    Devices,
    /// Re-read the registry and end the sessions of peers removed from it.
    Reload,
}

/// The answer to [`Request::Reload`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reloaded {
    /// Sessions ended because their device or operator was removed.
    pub(crate) closed: usize,
}

/// Answers every same-uid connection on `listener` until `shutdown`;
/// then removes the socket.
pub(crate) async fn serve(listener: UnixListener, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid != Some(paths::current_uid()) {
            tracing::warn!(peer_uid = ?uid, "admin socket: refused a peer of another user");
            continue;
        }
        // One slow client must not hold up the next: each answer is its own
        // task, a few at a time (a permit each), each bounded by the timeout.
        let Ok(permit) = answering.clone().try_acquire_owned() else { continue };
        let hub = hub.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(ADMIN_TIMEOUT, answer(&hub, stream)).await;
        });
    }
    let _ = paths::remove(&RelayPaths::new(&hub.dir).admin_socket());
}

/// Reads one request from `stream` and writes its answer.
async fn answer(hub: &Hub, stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES)).read_line(&mut line).await?;
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Devices) => serde_json::to_vec(&hub.list()),
        Ok(Request::Reload) => serde_json::to_vec(&Reloaded { closed: hub.evict_removed() }),
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: malformed request");
            return Ok(());
        }
    };
    write.write_all(&answer.unwrap_or_default()).await?;
    write.write_all(b"\n").await
}

/// Asks the running relay `request`; `None` when its admin socket is
/// missing, not ours, or does not answer in time.
fn ask(dir: &Path, request: Request) -> Option<Vec<u8>> {
    let path = RelayPaths::new(dir).admin_socket();
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_socket() || meta.uid() != paths::current_uid() {
        return None;
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&path).ok()?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT)).ok()?;
    let mut line = serde_json::to_vec(&request).ok()?;
    line.push(b'\n');
    stream.write_all(&line).ok()?;
    let mut bytes = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// The running relay's listing, or `None` when it does not answer.
pub(crate) fn query(dir: &Path) -> Option<Vec<DeviceEntry>> {
    serde_json::from_slice(&ask(dir, Request::Devices)?).ok()
}

/// Tells the running relay that the registry changed; how many sessions
/// it ended, or `None` when it does not answer.
pub(crate) fn reload(dir: &Path) -> Option<usize> {
    serde_json::from_slice::<Reloaded>(&ask(dir, Request::Reload)?).ok().map(|r| r.closed)
}

/// Acts on registry changes made without the admin socket (a relay whose
/// socket could not be bound, a hand edit, another relay of the cluster):
/// ends the sessions of peers removed from the registry whenever its store
/// says it changed (the file: checked once a second), until `shutdown`.
pub(crate) async fn watch_registry(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = hub.store.changed() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        hub.evict_removed();
    }
}
