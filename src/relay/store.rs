//! Where the registry lives, behind one trait: `registry.json` in the
//! state directory ([`FileStore`], the single relay's default) or JetStream
//! key-value buckets shared by a cluster of relays
//! ([`NatsRegistry`](super::cluster::NatsRegistry), `--cluster`).
//!
//! The relay reads its registry from the store's cache on every `hello`
//! and `run`, so reads never wait on a disk or a network; writes (an
//! enrolment, the witnessed audit heads, the admin's changes) go to the
//! store and land in its cache before they return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::registry::{self, Enroll, Registry, RegistryError, Stamp, TokenRecord, WitnessRecord};
use crate::identity::PublicKey;
use crate::lock;
use crate::protocol::AuditAlert;

/// A registry the relay and its admin commands read and change.
///
/// Every method that changes the registry makes the change once for every
/// relay sharing the store; [`Store::changed`] is how a running relay learns
/// of changes made elsewhere (another relay, an admin command).
pub(crate) trait Store: Send + Sync {
    /// The registry as this process knows it now (the file store re-reads
    /// `registry.json` first if it changed).
    fn cached(&self) -> MutexGuard<'_, (Registry, Stamp)>;

    /// Resolves once the registry changed since the last call, by anyone.
    fn changed(&self) -> BoxFuture<'_, ()>;

    /// Keeps the cache in step with the source until `shutdown` (the file
    /// store has nothing to do: [`Store::cached`] re-reads the file).
    fn serve(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> BoxFuture<'static, ()>;

    /// Reads the whole registry from its source (not the cache).
    fn load(&self) -> BoxFuture<'_, Result<Registry, RegistryError>>;

    /// Pins `device_id` → `key` if `token` is live, consuming it once for
    /// every relay (see [`registry::enroll`]).
    fn enroll<'a>(
        &'a self,
        device_id: &'a str,
        key: &'a str,
        name: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Enroll, RegistryError>>;

    /// Records witnessed audit heads (see [`registry::witness`]).
    fn witness(&self, records: BTreeMap<String, WitnessRecord>) -> BoxFuture<'_, Result<(), RegistryError>>;

    /// A new one-time enrolment token valid for `ttl` (see [`registry::new_token`]).
    fn new_token(&self, ttl: chrono::Duration) -> BoxFuture<'_, Result<(String, DateTime<Utc>), RegistryError>>;

    /// See [`registry::add_operator`].
    fn add_operator<'a>(&'a self, name: &'a str, key: &'a PublicKey) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// See [`registry::remove_operator`].
    fn remove_operator<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// See [`registry::remove_device`].
    fn remove_device<'a>(&'a self, device_id: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// See [`registry::rename_device`].
    fn rename_device<'a>(&'a self, device_id: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>>;

    /// See [`registry::revoke_token`].
    fn revoke_token<'a>(&'a self, given: &'a str) -> BoxFuture<'a, Result<Option<TokenRecord>, RegistryError>>;

    /// See [`registry::clear_alert`].
    fn clear_alert<'a>(&'a self, device_id: &'a str) -> BoxFuture<'a, Result<Option<AuditAlert>, RegistryError>>;
}

/// `registry.json` in a state directory, written under its lock, re-read
/// whenever the file's stamp changes (the single relay, as it always was).
pub(crate) struct FileStore {
    dir: PathBuf,
    cache: Mutex<(Registry, Stamp)>,
    /// The stamp [`Store::changed`] last reported.
    seen: Mutex<Stamp>,
}

impl FileStore {
    /// The store of `dir`, starting from `registry` as last read.
    pub(crate) fn new(dir: &Path, registry: (Registry, Stamp)) -> FileStore {
        let seen = registry.1;
        FileStore { dir: dir.to_path_buf(), cache: Mutex::new(registry), seen: Mutex::new(seen) }
    }

    /// The store of `dir`, read at its first use.
    pub(crate) fn at(dir: &Path) -> FileStore {
        FileStore::new(dir, (Registry::default(), Stamp::default()))
    }

    fn set(&self, fresh: (Registry, Stamp)) {
        *lock(&self.cache) = fresh;
    }
}

/// Runs a blocking registry change off the runtime's thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(RegistryError::Conflict(format!("the registry change failed: {e}"))))
}

impl Store for FileStore {
    fn cached(&self) -> MutexGuard<'_, (Registry, Stamp)> {
        let mut cached = lock(&self.cache);
        if registry::stamp(&self.dir) != cached.1 {
            match Registry::load(&self.dir) {
                Ok(fresh) => *cached = fresh,
                Err(e) => {
                    tracing::error!(error = %crate::ErrorChain(&e), "cannot re-read the registry; keeping the last good copy")
                }
            }
        }
        cached
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let now = registry::stamp(&self.dir);
                if now != *lock(&self.seen) {
                    *lock(&self.seen) = now;
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    fn serve(self: Arc<Self>, _shutdown: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn load(&self) -> BoxFuture<'_, Result<Registry, RegistryError>> {
        let dir = self.dir.clone();
        Box::pin(async move { blocking(move || Registry::load(&dir).map(|(r, _)| r)).await })
    }

    fn enroll<'a>(
        &'a self,
        device_id: &'a str,
        key: &'a str,
        name: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Enroll, RegistryError>> {
        let dir = self.dir.clone();
        let (i, k, n, t) = (device_id.to_string(), key.to_string(), name.to_string(), token.map(String::from));
        Box::pin(async move {
            let (outcome, fresh, stamp) = blocking(move || registry::enroll(&dir, &i, &k, &n, t.as_deref())).await?;
            self.set((fresh, stamp));
            Ok(outcome)
        })
    }

    fn witness(&self, records: BTreeMap<String, WitnessRecord>) -> BoxFuture<'_, Result<(), RegistryError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            let fresh = blocking(move || registry::witness(&dir, records)).await?;
            self.set(fresh);
            Ok(())
        })
    }

    fn new_token(&self, ttl: chrono::Duration) -> BoxFuture<'_, Result<(String, DateTime<Utc>), RegistryError>> {
        Box::pin(async move { registry::new_token(&self.dir, ttl) })
    }

    fn add_operator<'a>(&'a self, name: &'a str, key: &'a PublicKey) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move { registry::add_operator(&self.dir, name, key) })
    }

    fn remove_operator<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move { registry::remove_operator(&self.dir, name) })
    }

    fn remove_device<'a>(&'a self, device_id: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move { registry::remove_device(&self.dir, device_id) })
    }

    fn rename_device<'a>(&'a self, device_id: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move { registry::rename_device(&self.dir, device_id, name) })
    }

    fn revoke_token<'a>(&'a self, given: &'a str) -> BoxFuture<'a, Result<Option<TokenRecord>, RegistryError>> {
        Box::pin(async move { registry::revoke_token(&self.dir, given) })
    }

    fn clear_alert<'a>(&'a self, device_id: &'a str) -> BoxFuture<'a, Result<Option<AuditAlert>, RegistryError>> {
        Box::pin(async move { registry::clear_alert(&self.dir, device_id) })
    }
}
