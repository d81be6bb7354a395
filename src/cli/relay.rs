//! `support relay …`: run the relay and administer its registry.
//! Every subcommand works on one state directory (`--state DIR`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::out::outln;
use super::{Ctx, print_json};
use crate::identity::PublicKey;
use crate::relay::{self, registry};
use crate::tls::Identity;
use crate::{Error, ErrorChain, Secret};

/// `support relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The relay's state directory: registry, certificate, live status
    /// [default: the `relay` directory in the support state directory].
    #[arg(long, global = true, value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the relay in the foreground (systemd Type=notify ready).
    Serve(ServeArgs),
    /// Print a one-time token that enrolls one device.
    EnrollToken {
        /// How long the token stays valid (1m to 30d), e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        ttl: humantime::Duration,
    },
    /// Admit an operator's key to the relay.
    AddOperator { name: String, public_key: String },
    /// Stop admitting an operator (its open connections end when they next reconnect).
    RemoveOperator { name: String },
    /// List enrolled devices: online, last heartbeat, the grant each reported.
    Devices {
        #[arg(long)]
        json: bool,
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
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let dir = args.state.clone().unwrap_or_else(|| ctx.paths.state_dir.join("relay"));
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let reg = |e: registry::RegistryError| Error::Failed(ErrorChain(&e).to_string());
    match args.command {
        Command::Serve(a) => serve(dir, a),
        Command::EnrollToken { ttl } => {
            let ttl: Duration = ttl.into();
            if !(60..=30 * 86_400).contains(&ttl.as_secs()) {
                return Err(Error::Usage("--ttl must be between 1m and 30d".into()));
            }
            let ttl = chrono::Duration::from_std(ttl).map_err(|e| Error::Usage(e.to_string()))?;
            let (token, expires_at) = registry::new_token(&dir, ttl).map_err(reg)?;
            // Printing it is this command's job; nothing else here may show it.
            let token = Secret::new(token);
            outln!("{}", token.expose())?;
            eprintln!(
                "One device may enroll with it until {} (it is stored only as a hash):\n  support daemon --relay wss://RELAY:PORT --relay-ca cert.pem --enroll {}",
                super::local(expires_at),
                token.expose()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::AddOperator { name, public_key } => {
            if !crate::trust::valid_name(&name) {
                return Err(Error::Usage(format!("operator name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -")));
            }
            let key: PublicKey = public_key.trim().parse().map_err(|e| Error::Usage(format!("{e}")))?;
            match registry::add_operator(&dir, &name, &key) {
                Ok(true) => eprintln!("operator {name} admitted ({})", key.fingerprint()),
                Ok(false) => eprintln!("operator {name} was already admitted with that key"),
                Err(registry::RegistryError::Conflict(m)) => return Err(Error::Usage(m)),
                Err(e) => return Err(reg(e)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::RemoveOperator { name } => {
            if registry::remove_operator(&dir, &name).map_err(reg)? {
                eprintln!("operator {name} removed");
            } else {
                eprintln!("no operator named {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices { json } => {
            let devices = relay::devices(&dir).map_err(reg)?;
            if json {
                print_json(&serde_json::to_value(&devices).unwrap_or_default())?;
            } else {
                if !relay::is_running(&dir) {
                    eprintln!("(no relay is running with {}; every device shows offline)", dir.display());
                }
                super::operator::print_devices(&devices)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(dir: PathBuf, a: ServeArgs) -> Result<ExitCode, Error> {
    let identity = match (&a.cert, &a.key, a.self_signed) {
        (Some(cert), Some(key), false) => {
            Identity::from_pem(cert, key).map_err(|e| Error::Usage(ErrorChain(&e).to_string()))?
        }
        (None, None, true) => {
            let (identity, made) =
                Identity::self_signed(&dir, &a.san).map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?;
            let verb = if made { "made" } else { "reusing" };
            eprintln!("{verb} the self-signed certificate {}", dir.join("cert.pem").display());
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
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", a.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::Failed(e.to_string()))?;
        // Whoever started us may stop reading stdout; that must not stop the relay.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = writeln!(out, "certificate fingerprint {}", identity.fingerprint());
        let _ = out.flush();
        drop(out);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let options = relay::Options { max_connections: a.max_connections };
        relay::run(listener, tls, dir, options, super::daemon::shutdown_signal())
            .await
            .map_err(|e| Error::Failed(ErrorChain(&e).to_string()))?;
        Ok(ExitCode::SUCCESS)
    })
}
