//! The registry in one JetStream key-value bucket, [`REGISTRY_BUCKET`],
//! shared by every relay of a cluster.
//!
//! One key per record, its value the same JSON as in `registry.json`:
//!
//! | key | value |
//! |---|---|
//! | `device.<device id>` | [`DeviceRecord`] |
//! | `operator.<hex of the name>` | [`OperatorRecord`] (names may hold `.`, which NATS keys split on) |
//! | `token.<sha256 hex>` | [`TokenRecord`] (the hash only: the bucket never holds a usable token) |
//! | `witness.<device id>` | [`WitnessRecord`] |
//!
//! A token is consumed by a compare-and-set on its revision (`update` with
//! the revision read): of two relays taking the same token at once, one
//! write lands and the other fails with a wrong last revision, so exactly
//! one device enrols. Each relay keeps a copy of the whole bucket in memory,
//! fed by a watch on it, so a `hello` never waits on NATS and an admin
//! change made anywhere reaches every relay within the watch's delay.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind, Watch};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::super::registry::{
    DeviceRecord, Enroll, OperatorRecord, Registry, RegistryError, Stamp, TokenRecord, WitnessRecord, token_hash,
};
use super::super::store::Store;
use crate::identity::PublicKey;
use crate::lock;
use crate::protocol::AuditAlert;

/// The bucket that holds the registry. Made with one replica if missing;
/// in production make it first with three (`nats kv add support_registry --replicas 3 --history 1`).
pub const REGISTRY_BUCKET: &str = "support_registry";
/// The largest value accepted for one record (bytes).
const MAX_VALUE_BYTES: i32 = 64 << 10;
/// How long the watch waits between attempts to start again after it failed.
const REWATCH_EVERY: Duration = Duration::from_secs(1);

/// What [`NatsRegistry::import`] did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Records written.
    pub written: usize,
    /// Records the bucket held already, with the same value.
    pub skipped: usize,
    /// Keys the bucket held with another value (left as they were).
    pub conflicts: Vec<String>,
}

/// The registry in the cluster's key-value bucket, with this relay's copy of it.
pub struct NatsRegistry {
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    url: String,
    cache: Mutex<(Registry, Stamp)>,
    /// The watch that fed the copy, until [`Store::serve`] takes it over.
    watch: Mutex<Option<Watch>>,
    changed: Notify,
}

impl std::fmt::Debug for NatsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRegistry").field("url", &self.url).finish_non_exhaustive()
    }
}

fn device_key(id: &str) -> String {
    format!("device.{id}")
}

fn operator_key(name: &str) -> String {
    format!("operator.{}", hex::encode(name))
}

fn token_key(sha256: &str) -> String {
    format!("token.{sha256}")
}

fn witness_key(id: &str) -> String {
    format!("witness.{id}")
}

fn encode(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("registry records always serialize"))
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            // Fail closed: a record that does not parse admits no one.
            tracing::error!(key, error = %e, "a registry record in NATS does not parse; ignoring it");
            None
        }
    }
}

/// Applies one key's new value (`None`: deleted) to `r`.
fn apply(r: &mut Registry, key: &str, value: Option<&[u8]>) {
    let Some((kind, name)) = key.split_once('.') else { return };
    match kind {
        "device" => match value.and_then(|v| decode::<DeviceRecord>(key, v)) {
            Some(d) => {
                r.devices.insert(name.into(), d);
            }
            None => {
                r.devices.remove(name);
            }
        },
        "operator" => {
            let Some(name) = hex::decode(name).ok().and_then(|n| String::from_utf8(n).ok()) else { return };
            match value.and_then(|v| decode::<OperatorRecord>(key, v)) {
                Some(o) => {
                    r.operators.insert(name, o);
                }
                None => {
                    r.operators.remove(&name);
                }
            }
        }
        "token" => {
            r.tokens.retain(|t| t.sha256 != name);
            if let Some(t) = value.and_then(|v| decode::<TokenRecord>(key, v)) {
                r.tokens.push(t);
                r.tokens.sort_by_key(|t| (t.created_at, t.expires_at));
            }
        }
        "witness" => match value.and_then(|v| decode::<WitnessRecord>(key, v)) {
            Some(w) => {
                r.witness.insert(name.into(), w);
            }
            None => {
                r.witness.remove(name);
            }
        },
        _ => {}
    }
}

pub(super) fn entry_value(e: &kv::Entry) -> Option<&[u8]> {
    (e.operation == Operation::Put).then_some(e.value.as_ref())
}

impl NatsRegistry {
    /// Opens (making it if missing, with one replica) the registry bucket
    /// on `client` and reads all of it; `url` names the server in errors.
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when JetStream does not answer, the
    /// bucket cannot be made, or it cannot be read within 30 s.
    pub async fn open(client: async_nats::Client, url: &str) -> Result<NatsRegistry, RegistryError> {
        let failed = |what: String| RegistryError::Cluster { what, url: url.to_string() };
        let js = async_nats::jetstream::new(client);
        let about = "support relays: devices, operators, enrolment tokens, audit witness";
        let kv = super::bucket(&js, REGISTRY_BUCKET, about, Duration::ZERO, MAX_VALUE_BYTES).await.map_err(failed)?;
        let (registry, watch) = read_all(&js, &kv).await.map_err(failed)?;
        Ok(NatsRegistry {
            js,
            kv,
            url: url.to_string(),
            cache: Mutex::new((registry, Stamp::default())),
            watch: Mutex::new(Some(watch)),
            changed: Notify::new(),
        })
    }

    /// The NATS client this registry talks through, and its server's URL.
    pub(crate) fn client(&self) -> (async_nats::Client, &str) {
        (self.js.client(), &self.url)
    }

    fn failed(&self, what: impl std::fmt::Display) -> RegistryError {
        RegistryError::Cluster { what: what.to_string(), url: self.url.clone() }
    }

    /// Writes `key` = `value` and applies it to this relay's copy.
    async fn put(&self, key: &str, value: Bytes) -> Result<(), RegistryError> {
        self.kv.put(key, value.clone()).await.map_err(|e| self.failed(format!("cannot write {key}: {e}")))?;
        apply(&mut lock(&self.cache).0, key, Some(&value));
        Ok(())
    }

    /// Deletes `key` and applies that to this relay's copy.
    async fn delete(&self, key: &str) -> Result<(), RegistryError> {
        self.kv.delete(key).await.map_err(|e| self.failed(format!("cannot delete {key}: {e}")))?;
        apply(&mut lock(&self.cache).0, key, None);
        Ok(())
    }

    /// The record at `key` now, read from NATS, with its revision.
    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, RegistryError> {
        let entry = self.kv.entry(key).await.map_err(|e| self.failed(format!("cannot read {key}: {e}")))?;
        Ok(entry.and_then(|e| entry_value(&e).and_then(|v| decode(key, v)).map(|t| (t, e.revision))))
    }

    /// Reads the whole bucket (not this relay's copy).
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when it cannot be read within 30 s.
    pub async fn read_registry(&self) -> Result<Registry, RegistryError> {
        read_all(&self.js, &self.kv).await.map(|(r, _)| r).map_err(|e| self.failed(e))
    }

    /// Pins `device_id` → `key` if `token` is live, consuming the token by
    /// compare-and-set on its revision: of any number of relays taking the
    /// same token at once exactly one gets [`Enroll::Pinned`], the others
    /// [`Enroll::BadToken`]. A device already pinned is [`Enroll::Known`]
    /// (same key) or [`Enroll::OtherKey`].
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when NATS does not answer.
    pub async fn enroll(
        &self,
        device_id: &str,
        key: &str,
        name: &str,
        token: Option<&str>,
    ) -> Result<Enroll, RegistryError> {
        let dkey = device_key(device_id);
        if let Some((d, _)) = self.read::<DeviceRecord>(&dkey).await? {
            return Ok(if d.public_key == key { Enroll::Known } else { Enroll::OtherKey });
        }
        let Some(token) = token else { return Ok(Enroll::BadToken) };
        let tkey = token_key(&token_hash(token));
        let now = Utc::now();
        let Some((mut t, revision)) = self.read::<TokenRecord>(&tkey).await?.filter(|(t, _)| t.is_live(now)) else {
            return Ok(Enroll::BadToken);
        };
        t.used_at = Some(now);
        t.used_by = Some(device_id.into());
        let used = encode(&t);
        match self.kv.update(&tkey, used.clone(), revision).await {
            Ok(_) => apply(&mut lock(&self.cache).0, &tkey, Some(&used)),
            // Another relay consumed it between our read and our write.
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => return Ok(Enroll::BadToken),
            Err(e) => return Err(self.failed(format!("cannot consume the token: {e}"))),
        }
        // A device enrolled anew starts a new witness: an old one is of a removed device.
        self.delete(&witness_key(device_id)).await?;
        let record = DeviceRecord { public_key: key.into(), name: name.into(), enrolled_at: crate::time::rfc3339(now) };
        let value = encode(&record);
        match self.kv.create(&dkey, value.clone()).await {
            Ok(_) => {
                apply(&mut lock(&self.cache).0, &dkey, Some(&value));
                Ok(Enroll::Pinned)
            }
            // The same key enrolled through another relay with another token meanwhile.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => match self.read::<DeviceRecord>(&dkey).await? {
                Some((d, _)) if d.public_key == key => Ok(Enroll::Known),
                _ => Ok(Enroll::OtherKey),
            },
            Err(e) => Err(self.failed(format!("cannot pin the device: {e}"))),
        }
    }

    /// A new one-time token valid for `ttl`; expired tokens are deleted on the way.
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when NATS does not answer.
    pub async fn new_token(&self, ttl: chrono::Duration) -> Result<(String, DateTime<Utc>), RegistryError> {
        let now = Utc::now();
        let expired: Vec<String> =
            lock(&self.cache).0.tokens.iter().filter(|t| t.expires_at <= now).map(|t| t.sha256.clone()).collect();
        for sha256 in expired {
            self.delete(&token_key(&sha256)).await?;
        }
        let token = super::super::registry::random_token();
        let expires_at = now + ttl;
        let sha256 = token_hash(&token);
        let record =
            TokenRecord { sha256: sha256.clone(), expires_at, created_at: Some(now), used_at: None, used_by: None };
        self.put(&token_key(&sha256), encode(&record)).await?;
        Ok((token, expires_at))
    }

    /// Admits an operator; `false` when it was admitted already with that key.
    ///
    /// # Errors
    /// [`RegistryError::Conflict`] when the name or the key is taken;
    /// [`RegistryError::Cluster`] when NATS does not answer.
    pub async fn add_operator(&self, name: &str, key: &PublicKey) -> Result<bool, RegistryError> {
        let key = key.to_string();
        let current = self.read_registry().await?;
        if let Some(existing) = current.operators.get(name) {
            return if existing.public_key == key {
                Ok(false)
            } else {
                Err(RegistryError::Conflict(format!("operator {name:?} already has another key")))
            };
        }
        if let Some(other) = current.operator_named(&key) {
            return Err(RegistryError::Conflict(format!("that key is already registered as {other:?}")));
        }
        let okey = operator_key(name);
        let value = encode(&OperatorRecord { public_key: key, added_at: crate::time::rfc3339(Utc::now()) });
        match self.kv.create(&okey, value.clone()).await {
            Ok(_) => {
                apply(&mut lock(&self.cache).0, &okey, Some(&value));
                Ok(true)
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err(RegistryError::Conflict(format!("operator {name:?} was added meanwhile")))
            }
            Err(e) => Err(self.failed(format!("cannot add the operator: {e}"))),
        }
    }

    /// Deletes `key` if it holds a record; whether it did.
    async fn remove(&self, key: &str) -> Result<bool, RegistryError> {
        if self.read::<serde_json::Value>(key).await?.is_none() {
            return Ok(false);
        }
        self.delete(key).await?;
        Ok(true)
    }

    /// Withdraws an unused token named by its id, hash or the token itself.
    ///
    /// # Errors
    /// As [`super::super::registry::revoke_token`]; [`RegistryError::Cluster`].
    pub async fn revoke_token(&self, given: &str) -> Result<Option<TokenRecord>, RegistryError> {
        let current = self.read_registry().await?;
        let hash = token_hash(given);
        let found: Vec<&TokenRecord> =
            current.tokens.iter().filter(|t| t.sha256 == hash || t.sha256 == given || t.id() == given).collect();
        let &[t] = found.as_slice() else {
            return if found.is_empty() {
                Ok(None)
            } else {
                Err(RegistryError::Conflict(format!("{given:?} names {} tokens; give the whole hash", found.len())))
            };
        };
        if let Some(conflict) = super::super::registry::used_conflict(t) {
            return Err(conflict);
        }
        self.delete(&token_key(&t.sha256)).await?;
        Ok(Some(t.clone()))
    }

    /// Records witnessed heads; an alert is set only where none stands.
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when NATS does not answer.
    pub async fn witness(&self, records: BTreeMap<String, WitnessRecord>) -> Result<(), RegistryError> {
        for (id, record) in records {
            let wkey = witness_key(&id);
            let mut w: WitnessRecord = self.read(&wkey).await?.map(|(w, _)| w).unwrap_or_default();
            w.head = record.head;
            if w.alert.is_none() {
                w.alert = record.alert;
            }
            self.put(&wkey, encode(&w)).await?;
        }
        Ok(())
    }

    /// Clears the alert standing against `device_id`; the head stays.
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when NATS does not answer.
    pub async fn clear_alert(&self, device_id: &str) -> Result<Option<AuditAlert>, RegistryError> {
        let wkey = witness_key(device_id);
        let Some((mut w, _)) = self.read::<WitnessRecord>(&wkey).await? else { return Ok(None) };
        let cleared = w.alert.take();
        if cleared.is_some() {
            self.put(&wkey, encode(&w)).await?;
        }
        Ok(cleared)
    }

    /// Copies every record of `registry` (a single relay's `registry.json`)
    /// into the bucket, never over a record that is there already: one with
    /// the same value is skipped, one with another value is a conflict,
    /// named by its key (and left as the bucket has it).
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when NATS does not answer.
    pub async fn import(&self, registry: &Registry) -> Result<Imported, RegistryError> {
        let mut records: Vec<(String, Bytes)> = Vec::new();
        records.extend(registry.devices.iter().map(|(id, d)| (device_key(id), encode(d))));
        records.extend(registry.operators.iter().map(|(name, o)| (operator_key(name), encode(o))));
        records.extend(registry.tokens.iter().map(|t| (token_key(&t.sha256), encode(t))));
        records.extend(registry.witness.iter().map(|(id, w)| (witness_key(id), encode(w))));
        let mut imported = Imported::default();
        for (key, value) in records {
            match self.kv.create(&key, value.clone()).await {
                Ok(_) => imported.written += 1,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    let there = self.kv.get(&key).await.map_err(|e| self.failed(format!("cannot read {key}: {e}")))?;
                    let same = there.as_deref().is_some_and(|v| {
                        serde_json::from_slice::<serde_json::Value>(v).ok()
                            == serde_json::from_slice::<serde_json::Value>(&value).ok()
                    });
                    if same { imported.skipped += 1 } else { imported.conflicts.push(key) }
                }
                Err(e) => return Err(self.failed(format!("cannot write {key}: {e}"))),
            }
        }
        Ok(imported)
    }

    /// Keeps this relay's copy in step with the bucket until `shutdown`:
    /// every change anyone makes is applied and [`Store::changed`] wakes.
    /// When the watch fails (NATS went away) it starts again from a full
    /// read once NATS answers, so changes made meanwhile are not missed.
    async fn keep_synced(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut current = lock(&self.watch).take();
        loop {
            let Some(mut w) = current.take() else {
                tokio::select! {
                    _ = tokio::time::sleep(REWATCH_EVERY) => {}
                    _ = crate::stopped(&mut shutdown) => return,
                }
                match read_all(&self.js, &self.kv).await {
                    Ok((fresh, w)) => {
                        tracing::info!("the cluster's registry is read again");
                        lock(&self.cache).0 = fresh;
                        self.changed.notify_one();
                        current = Some(w);
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot read the cluster's registry yet"),
                }
                continue;
            };
            loop {
                tokio::select! {
                    next = w.next() => match next {
                        Some(Ok(e)) => {
                            apply(&mut lock(&self.cache).0, &e.key, entry_value(&e));
                            self.changed.notify_one();
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the watch on the cluster's registry failed; reading it again");
                            break;
                        }
                        None => break,
                    },
                    _ = crate::stopped(&mut shutdown) => return,
                }
            }
        }
    }
}

/// Every record in the bucket, and the watch that read them, which goes
/// on with every later change.
async fn read_all(js: &async_nats::jetstream::Context, kv: &kv::Store) -> Result<(Registry, Watch), String> {
    let mut registry = Registry::default();
    let w = super::read_bucket(js, kv, REGISTRY_BUCKET, |e| apply(&mut registry, &e.key, entry_value(e))).await?;
    Ok((registry, w))
}

impl Store for NatsRegistry {
    fn cached(&self) -> MutexGuard<'_, (Registry, Stamp)> {
        lock(&self.cache)
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.changed.notified())
    }

    fn serve(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        Box::pin(self.keep_synced(shutdown))
    }

    fn load(&self) -> BoxFuture<'_, Result<Registry, RegistryError>> {
        Box::pin(self.read_registry())
    }

    fn enroll<'a>(
        &'a self,
        device_id: &'a str,
        key: &'a str,
        name: &'a str,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Enroll, RegistryError>> {
        Box::pin(NatsRegistry::enroll(self, device_id, key, name, token))
    }

    fn witness(&self, records: BTreeMap<String, WitnessRecord>) -> BoxFuture<'_, Result<(), RegistryError>> {
        Box::pin(NatsRegistry::witness(self, records))
    }

    fn new_token(&self, ttl: chrono::Duration) -> BoxFuture<'_, Result<(String, DateTime<Utc>), RegistryError>> {
        Box::pin(NatsRegistry::new_token(self, ttl))
    }

    fn add_operator<'a>(&'a self, name: &'a str, key: &'a PublicKey) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(NatsRegistry::add_operator(self, name, key))
    }

    fn remove_operator<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move { self.remove(&operator_key(name)).await })
    }

    fn remove_device<'a>(&'a self, device_id: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move { self.remove(&device_key(device_id)).await })
    }

    fn rename_device<'a>(&'a self, device_id: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let dkey = device_key(device_id);
            let Some((mut d, revision)) = self.read::<DeviceRecord>(&dkey).await? else { return Ok(false) };
            d.name = name.to_string();
            let value = encode(&d);
            match self.kv.update(&dkey, value.clone(), revision).await {
                Ok(_) => {
                    apply(&mut lock(&self.cache).0, &dkey, Some(&value));
                    Ok(true)
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    Err(RegistryError::Conflict(format!("device {device_id} changed meanwhile; try again")))
                }
                Err(e) => Err(self.failed(format!("cannot rename the device: {e}"))),
            }
        })
    }

    fn revoke_token<'a>(&'a self, given: &'a str) -> BoxFuture<'a, Result<Option<TokenRecord>, RegistryError>> {
        Box::pin(NatsRegistry::revoke_token(self, given))
    }

    fn clear_alert<'a>(&'a self, device_id: &'a str) -> BoxFuture<'a, Result<Option<AuditAlert>, RegistryError>> {
        Box::pin(NatsRegistry::clear_alert(self, device_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_key_lands_in_its_part_of_the_registry_and_a_delete_removes_it() {
        let mut r = Registry::default();
        let device = DeviceRecord { public_key: "k".into(), name: "laptop".into(), enrolled_at: "t".into() };
        apply(&mut r, &device_key("d-1"), Some(&encode(&device)));
        let operator = OperatorRecord { public_key: "ko".into(), added_at: "t".into() };
        apply(&mut r, &operator_key("ann.lee"), Some(&encode(&operator)));
        let token =
            TokenRecord { sha256: "ab".into(), expires_at: Utc::now(), created_at: None, used_at: None, used_by: None };
        apply(&mut r, &token_key("ab"), Some(&encode(&token)));
        apply(&mut r, &token_key("ab"), Some(&encode(&token)));
        apply(&mut r, &witness_key("d-1"), Some(&encode(&WitnessRecord::default())));
        assert_eq!(r.devices["d-1"].name, "laptop");
        assert_eq!(r.operator_named("ko"), Some("ann.lee"));
        assert_eq!(r.tokens.len(), 1, "a token's new value replaces its old one");
        assert!(r.witness.contains_key("d-1"));
        apply(&mut r, &device_key("d-1"), Some(b"not json"));
        assert!(r.devices.is_empty(), "a record that does not parse admits no one");
        apply(&mut r, &operator_key("ann.lee"), None);
        apply(&mut r, &token_key("ab"), None);
        assert!(r.operators.is_empty() && r.tokens.is_empty());
    }
}
