//! `support relay …`: run the relay and administer its registry.
//! Every subcommand works on one state directory (`--state DIR`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::out::outln;
use super::relay_admin as admin;
use super::{Ctx, print_json};
use crate::identity::PublicKey;
use crate::relay::cluster::{self, ClusterConfig, NatsRegistry};
use crate::relay::store::{FileStore, Store};
use crate::relay::{self, registry};
use crate::text::printable;
use crate::tls::Identity;
use crate::{Error, ErrorChain, Secret};
use std::sync::Arc;

/// `support relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The relay's state directory: registry, certificate, live status
    /// [default: the `relay` directory in the support state directory].
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Share one registry with other relays through NATS with JetStream:
    /// nats://HOST:PORT, comma-separated for several (also `cluster` in
    /// relay.toml in the state directory).
    #[arg(long, global = true, value_name = "URL")]
    cluster: Option<String>,
    /// A NATS credentials file (.creds) for --cluster (also `cluster_creds` in relay.toml).
    #[arg(long, global = true, value_name = "FILE")]
    cluster_creds: Option<PathBuf>,
    /// Verify --cluster's NATS by this CA certificate and require TLS (also `cluster_ca` in relay.toml).
    #[arg(long, global = true, value_name = "PEM")]
    cluster_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// Whether this is `support relay serve` (which logs at `info` by default, like the daemon).
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the relay in the foreground (systemd Type=notify ready).
    Serve(ServeArgs),
    /// Print a one-time token that enrolls one device, and the one command
    /// that enrols it and starts its daemon (`support service install ...`).
    EnrollToken {
        /// How long the token stays valid (1m to 30d), e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        ttl: humantime::Duration,
        /// The relay's address as devices reach it, for the command printed
        /// [default: wss://NAME:8443, NAME the self-signed certificate's first
        /// name that is not local].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Admit an operator's key to the relay.
    AddOperator { name: String, public_key: String },
    /// Stop admitting an operator: its open connections end at once, its
    /// running requests are cancelled on their devices, and it is told why.
    RemoveOperator { name: String },
    /// List the operators the relay admits: name, key fingerprint, when added.
    Operators {
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List enrolment tokens until they expire: id, created, expires, used
    /// (never the token itself, which the relay does not keep).
    Tokens {
        /// One JSON array on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw an unused enrolment token, by its id (from `tokens`).
    RevokeToken {
        /// The token's id (or the token itself).
        id: String,
    },
    /// Forget a device: its connection closes at once, and it can come back
    /// only with a new enrolment token.
    RemoveDevice {
        /// The device's id, or its name if no other device has it.
        device: String,
    },
    /// Rename a device; operators may then address it by that name.
    RenameDevice {
        /// The device's id, or its current name if no other device has it.
        device: String,
        /// The new name: 1 to 64 printable characters.
        name: String,
    },
    /// List enrolled devices: online, last heartbeat, the grant each reported.
    ///
    /// Asks the running relay (over `admin.sock` in the state directory);
    /// without an answer, shows its `live.json` snapshot and its age.
    Devices {
        /// One JSON array of devices on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Copy this state directory's registry.json into a cluster's NATS
    /// (never over a record already there), for a single relay joining a
    /// cluster; stop the relay first, then set `cluster` in relay.toml.
    Migrate {
        /// The cluster's NATS: nats://HOST:PORT (--cluster-creds and --cluster-ca apply).
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Replace the self-signed certificate with a new key and certificate
    /// for a year, naming what the old one named and each --san; prints
    /// the new fingerprint. Restart the relay to serve it.
    RotateCert {
        /// A name to add (DNS name or IP address); repeat for several.
        #[arg(long, value_name = "NAME")]
        san: Vec<String>,
        /// One JSON object: `cert`, `names`, `not_after`, `fingerprint`, `previous` (or null).
        #[arg(long)]
        json: bool,
    },
    /// Clear the audit alert standing against a device, once you have
    /// looked into it; the witnessed head stays, so later tampering is
    /// flagged again.
    ClearAlert {
        /// The device id.
        device: String,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one. Prints `listening on ADDR`.
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR")]
    listen: String,
    /// Certificate chain (PEM, leaf first).
    #[arg(long, value_name = "PEM", requires = "key", conflicts_with = "self_signed")]
    cert: Option<PathBuf>,
    /// Private key (PEM, 0600).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Make (once) and use a self-signed certificate in the state directory.
    #[arg(long)]
    self_signed: bool,
    /// Extra names for the self-signed certificate (besides localhost, 127.0.0.1, ::1).
    #[arg(long, value_name = "NAME", requires = "self_signed")]
    san: Vec<String>,
    /// Connections held at once.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    max_connections: usize,
    /// Connections not yet past hello held at once; more wait in the kernel's backlog.
    #[arg(long, default_value_t = relay::MAX_UNAUTHENTICATED, value_name = "N")]
    max_unauthenticated: usize,
    /// Runs one operator connection may send a second (bursts of twice as many); more are refused BUSY.
    #[arg(long, default_value_t = relay::RUNS_PER_SECOND, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_runs_per_second: u32,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let dir = args.state.clone().unwrap_or_else(|| ctx.paths.state_dir.join("relay"));
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let reg = |e: registry::RegistryError| match e {
        registry::RegistryError::File(f) => file_error(&dir, f),
        e => Error::Failed(ErrorChain(&e).to_string()),
    };
    let cluster =
        ClusterConfig::resolve(&dir, args.cluster.clone(), args.cluster_creds.clone(), args.cluster_ca.clone())
            .map_err(Error::Usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))?;
    let command = match args.command {
        Command::Serve(a) => {
            drop(runtime);
            return serve(dir, a, cluster);
        }
        Command::RotateCert { san, json } => return rotate_cert(&dir, &san, json),
        Command::Migrate { to } => {
            let to = ClusterConfig::resolve(&dir, Some(to), args.cluster_creds.clone(), args.cluster_ca.clone())
                .map_err(Error::Usage)?
                .expect("a URL was given");
            return runtime.block_on(migrate(&dir, &to)).map_err(reg);
        }
        c => c,
    };
    let nats = match &cluster {
        Some(c) => Some(runtime.block_on(open_cluster(c)).map_err(reg)?),
        None => None,
    };
    let store: Arc<dyn Store> = match &nats {
        Some(n) => n.clone(),
        None => Arc::new(FileStore::at(&dir)),
    };
    let clustered = cluster.is_some();
    match command {
        Command::Serve(_) | Command::Migrate { .. } | Command::RotateCert { .. } => unreachable!("handled above"),
        Command::EnrollToken { ttl, url } => {
            let ttl: Duration = ttl.into();
            if !(60..=30 * 86_400).contains(&ttl.as_secs()) {
                return Err(Error::Usage("--ttl must be between 1m and 30d".into()));
            }
            let ttl = chrono::Duration::from_std(ttl).map_err(|e| Error::Usage(ErrorChain(&e).to_string()))?;
            let (token, expires_at) = runtime.block_on(store.new_token(ttl)).map_err(reg)?;
            // Printing it is this command's job; nothing else here may show it.
            let token = Secret::new(token);
            outln!("{}", token.expose())?;
            eprintln!(
                "One device may enroll with it until {} (it is stored only as a hash). On the owner's machine:\n  {}",
                super::human(expires_at),
                install_line(&dir, url.as_deref(), token.expose())
            );
            let id = registry::token_hash(token.expose());
            let id = crate::text::head(&id, registry::TOKEN_ID_HEX);
            eprintln!("Its id is {id} (support relay tokens); withdraw it with: support relay revoke-token {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::AddOperator { name, public_key } => {
            if !crate::trust::valid_name(&name) {
                return Err(Error::Usage(format!("operator name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -")));
            }
            let key: PublicKey = public_key.trim().parse().map_err(|e| Error::Usage(format!("{e}")))?;
            match runtime.block_on(store.add_operator(&name, &key)) {
                Ok(true) => eprintln!("operator {name} admitted ({})", key.fingerprint()),
                Ok(false) => eprintln!("operator {name} was already admitted with that key"),
                Err(registry::RegistryError::Conflict(m)) => return Err(Error::Usage(m)),
                Err(e) => return Err(reg(e)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RemoveOperator { name } => {
            if !runtime.block_on(store.remove_operator(&name)).map_err(reg)? {
                return Err(Error::Usage(format!(
                    "no operator named {:?} (support relay operators lists them)",
                    printable(&name)
                )));
            }
            eprintln!("operator {name} removed; {}", live_effect(&dir, clustered, "its open connections"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Operators { json } => admin::print_operators(&runtime.block_on(store.load()).map_err(reg)?, json),
        Command::Tokens { json } => {
            admin::print_tokens(&runtime.block_on(store.load()).map_err(reg)?, chrono::Utc::now(), json)
        }
        Command::RevokeToken { id } => match runtime.block_on(store.revoke_token(id.trim())) {
            Ok(Some(t)) => {
                eprintln!("token {} revoked: no device can enroll with it", t.id());
                Ok(ExitCode::SUCCESS)
            }
            Ok(None) => Err(Error::Usage(format!(
                "no enrolment token has the id {:?} (support relay tokens lists them)",
                printable(&id)
            ))),
            Err(registry::RegistryError::Conflict(m)) => Err(Error::Usage(m)),
            Err(e) => Err(reg(e)),
        },
        Command::RemoveDevice { device } => {
            let id = admin::resolve_enrolled(&runtime.block_on(store.load()).map_err(reg)?, &device)?;
            if !runtime.block_on(store.remove_device(&id)).map_err(reg)? {
                return Err(Error::Failed(format!("device {id} was removed meanwhile")));
            }
            eprintln!("device {id} removed; {}", live_effect(&dir, clustered, "its connection"));
            eprintln!("It can come back only with a new token: support relay enroll-token");
            Ok(ExitCode::SUCCESS)
        }
        Command::RenameDevice { device, name } => {
            let name = super::device_name::check_name(&name)?;
            let id = admin::resolve_enrolled(&runtime.block_on(store.load()).map_err(reg)?, &device)?;
            if !runtime.block_on(store.rename_device(&id, name)).map_err(reg)? {
                return Err(Error::Failed(format!("device {id} was removed meanwhile")));
            }
            eprintln!("device {id} is now named {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::ClearAlert { device } => {
            let registry = runtime.block_on(store.load()).map_err(reg)?;
            clear_alert(&registry, &device, runtime.block_on(store.clear_alert(&device)).map_err(reg)?)
        }
        Command::Devices { json } => {
            let mut listing = relay::devices_in(&dir, runtime.block_on(store.load()).map_err(reg)?);
            if let (relay::Source::NotRunning, Some(n)) = (&listing.source, &nats) {
                let (client, url) = n.client();
                let held = runtime.block_on(cluster::route::present(client, url)).map_err(reg)?;
                listing.devices = cluster::route::listed(listing.devices, &held);
                listing.source = relay::Source::Cluster;
            }
            match listing.source {
                relay::Source::NotRunning if !json => {
                    eprintln!("(no relay is running with {}; every device shows offline)", dir.display());
                }
                relay::Source::Snapshot(at) => eprintln!("{}", snapshot_note(at, chrono::Utc::now())),
                _ => {}
            }
            if json {
                print_json(&serde_json::to_value(&listing.devices).unwrap_or_default())?;
            } else {
                super::operator::print_devices(&listing.devices)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `support relay migrate --to URL`: `registry.json` of `dir` into the cluster's bucket.
/// Exit 1 while a relay runs with `dir` (it could change the file meanwhile) or on a conflict.
async fn migrate(dir: &std::path::Path, to: &ClusterConfig) -> Result<ExitCode, registry::RegistryError> {
    if relay::is_running(dir) {
        let why = format!(
            "a relay is running with {}; stop it first, so that nothing changes during the move",
            dir.display()
        );
        return Err(registry::RegistryError::Conflict(why));
    }
    let (file, _) = registry::Registry::load(dir)?;
    let imported = open_cluster(to).await?.import(&file).await?;
    eprintln!(
        "{} records written to {}, {} there already",
        imported.written,
        cluster::REGISTRY_BUCKET,
        imported.skipped
    );
    if !imported.conflicts.is_empty() {
        let keys = imported.conflicts.join(", ");
        return Err(registry::RegistryError::Conflict(format!(
            "the cluster holds another value for {keys}; left as the cluster has it"
        )));
    }
    eprintln!("Now add to {}: cluster = {:?}", dir.join("relay.toml").display(), to.url);
    Ok(ExitCode::SUCCESS)
}

/// Connects to the cluster's NATS and opens its registry.
async fn open_cluster(config: &ClusterConfig) -> Result<Arc<NatsRegistry>, registry::RegistryError> {
    let client = cluster::connect(config).await?;
    Ok(Arc::new(NatsRegistry::open(client, &config.url).await?))
}

/// What a removal did to a running relay's live connections, for the
/// message: `what` ("its connection") ended now, or will within a second.
fn live_effect(dir: &std::path::Path, clustered: bool, what: &str) -> String {
    if clustered {
        return format!("every relay of the cluster ends {what} as soon as it sees the change");
    }
    if !relay::is_running(dir) {
        return "no relay is running with this state directory".into();
    }
    match relay::reload(dir) {
        Some(0) => format!("{what}: none open"),
        Some(n) => format!("{what}: {n} ended now"),
        None => format!(
            "the running relay did not answer on its admin socket; {what} end within a second, when it sees the registry change"
        ),
    }
}

/// Why `devices` shows a snapshot, and how old it is.
fn snapshot_note(written_at: Option<chrono::DateTime<chrono::Utc>>, now: chrono::DateTime<chrono::Utc>) -> String {
    match written_at {
        Some(t) => format!(
            "(the running relay did not answer on its admin socket; showing its snapshot from {} s ago)",
            (now - t).num_seconds().max(0)
        ),
        None => "(the running relay did not answer on its admin socket, and has no readable snapshot)".into(),
    }
}

/// A refused file in the state directory: when it belongs to the user who
/// runs the relay, the fix is to run this command as that user, not to
/// `chown` the relay's files away from it.
fn file_error(dir: &std::path::Path, e: crate::paths::FileError) -> Error {
    let Some(user) = relay::owner_to_run_as(dir, &e) else { return Error::Failed(ErrorChain(&e).to_string()) };
    let path = match &e {
        crate::paths::FileError::Unsafe { path, .. } => path.display().to_string(),
        _ => dir.display().to_string(),
    };
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    Error::Failed(run_as_advice(&path, &user, &args))
}

fn run_as_advice(path: &str, user: &str, args: &[String]) -> String {
    let quoted: Vec<String> =
        args.iter().map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned())).collect();
    let sudo_user = shlex::try_quote(user).map_or_else(|_| user.into(), |q| q.into_owned());
    format!(
        "{path} belongs to {user}, the relay's user (the owner of its state directory); changing its owner \
         would lock the relay out of it. Run the command as {user} instead:\n  sudo -u {sudo_user} support {}",
        quoted.join(" ")
    )
}

fn relay_error(dir: &std::path::Path, e: relay::RelayError) -> Error {
    match e {
        relay::RelayError::File(f) | relay::RelayError::Registry(registry::RegistryError::File(f)) => {
            file_error(dir, f)
        }
        e => Error::Failed(ErrorChain(&e).to_string()),
    }
}

/// The one command that enrols a device with `token` and starts its
/// daemon: the relay at `url` (or the self-signed certificate's first
/// non-local name), recognised by that certificate's fingerprint when the
/// state directory has one, else by the system's CAs.
fn install_line(dir: &std::path::Path, url: Option<&str>, token: &str) -> String {
    let files = crate::paths::RelayPaths::new(dir);
    let cert = Identity::from_pem(&files.cert(), &files.key()).ok().and_then(|i| i.info(&files.cert()).ok());
    let url = url.map(str::to_string).unwrap_or_else(|| {
        let local = crate::tls::LOCAL_NAMES;
        let name = cert.as_ref().and_then(|c| c.names.iter().find(|n| !local.contains(&n.as_str())).cloned());
        format!("wss://{}:8443", name.as_deref().unwrap_or("RELAY-HOST"))
    });
    let trust = match &cert {
        Some(c) => format!("--relay-fingerprint {}", c.fingerprint),
        None => "--relay-ca system".to_string(),
    };
    format!("support service install --relay {} {trust} --enroll {token}", shlex::try_quote(&url).unwrap_or_default())
}

/// A self-signed certificate that could not be used, with the fix for one
/// that lacks a `--san`.
fn self_signed_error(dir: &std::path::Path, e: crate::tls::TlsError) -> Error {
    match &e {
        crate::tls::TlsError::MissingNames { missing, .. } => {
            let sans: Vec<String> =
                missing.iter().map(|m| format!("--san {}", shlex::try_quote(m).unwrap_or_default())).collect();
            Error::Usage(format!(
                "{}; the certificate kept is not replaced by itself (clients pin it). To make a new one that names them \
                 too: support relay --state {} rotate-cert {}; then give clients its fingerprint",
                ErrorChain(&e),
                dir.display(),
                sans.join(" ")
            ))
        }
        _ => Error::Failed(ErrorChain(&e).to_string()),
    }
}

/// `support relay rotate-cert`: a new self-signed key and certificate.
fn rotate_cert(dir: &std::path::Path, sans: &[String], json: bool) -> Result<ExitCode, Error> {
    let (identity, old) = Identity::rotate_self_signed(dir, sans).map_err(|e| self_signed_error(dir, e))?;
    let cert = crate::paths::RelayPaths::new(dir).cert();
    let info = identity.info(&cert).map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?;
    let previous = old.map(|o| o.fingerprint);
    if json {
        super::print_json(&serde_json::json!({
            "cert": cert,
            "names": info.names,
            "not_after": info.not_after,
            "fingerprint": info.fingerprint,
            "previous": previous,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}", info.fingerprint)?;
    eprintln!(
        "made a new self-signed certificate {} for {}, valid until {}",
        cert.display(),
        info.names.join(", "),
        super::human(info.not_after)
    );
    if let Some(p) = previous {
        eprintln!(
            "It replaces {p}: clients pinned to that one must be given the new fingerprint (--relay-fingerprint) or cert.pem (--relay-ca)."
        );
    }
    eprintln!(
        "Restart the relay to serve it (systemctl restart support-relay, or stop and start `support relay serve`)."
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(dir: PathBuf, a: ServeArgs, cluster: Option<ClusterConfig>) -> Result<ExitCode, Error> {
    // Before READY=1 and `listening on`: a relay that says it is ready must be able to run.
    let state = relay::State::open(dir.clone()).map_err(|e| relay_error(&dir, e))?;
    let identity = match (&a.cert, &a.key, a.self_signed) {
        (Some(cert), Some(key), false) => {
            Identity::from_pem(cert, key).map_err(|e| Error::Usage(ErrorChain(&e).to_string()))?
        }
        (None, None, true) => {
            let (identity, made) = Identity::self_signed(&dir, &a.san).map_err(|e| self_signed_error(&dir, e))?;
            let cert = crate::paths::RelayPaths::new(&dir).cert();
            let info = identity.info(&cert).map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?;
            let verb = if made { "made" } else { "reusing" };
            eprintln!(
                "{verb} the self-signed certificate {} for {}, valid until {}",
                cert.display(),
                info.names.join(", "),
                super::human(info.not_after)
            );
            let left = info.not_after - chrono::Utc::now();
            if left < chrono::Duration::days(30) {
                eprintln!(
                    "warning: it {} in {} days; make a new one with `support relay --state {} rotate-cert` and give clients its fingerprint",
                    if left < chrono::Duration::zero() { "expired" } else { "expires" },
                    left.num_days().abs(),
                    dir.display()
                );
            }
            identity
        }
        _ => return Err(Error::Usage("give --cert PEM --key PEM, or --self-signed".into())),
    };
    let tls = identity.server_config().map_err(|e| Error::Usage(ErrorChain(&e).to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        // Before `listening on`: a relay of a cluster is ready once it holds the cluster's registry.
        let cluster = match &cluster {
            Some(c) => Some(open_cluster(c).await.map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?),
            None => None,
        };
        let listener =
            relay::listen(&a.listen).await.map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", a.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?;
        // Whoever started us may stop reading stdout; that must not stop the relay.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = writeln!(out, "certificate fingerprint {}", identity.fingerprint());
        let _ = out.flush();
        drop(out);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let options = relay::Options {
            max_connections: a.max_connections,
            max_unauthenticated: a.max_unauthenticated,
            max_runs_per_second: a.max_runs_per_second,
            cluster,
        };
        relay::run(listener, tls, state, options, super::daemon::shutdown_signal())
            .await
            .map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `support relay clear-alert DEVICE` once the store answered with what
/// it `cleared`: exit 2 for a device not enrolled in `r`.
fn clear_alert(
    r: &registry::Registry,
    device: &str,
    cleared: Option<crate::protocol::AuditAlert>,
) -> Result<ExitCode, Error> {
    if !r.devices.contains_key(device) {
        let device = crate::text::printable(device);
        return Err(Error::Usage(format!("no enrolled device {device:?} (see `support relay devices`)")));
    }
    match cleared {
        Some(a) => eprintln!(
            "cleared the {} audit alert of {device} (found {})",
            a.kind.as_str(),
            super::human_text(&a.detected_at)
        ),
        None => eprintln!("no audit alert stands against {device}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_names_the_relays_user_and_quotes_the_command() {
        let args: Vec<String> = ["relay", "--state", "/var/lib/a b", "enroll-token"].map(String::from).into();
        let advice = run_as_advice("/var/lib/a b", "#998", &args);
        assert!(advice.ends_with("sudo -u '#998' support relay --state '/var/lib/a b' enroll-token"), "{advice}");
        assert!(!advice.contains("chown "), "{advice}");
    }

    #[test]
    fn the_snapshot_note_says_its_age() {
        let now = chrono::Utc::now();
        assert!(snapshot_note(Some(now - chrono::Duration::seconds(3)), now).contains("from 3 s ago"));
        assert!(snapshot_note(None, now).contains("no readable snapshot"));
    }
}
