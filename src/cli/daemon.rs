//! `support daemon`

use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

use super::Ctx;
use crate::Error;
use crate::daemon::{self, LinkConfig, Options};
use crate::dial::RelayUrl;
use crate::tls::RelayTrust;

/// Run the daemon in the foreground (systemd `Type=notify` ready).
///
/// It enforces the owner's grant on every task, serves the loopback
/// control API for `support status`, `tasks`, `stop` and `watch`, and
/// stops on SIGTERM or SIGINT after stopping every running task.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control API's port on 127.0.0.1 (0: any free port, written to daemon.json).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    control_port: u16,
    /// The owner's console's port on 127.0.0.1 (also `console_port` in daemon.toml;
    /// 0: any free port, written to daemon.json).
    #[arg(long, value_name = "PORT")]
    console_port: Option<u16>,
    /// The most tasks running at once; more are denied BUSY.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_tasks: u16,
    /// The relay to keep a link to: wss://HOST:PORT (also `relay` in daemon.toml).
    #[arg(long, value_name = "URL")]
    relay: Option<String>,
    /// Recognise the relay by this CA certificate (PEM), or `system` for the system roots.
    #[arg(long, value_name = "PEM|system")]
    relay_ca: Option<String>,
    /// Recognise the relay by its certificate's SHA-256: sha256:HEX (as `relay serve` prints).
    #[arg(long, value_name = "SHA256")]
    relay_fingerprint: Option<String>,
    /// A one-time enrollment token from `support relay enroll-token`, for the first connection.
    #[arg(long, value_name = "TOKEN")]
    enroll: Option<String>,
}

/// `daemon.toml` in the config directory: the same settings as the flags,
/// which win over it. It may hold the enrollment token, so it must be 0600.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    relay: Option<String>,
    relay_ca: Option<String>,
    relay_fingerprint: Option<String>,
    enroll: Option<crate::Secret>,
    console_port: Option<u16>,
}

/// `daemon.toml`, or the defaults when there is none.
fn file_config(ctx: &Ctx) -> Result<FileConfig, Error> {
    let path = ctx.paths.daemon_config();
    Ok(match crate::paths::read_secret(&path, 64 * 1024)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| Error::Usage(format!("{}: not UTF-8", path.display())))?;
            toml::from_str(&text).map_err(|e| Error::Usage(toml_error(&path, &text, &e)))?
        }
        None => FileConfig::default(),
    })
}

/// The relay link from the flags and `daemon.toml`, or `None` when neither names a relay.
fn link_config(args: &Args, file: FileConfig) -> Result<Option<LinkConfig>, Error> {
    let Some(relay) = args.relay.clone().or(file.relay) else {
        if args.relay_ca.is_some() || args.relay_fingerprint.is_some() || args.enroll.is_some() {
            return Err(Error::Usage("--relay-ca, --relay-fingerprint and --enroll need --relay URL".into()));
        }
        return Ok(None);
    };
    let url: RelayUrl = relay.parse().map_err(|e: crate::dial::DialError| Error::Usage(e.to_string()))?;
    let (ca, fp) = if args.relay_ca.is_some() || args.relay_fingerprint.is_some() {
        (args.relay_ca.clone(), args.relay_fingerprint.clone())
    } else {
        (file.relay_ca, file.relay_fingerprint)
    };
    let usage = |e: crate::tls::TlsError| Error::Usage(crate::ErrorChain(&e).to_string());
    let trust = RelayTrust::from_flags(ca.as_deref(), fp.as_deref()).map_err(usage)?;
    let tls = trust.client_config().map_err(usage)?;
    Ok(Some(LinkConfig { url, tls, enroll_token: args.enroll.clone().map(crate::Secret::new).or(file.enroll) }))
}

/// A parse error of `daemon.toml` as its message and line, never the
/// snippet of the file that toml's own text quotes: the line may hold
/// the enrolment token.
fn toml_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    format!("{}{at}: {}", path.display(), e.message())
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let file = file_config(ctx)?;
    let console_port = args.console_port.or(file.console_port).unwrap_or(0);
    let link = link_config(&args, file)?;
    // One thread runs everything; audit appends go to a blocking thread
    // that ends one second after its last use, so an idle daemon keeps
    // just this thread and the inotify watcher's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .thread_keep_alive(Duration::from_secs(1))
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port))
            .await
            .map_err(|e| Error::Failed(format!("cannot listen on 127.0.0.1:{}: {e}", args.control_port)))?;
        // The running image itself, even if its file was replaced since.
        let cgroup_helper = Some(std::path::PathBuf::from("/proc/self/exe"));
        let notify = daemon::NotifyOptions::from_env();
        let options = Options { max_tasks: args.max_tasks.into(), link, cgroup_helper, notify, console_port };
        daemon::run(&ctx.paths, options, listener, shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
