//! Relays sharing one registry over NATS (`support relay --cluster
//! nats://HOST:PORT`, issue 15).
//!
//! The registry lives in a JetStream key-value bucket
//! ([`NatsRegistry`], bucket [`REGISTRY_BUCKET`]) instead of
//! `registry.json`, so every relay of the cluster admits the same devices
//! and operators, a token enrols one device across the whole cluster, and
//! an admin change made through any relay (or its state directory) takes
//! effect on all of them. Without `--cluster` (nor `cluster` in
//! `relay.toml`) the relay is the single relay it always was.
//!
//! # Layout
//!
//! - `mod.rs`: [`ClusterConfig`] (flags and `relay.toml`) and [`connect`].
//! - `kv`: [`NatsRegistry`]: the registry in a key-value bucket.
//! - `route`: presence in an expiring bucket, and routing on core NATS subjects.

mod kv;
pub(crate) mod route;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use kv::{Imported, NatsRegistry, REGISTRY_BUCKET};
pub use route::{MAX_ROUTED_BYTES, PRESENCE_TTL_ENV};

use super::registry::RegistryError;
use crate::paths;

/// How long connecting to NATS may take before the command fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `relay.toml` read (bytes).
const MAX_RELAY_TOML_BYTES: u64 = 64 << 10;

/// Where the cluster's NATS is and how to log in to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT` (or `tls://HOST:PORT`); several, comma-separated, for a NATS cluster.
    pub url: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed), if the server wants one.
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the NATS server by; TLS is then required.
    pub ca: Option<PathBuf>,
}

/// `relay.toml` in the state directory: settings `support relay` reads
/// when its flags do not give them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayToml {
    /// As `--cluster`.
    cluster: Option<String>,
    /// As `--cluster-creds`.
    cluster_creds: Option<PathBuf>,
    /// As `--cluster-ca`.
    cluster_ca: Option<PathBuf>,
}

impl ClusterConfig {
    /// The cluster from the flags, else from `relay.toml` in `dir`; `None`
    /// for a single relay. A flag wins over the file, field by field.
    ///
    /// # Errors
    /// A message for an unreadable or malformed `relay.toml`, `creds` or
    /// `ca` without a cluster URL, or a URL that is not `nats://` or `tls://`.
    pub fn resolve(
        dir: &Path,
        url: Option<String>,
        creds: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<ClusterConfig>, String> {
        let path = dir.join("relay.toml");
        let file: RelayToml = match paths::read_capped(&path, MAX_RELAY_TOML_BYTES) {
            Ok(Some(bytes)) => {
                let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?
            }
            Ok(None) => RelayToml::default(),
            Err(e) => return Err(crate::ErrorChain(&e).to_string()),
        };
        let (creds, ca) = (creds.or(file.cluster_creds), ca.or(file.cluster_ca));
        let Some(url) = url.or(file.cluster) else {
            if creds.is_some() || ca.is_some() {
                return Err("--cluster-creds and --cluster-ca need --cluster nats://HOST:PORT".into());
            }
            return Ok(None);
        };
        let url = url.trim().to_string();
        let schemes = ["nats://", "tls://"];
        if url.split(',').any(|u| !schemes.iter().any(|s| u.trim().starts_with(s))) {
            return Err(format!("--cluster {url:?}: give nats://HOST:PORT (or tls://HOST:PORT)"));
        }
        Ok(Some(ClusterConfig { url, creds, ca }))
    }
}

/// Connects to the cluster's NATS, failing within [`CONNECT_TIMEOUT`];
/// afterwards the client reconnects by itself whenever the link drops.
///
/// # Errors
/// [`RegistryError::Cluster`] when the credentials cannot be read or the
/// server cannot be reached or refuses us.
pub async fn connect(config: &ClusterConfig) -> Result<async_nats::Client, RegistryError> {
    let failed = |what: String| RegistryError::Cluster { what, url: config.url.clone() };
    let mut options = async_nats::ConnectOptions::new()
        .name(concat!("support-relay/", env!("CARGO_PKG_VERSION")))
        .connection_timeout(CONNECT_TIMEOUT)
        // Unbounded: a relay outlives any NATS outage and recovers by itself.
        .max_reconnects(None);
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| failed(format!("cannot read the credentials {}: {e}", creds.display())))?;
    }
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
    let connecting = options.connect(servers.as_slice());
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(failed(format!("cannot connect: {e}"))),
        Err(_) => Err(failed(format!("cannot connect within {} s", (CONNECT_TIMEOUT * 2).as_secs()))),
    }
}

/// The key-value bucket `name` (whose values are at most `max_value`
/// bytes, each kept `max_age`, zero: for ever), made with one replica if
/// missing. The bucket's stream is made here, with the settings a NATS
/// client gives a key-value bucket (one value per key, rollups, direct
/// get), rather than by `create_key_value`, which needs account fields
/// that NATS servers before 2.10 (Debian's 2.9) do not send.
///
/// # Errors
/// What JetStream said, when the bucket can be neither opened nor made.
async fn bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
    max_value: i32,
) -> Result<async_nats::jetstream::kv::Store, String> {
    use async_nats::jetstream::stream;
    if let Ok(kv) = js.get_key_value(name).await {
        return Ok(kv);
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_messages: -1,
        max_bytes: -1,
        max_age,
        max_message_size: max_value,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    js.get_or_create_stream(config).await.map_err(|e| format!("cannot make the key-value bucket {name}: {e}"))?;
    js.get_key_value(name).await.map_err(|e| format!("cannot open the key-value bucket {name}: {e}"))
}

/// Reads every key of the bucket `name` (whose stream is `KV_<name>`),
/// giving each entry to `each`, within 30 s; returns the watch that read
/// them, which goes on with every later change.
async fn read_bucket(
    js: &async_nats::jetstream::Context,
    kv: &async_nats::jetstream::kv::Store,
    name: &str,
    mut each: impl FnMut(&async_nats::jetstream::kv::Entry),
) -> Result<async_nats::jetstream::kv::Watch, String> {
    use futures_util::StreamExt as _;
    const READ_WITHIN: Duration = Duration::from_secs(30);
    let mut w = kv.watch_with_history(">").await.map_err(|e| format!("cannot watch {name}: {e}"))?;
    // Asked now: the store's own `status` is what it read when it was opened.
    let mut stream =
        js.get_stream(format!("KV_{name}")).await.map_err(|e| format!("cannot read the state of {name}: {e}"))?;
    let info = stream.info().await.map_err(|e| format!("cannot read the state of {name}: {e}"))?;
    let (messages, last) = (info.state.messages, info.state.last_sequence);
    if messages == 0 {
        return Ok(w);
    }
    let read = async {
        while let Some(e) = w.next().await {
            let e = e.map_err(|e| format!("cannot read {name}: {e}"))?;
            each(&e);
            // Caught up: nothing pending, or at the stream's last message as
            // it was once the watch began. (Should the pending count be off,
            // as with keys rewritten under the watch, the second still ends
            // the read: every later write has a later sequence.)
            if e.delta == 0 || e.revision >= last {
                return Ok(());
            }
        }
        Err(format!("the watch on {name} ended"))
    };
    match tokio::time::timeout(READ_WITHIN, read).await {
        Ok(Ok(())) => Ok(w),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("cannot read {name} within {} s", READ_WITHIN.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_relay_toml_and_a_single_relay_needs_neither() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ClusterConfig::resolve(dir.path(), None, None, None), Ok(None));
        assert!(ClusterConfig::resolve(dir.path(), None, Some("c".into()), None).unwrap_err().contains("--cluster"));
        assert!(ClusterConfig::resolve(dir.path(), Some("http://x".into()), None, None).is_err());
        std::fs::write(dir.path().join("relay.toml"), "cluster = \"nats://a:4222\"\ncluster_ca = \"/ca.pem\"\n")
            .unwrap();
        let from_file = ClusterConfig::resolve(dir.path(), None, None, None).unwrap().unwrap();
        assert_eq!((from_file.url.as_str(), from_file.ca), ("nats://a:4222", Some(PathBuf::from("/ca.pem"))));
        let flag = ClusterConfig::resolve(dir.path(), Some("nats://b:1".into()), None, None).unwrap().unwrap();
        assert_eq!((flag.url.as_str(), flag.ca), ("nats://b:1", Some(PathBuf::from("/ca.pem"))));
        std::fs::write(dir.path().join("relay.toml"), "clutser = \"nats://a:4222\"\n").unwrap();
        assert!(ClusterConfig::resolve(dir.path(), None, None, None).unwrap_err().contains("relay.toml"));
    }
}
