//! The admin socket: `support relay devices` asks the running relay
//! instead of reading a snapshot up to a second old.
//!
//! `admin.sock` is a Unix socket in the state directory (which is 0700),
//! made 0600, and the relay answers only a peer whose uid is its own
//! (`SO_PEERCRED`), so it is exactly as private as the registry beside it.
//! There is no request: connecting is the query; the relay writes the
//! listing as one JSON array and closes. Nothing on it can change state.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
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

/// Answers every same-uid connection on `listener` with the hub's listing
/// until `shutdown`; then removes the socket.
pub(crate) async fn serve(listener: UnixListener, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    loop {
        let mut stream = tokio::select! {
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
        // One slow reader must not hold up the next: each answer is its own
        // task, a few at a time (a permit each), each bounded by the timeout.
        let Ok(permit) = answering.clone().try_acquire_owned() else { continue };
        let answer = serde_json::to_vec(&hub.list()).unwrap_or_default();
        tokio::spawn(async move {
            let _permit = permit;
            let write = async {
                stream.write_all(&answer).await?;
                stream.write_all(b"\n").await
            };
            let _ = tokio::time::timeout(ADMIN_TIMEOUT, write).await;
        });
    }
    let _ = paths::remove(&RelayPaths::new(&hub.dir).admin_socket());
}

/// The running relay's listing, or `None` when its admin socket is
/// missing, not ours, or does not answer in time.
pub(crate) fn query(dir: &Path) -> Option<Vec<DeviceEntry>> {
    let path = RelayPaths::new(dir).admin_socket();
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_socket() || meta.uid() != paths::current_uid() {
        return None;
    }
    let stream = std::os::unix::net::UnixStream::connect(&path).ok()?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT)).ok()?;
    let mut bytes = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}
