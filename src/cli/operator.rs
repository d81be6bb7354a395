//! `support operator …`: the support side. Each subcommand but `keygen`
//! and `init` connects to the relay with `--relay`,
//! `--relay-ca`/`--relay-fingerprint` and `--key` (or
//! `SUPPORT_OPERATOR_RELAY`, `SUPPORT_OPERATOR_RELAY_CA`,
//! `SUPPORT_OPERATOR_RELAY_FINGERPRINT`, `SUPPORT_OPERATOR_KEY`), and for
//! what none of those give, the profile `support operator init` wrote
//! ([`operator_profile`](super::operator_profile)).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use super::operator_profile::{self, Profile};
use super::out::outln;
use super::table::{Listing, Wrap};
use super::{print_json, printable};
use crate::dial::{DialError, RelayUrl};
use crate::identity::KeyPair;
use crate::operator::{Outcome, Session};
use crate::protocol::{DenyCode, DeviceFrame, RelayCode, Run, Status, StoppedBy, Stream};
use crate::tls::RelayTrust;
use crate::transcript::Transcript;
use crate::{Error, Paths};

/// Where the relay is and who we are.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// The relay: wss://HOST:PORT.
    #[arg(long, env = "SUPPORT_OPERATOR_RELAY", value_name = "URL", global = true)]
    relay: Option<String>,
    /// The relay's CA certificate (PEM), or `system`.
    #[arg(long, env = "SUPPORT_OPERATOR_RELAY_CA", value_name = "PEM|system", global = true)]
    relay_ca: Option<String>,
    /// The relay certificate's SHA-256 (sha256:HEX), instead of --relay-ca.
    #[arg(long, env = "SUPPORT_OPERATOR_RELAY_FINGERPRINT", value_name = "SHA256", global = true)]
    relay_fingerprint: Option<String>,
    /// The operator's private key (from `support operator keygen`).
    #[arg(long, env = "SUPPORT_OPERATOR_KEY", value_name = "FILE", global = true)]
    key: Option<PathBuf>,
}

/// `support operator`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Set this machine up as an operator once: make the key (PEM) and write
    /// operator.toml with --relay and --relay-ca or --relay-fingerprint, which
    /// every operator command then uses; prints the public key.
    Init {
        /// Replace an existing operator.toml (the key is kept if it exists).
        #[arg(long)]
        force: bool,
    },
    /// Make an operator key pair; prints the public key to give the relay admin and the owner.
    Keygen {
        /// Where to write the private key (0600; refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// List the devices enrolled on the relay.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Run a catalogued action on a device and follow its output; exits with
    /// the remote exit code, 4 if refused, 3 if the device is offline.
    Run {
        /// The device id (`d-…`, from `support operator devices`), or its name if no other device has it.
        device: String,
        /// The catalogue action, e.g. disk-usage.
        action: String,
        /// Parameters, NAME=VALUE.
        params: Vec<String>,
        /// Print every frame as one JSON line instead.
        #[arg(long)]
        json: bool,
        /// Print the device's output as it came, escape sequences and all
        /// (by default every control character but newline and tab shows as `?`).
        #[arg(long)]
        raw: bool,
    },
    /// Put the owner's AI coding agent on a task (tier 3) and follow its
    /// transcript; exits like `run`.
    Agent {
        /// The device id, or its name if no other device has it.
        device: String,
        /// The task for the agent; `-` reads it from stdin.
        prompt: String,
        /// plan: the agent proposes only; build: it may make changes.
        #[arg(long, value_enum, default_value = "plan")]
        mode: AgentMode,
        /// Print every frame as one JSON line instead.
        #[arg(long)]
        json: bool,
        /// Print the agent's output as it came (its stream, not the transcript), escape sequences and all
        /// (by default every control character but newline and tab shows as `?`).
        #[arg(long)]
        raw: bool,
    },
    /// An interactive shell on a device (tier 4), or with `-- CMD ...` one
    /// raw shell command (`/bin/sh -c "CMD ..."` as the owner, with the
    /// usual output cap and timeout); exits with the shell's status, like `run`.
    ///
    /// Without a command this terminal goes raw and works in the owner's
    /// login shell on a pseudo-terminal there, watched live by the owner
    /// and recorded; exit the shell to end it. The words after `--` are
    /// joined with spaces, as ssh(1) does, and the device's shell parses them.
    Shell {
        /// The device id, or its name if no other device has it.
        device: String,
        /// The command line; none opens an interactive shell.
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
        /// Print every frame as one JSON line instead.
        #[arg(long)]
        json: bool,
        /// Print the device's output as it came, escape sequences and all
        /// (by default every control character but newline and tab shows as `?`).
        #[arg(long)]
        raw: bool,
    },
    /// Ask a device to stop one of your running requests.
    Cancel {
        /// The device id, or its name if no other device has it.
        device: String,
        /// The request, as `run` printed it.
        request_id: String,
    },
}

/// How far the agent may go.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AgentMode {
    Plan,
    Build,
}

/// The most prompt bytes read from stdin (the device's own cap is usually lower).
const MAX_STDIN_PROMPT: u64 = 1 << 20;

fn prompt_text(prompt: String) -> Result<String, Error> {
    if prompt != "-" {
        return Ok(prompt);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), MAX_STDIN_PROMPT + 1), &mut text)
        .map_err(|e| Error::Usage(format!("reading the prompt from stdin: {e}")))?;
    if text.len() as u64 > MAX_STDIN_PROMPT {
        return Err(Error::Usage(format!("the prompt on stdin is over {MAX_STDIN_PROMPT} bytes")));
    }
    Ok(text)
}

pub(crate) fn failed(e: DialError) -> Error {
    match e {
        DialError::Refused { code: RelayCode::Unauthorized, message } => {
            Error::Refused(format!("the relay refused this operator: {}", printable(&message)))
        }
        DialError::Refused { code: RelayCode::DeviceOffline, message } => Error::DaemonUnreachable(printable(&message)),
        DialError::Url(m) => Error::Usage(format!("relay address {m}")),
        e => Error::Failed(printable(&crate::ErrorChain(&e).to_string())),
    }
}

/// A bad flag's error, with its cause (a missing key file says why).
fn usage(e: &(dyn std::error::Error + 'static)) -> Error {
    Error::Usage(crate::ErrorChain(e).to_string())
}

impl Conn {
    /// The flags (and their variables) over `profile`, field by field; the
    /// relay's trust as a whole (a flag's CA and the profile's pin do not mix).
    fn over(mut self, profile: Profile) -> Conn {
        self.relay = self.relay.or(profile.relay);
        if self.relay_ca.is_none() && self.relay_fingerprint.is_none() {
            (self.relay_ca, self.relay_fingerprint) = (profile.relay_ca, profile.relay_fingerprint);
        }
        self.key = self.key.or(profile.key);
        self
    }

    async fn open(&self) -> Result<Session, Error> {
        let url: RelayUrl = self
            .relay
            .as_deref()
            .ok_or_else(|| {
                Error::Usage(
                    "give --relay wss://HOST:PORT (or SUPPORT_OPERATOR_RELAY), or set it up once with \
                     `support operator init --relay wss://HOST:PORT --relay-fingerprint sha256:HEX`"
                        .into(),
                )
            })?
            .parse()
            .map_err(failed)?;
        let trust = RelayTrust::from_flags(self.relay_ca.as_deref(), self.relay_fingerprint.as_deref())
            .map_err(|e| usage(&e))?;
        let tls = trust.client_config().map_err(|e| usage(&e))?;
        let path = self.key.as_ref().ok_or_else(|| {
            Error::Usage("give --key FILE (or SUPPORT_OPERATOR_KEY), or make one with `support operator init`".into())
        })?;
        let key = KeyPair::load(path).map_err(|e| usage(&e))?;
        Session::connect(&url, tls, key).await.map_err(failed)
    }
}

pub(crate) fn run(paths: &Paths, args: Args) -> Result<ExitCode, Error> {
    match &args.command {
        Command::Keygen { out } => return keygen(out),
        Command::Init { force } => return init(paths, args.conn, *force),
        _ => {}
    }
    let args = Args { conn: args.conn.over(operator_profile::load(paths)?), command: args.command };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))?;
    // Parameters are checked before connecting.
    let Args { conn, command } = args;
    let task = match &command {
        Command::Run { device, action, params, json, raw } => {
            Some((device.clone(), action.clone(), parse_params(params)?, Print { json: *json, raw: *raw }))
        }
        Command::Agent { device, prompt, mode, json, raw } => {
            let mode = match *mode {
                AgentMode::Plan => "plan",
                AgentMode::Build => "build",
            };
            let params =
                BTreeMap::from([("prompt".to_string(), prompt_text(prompt.clone())?), ("mode".into(), mode.into())]);
            Some((device.clone(), "agent".to_string(), params, Print { json: *json, raw: *raw }))
        }
        Command::Shell { device, cmd, json, raw } if !cmd.is_empty() => {
            let params = BTreeMap::from([("cmd".to_string(), cmd.join(" "))]);
            Some((device.clone(), "shell".to_string(), params, Print { json: *json, raw: *raw }))
        }
        _ => None,
    };
    runtime.block_on(async move {
        let mut session = conn.open().await?;
        if let Some((device, action, params, print)) = task {
            let device = device_id(&mut session, &device).await?;
            return run_action(&mut session, &device, &action, params, print).await;
        }
        match command {
            Command::Shell { device, .. } => {
                let device = device_id(&mut session, &device).await?;
                super::terminal::interactive(&mut session, &device).await
            }
            Command::Keygen { .. } | Command::Init { .. } | Command::Run { .. } | Command::Agent { .. } => {
                unreachable!("handled above")
            }
            Command::Devices { json } => devices(&mut session, json).await,
            Command::Cancel { device, request_id } => {
                let device = device_id(&mut session, &device).await?;
                session.cancel(&device, &request_id).await.map_err(failed)?;
                eprintln!("cancel sent for {request_id} on {device}");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The device id `given` names: itself when it has the shape of an id
/// (no round trip), else the one device of that name in the relay's list.
/// The name-to-id mapping is the relay's word; the id is what the command
/// is signed for.
///
/// # Errors
/// [`Error::Usage`] for a name no device has, or two or more have (listed).
async fn device_id(session: &mut Session, given: &str) -> Result<String, Error> {
    if super::device_name::is_device_id(given) {
        return Ok(given.to_string());
    }
    let devices = session.devices().await.map_err(failed)?;
    let id = super::device_name::resolve(given, devices.iter().map(|d| (d.device_id.as_str(), d.name.as_str())))?;
    eprintln!("{} is {id}", printable(given));
    Ok(id)
}

/// `support operator keygen --out FILE`: missing directories on the way to
/// FILE are made 0700, as the home's own are; an existing one is used as it is.
fn keygen(out: &std::path::Path) -> Result<ExitCode, Error> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::Usage(format!("{} exists; choose another --out or remove it first", out.display())));
    }
    let key = make_key(out)?;
    eprintln!("Private key written to {} (PEM, 0600). Keep it secret.", out.display());
    tell_public_key(&key)
}

/// Makes a PEM key at `out` (its directory too, 0700), refusing to overwrite.
fn make_key(out: &std::path::Path) -> Result<KeyPair, Error> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && std::fs::symlink_metadata(dir).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        crate::paths::ensure_dir(dir)?;
    }
    KeyPair::create_pem(out)
        .map_err(|e| Error::Failed(crate::ErrorChain(&e).to_string()))?
        .ok_or_else(|| Error::Usage(format!("{} appeared meanwhile; run the command again", out.display())))
}

/// Prints the public key (stdout) and whom to give it to (stderr).
fn tell_public_key(key: &KeyPair) -> Result<ExitCode, Error> {
    let public = key.public_key();
    outln!("{public}")?;
    eprintln!("fingerprint {}", public.fingerprint());
    eprintln!("Give the public key to the relay admin: support relay add-operator NAME {public}");
    eprintln!("and to the owner of each device:        support trust add NAME {public}");
    Ok(ExitCode::SUCCESS)
}

/// `support operator init`: the key (made unless `--key` names an existing
/// one, or the default one exists) and operator.toml, from the flags.
fn init(paths: &Paths, conn: Conn, force: bool) -> Result<ExitCode, Error> {
    let file = operator_profile::path(paths);
    if !force && std::fs::symlink_metadata(&file).is_ok() {
        return Err(Error::Usage(format!(
            "{} exists; pass --force to replace it (or edit it: flags and SUPPORT_OPERATOR_* override it)",
            file.display()
        )));
    }
    let relay = conn.relay.ok_or_else(|| Error::Usage("give --relay wss://HOST:PORT".into()))?;
    let _: RelayUrl = relay.parse().map_err(failed)?;
    // Checked now, and kept absolute: the profile is read from anywhere.
    let relay_ca = conn.relay_ca.as_deref().map(operator_profile::absolute_ca);
    let trust =
        RelayTrust::from_flags(relay_ca.as_deref(), conn.relay_fingerprint.as_deref()).map_err(|e| usage(&e))?;
    trust.client_config().map_err(|e| usage(&e))?;
    let key_path = operator_profile::absolute(&conn.key.unwrap_or_else(|| operator_profile::default_key(paths)));
    let key = if std::fs::symlink_metadata(&key_path).is_ok() {
        let key = KeyPair::load(&key_path).map_err(|e| usage(&e))?;
        eprintln!("Using the key {} that is there.", key_path.display());
        key
    } else {
        let key = make_key(&key_path)?;
        eprintln!("Private key written to {} (PEM, 0600). Keep it secret.", key_path.display());
        key
    };
    let profile =
        Profile { relay: Some(relay), relay_ca, relay_fingerprint: conn.relay_fingerprint, key: Some(key_path) };
    let written = operator_profile::save(paths, &profile)?;
    eprintln!("Wrote {}: every `support operator` command uses it now.", written.display());
    tell_public_key(&key)
}

async fn devices(session: &mut Session, json: bool) -> Result<ExitCode, Error> {
    let devices = session.devices().await.map_err(failed)?;
    if json {
        print_json(&serde_json::to_value(&devices).unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }
    print_devices(&devices)?;
    Ok(ExitCode::SUCCESS)
}

/// A table of devices, as `operator devices` and `relay devices` print it;
/// times as [`crate::time::human`] shows them.
///
/// # Errors
/// [`Error::Stdout`] when stdout cannot be written.
pub(crate) fn print_devices(devices: &[crate::protocol::DeviceEntry]) -> Result<(), Error> {
    if devices.is_empty() {
        return outln!("no devices enrolled");
    }
    // From the relay's side of the wire: shown only as printable text.
    let when = super::human_text;
    let mut table = Listing::new(&[
        ("device", Wrap::Words),
        ("name", Wrap::Words),
        ("online", Wrap::Words),
        ("last heartbeat", Wrap::Instant),
        ("grant", Wrap::Text),
        ("audit", Wrap::Words),
    ]);
    for d in devices {
        let mut grant = match (d.tier, &d.expires_at) {
            (Some(t), Some(e)) => format!("tier {t} until {}", when(e)),
            (Some(t), None) => format!("tier {t}"),
            _ if d.last_heartbeat.is_some() => "off".into(),
            _ => "-".into(),
        };
        if let (Some(scope), Some(_)) = (&d.scope, d.tier) {
            grant.push_str(&format!("; {}", printable(&scope_words(scope))));
        }
        table.row([
            printable(&d.device_id),
            printable(&d.name),
            if d.online { "yes".into() } else { "no".into() },
            d.last_heartbeat.as_deref().map(when).unwrap_or_else(|| "-".into()),
            grant,
            audit_cell(d),
        ]);
    }
    table.print()
}

/// A device's reported grant scope in a few words: `alice, bob; disk-usage; 2/5 used`.
fn scope_words(scope: &crate::protocol::GrantScope) -> String {
    let mut parts = Vec::new();
    if let Some(ops) = &scope.operators {
        parts.push(format!("for {}", ops.join(", ")));
    }
    if let Some(only) = &scope.only {
        parts.push(format!("only {}", only.join(", ")));
    }
    if let Some(max) = scope.max_actions {
        let used = scope.actions_used.map_or_else(|| "?".into(), |n| n.to_string());
        parts.push(format!("{used}/{max} actions used"));
    }
    parts.join("; ")
}

/// The audit witness as a table cell: the standing alert, `ok`, or `-` before any heartbeat.
fn audit_cell(d: &crate::protocol::DeviceEntry) -> String {
    match &d.audit_alert {
        Some(a) => format!("ALERT {} (witnessed seq {}, found {})", a.kind.as_str(), a.witnessed_seq, a.reported_seq),
        None if d.last_heartbeat.is_some() => "ok".into(),
        None => "-".into(),
    }
}

fn parse_params(params: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| Error::Usage(format!("parameter {p:?} must be NAME=VALUE")))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Error::Usage(format!("parameter {k:?} is given twice")));
        }
    }
    Ok(out)
}

/// How `run`, `agent` and `shell` print what the device sends.
#[derive(Clone, Copy)]
struct Print {
    /// Every frame as one JSON line.
    json: bool,
    /// Output as it came, escape sequences included.
    raw: bool,
}

/// Output from another machine, made safe to print, on a terminal or not
/// (a pipe into `less -R` or a log read later with `cat` is a terminal
/// too, in the end): newlines and tabs pass, other control characters
/// (escape sequences) show as `?`, as on the owner's side. `raw` opts out.
fn printable_output(data: &str, raw: bool) -> std::borrow::Cow<'_, str> {
    if raw {
        return data.into();
    }
    crate::text::printable_lines(data).into()
}

/// Why a signed denial may not mean "nothing ran", if it may not. This
/// client sends each command once, so a `REPLAY` says the command reached
/// the device twice (a relay, or whoever copied it, sent it again) and its
/// first delivery may have run; a `STALE_COMMAND` long after the command
/// was issued says the same of a command held back. The device signed the
/// denial for that second delivery, not for the first: exit 1, not 4.
fn doubt_about_a_denial(code: DenyCode, run: &Run) -> Option<String> {
    let issued = crate::time::parse_rfc3339(&run.issued_at);
    let waited = issued.map_or(0, |t| (chrono::Utc::now() - t).num_seconds());
    let replayed = match code {
        DenyCode::Replay => true,
        DenyCode::StaleCommand => waited >= STALE_AFTER_WAIT_S,
        _ => false,
    };
    replayed.then(|| {
        format!(
            "this client sent request {} once, {waited} s ago: the device got it more than once, and an earlier \
             delivery may have run. Check the device's audit log (`support audit` there) before sending it again.",
            run.request_id
        )
    })
}

/// A failed result for people: its exit code, or why it has none (the
/// device's reason, made printable).
pub(crate) fn failed_line(exit_code: Option<i32>, reason: Option<&str>) -> String {
    match (exit_code, reason) {
        (Some(code), _) => format!("failed (exit {code})"),
        (None, Some(why)) => format!("failed: {}", printable(why)),
        (None, None) => "failed (no exit code, and the device gave no reason)".into(),
    }
}

/// Seconds after issuing past which a `STALE_COMMAND` is doubted: a
/// command that took this long to be refused was held back on the way
/// (an honest stale refusal comes at once, from a skewed clock).
const STALE_AFTER_WAIT_S: i64 = 30;

async fn run_action(
    session: &mut Session,
    device: &str,
    action: &str,
    params: BTreeMap<String, String>,
    print: Print,
) -> Result<ExitCode, Error> {
    let Print { json, raw } = print;
    let run = session.command(device, action, params);
    if !json {
        eprintln!("request {} → {device}: {action}", run.request_id);
    }
    // The agent's stream-JSON is shown as the owner sees it; --json and --raw give it as it came.
    let mut transcript = (action == "agent" && !raw).then(|| Transcript::new(true));
    let mut task = String::new();
    // Only answers that passed every check of the device's signature get here.
    let on_frame = |f: &DeviceFrame| {
        let (_, dropped, _) = f.proof();
        if dropped > 0 {
            eprintln!(
                "warning: the device left out {dropped} answer(s) of this request here (its link was down and its queue full); the output has a gap"
            );
        }
        if json {
            // Like the other writes here: a closed stdout does not stop the task.
            let _ = print_json(&serde_json::to_value(f).unwrap_or_default());
            return;
        }
        if let Some(t) = &mut transcript {
            let lines = match f {
                DeviceFrame::Output { stream, data, .. } => t.push(*stream, data.as_bytes()),
                DeviceFrame::Result { .. } => t.finish(),
                _ => Vec::new(),
            };
            let mut out = std::io::stdout().lock();
            for line in lines {
                // render_line makes the text printable and adds only its own colours.
                let text = super::tasks::render_line(&task, &line);
                let _ = writeln!(out, "{text}");
            }
            let _ = out.flush();
        }
        match f {
            DeviceFrame::Accepted { task_id, .. } => {
                // From the relay's side of the wire: shown only as printable text.
                task = printable(task_id);
                eprintln!("accepted as task {task}");
            }
            DeviceFrame::Output { .. } if transcript.is_some() => {}
            DeviceFrame::Output { stream: Stream::Stdout, data, .. } => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(printable_output(data, raw).as_bytes());
                let _ = out.flush();
            }
            DeviceFrame::Output { stream: Stream::Stderr, data, .. } => {
                let _ = std::io::stderr().write_all(printable_output(data, raw).as_bytes());
            }
            _ => {}
        }
    };
    // The first Ctrl-C asks the device to stop the task; the result still comes back.
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: asking the device to cancel {}", run.request_id);
        } else {
            std::future::pending::<()>().await;
        }
    };
    let outcome = session.run(&run, on_frame, interrupted).await.map_err(failed)?;
    if let (false, Some(t), Outcome::Finished(DeviceFrame::Result { .. })) = (json, &transcript, &outcome) {
        // As the owner's `support tasks TASK_ID` ends: the two lines can be compared.
        let _ = writeln!(std::io::stdout(), "transcript: {} lines, sha256 {}", t.total(), t.digest());
    }
    ended(outcome, &run, json)
}

/// How a request ended, said on stderr (unless `json`), as the command's
/// exit: the remote exit code, 4 if refused, 3 if the device is offline.
///
/// # Errors
/// A denial, the relay's refusal, or a request that ended without a result.
pub(crate) fn ended(outcome: Outcome, run: &Run, json: bool) -> Result<ExitCode, Error> {
    match outcome {
        Outcome::Finished(DeviceFrame::Result {
            status,
            exit_code,
            duration_ms,
            truncated,
            output_bytes,
            cancelled_by,
            reason,
            ..
        }) => {
            if !json {
                let how = match (status, cancelled_by) {
                    (Status::Ok, _) => "ok".to_string(),
                    (Status::Failed, _) => failed_line(exit_code, reason.as_deref()),
                    (Status::Timeout, _) => "timed out".into(),
                    (Status::Cancelled, Some(StoppedBy::Revoke)) => "cancelled by revoke".into(),
                    (Status::Cancelled, Some(StoppedBy::Owner)) => "stopped by the owner".into(),
                    (Status::Cancelled, Some(StoppedBy::Operator)) => "cancelled by the operator".into(),
                    (Status::Cancelled, Some(StoppedBy::Expiry)) => "cancelled: the grant expired".into(),
                    (Status::Cancelled, Some(StoppedBy::TierLowered)) => {
                        "cancelled: the grant's tier was lowered".into()
                    }
                    (Status::Cancelled, Some(StoppedBy::Shutdown)) => "cancelled: the daemon shut down".into(),
                    (Status::Cancelled, Some(StoppedBy::TrustRemoved)) => {
                        "cancelled: the owner no longer trusts your key (trust removed)".into()
                    }
                    (Status::Cancelled, Some(StoppedBy::LinkLost)) => {
                        "cancelled: the device lost its link to the relay".into()
                    }
                    (Status::Cancelled, None) => "cancelled".into(),
                };
                let cut = if truncated { ", output truncated" } else { "" };
                eprintln!("{how} · {duration_ms} ms · {output_bytes} bytes{cut}");
            }
            let code = match status {
                Status::Ok => 0,
                _ => exit_code.filter(|c| (1..=255).contains(c)).unwrap_or(1),
            };
            Ok(ExitCode::from(code as u8))
        }
        Outcome::Finished(_) => Err(Error::Failed("the device ended the request without a result".into())),
        Outcome::Denied { code, message } => {
            let message = printable(&message);
            let message = message.strip_prefix(&format!("{code}: ")).unwrap_or(&message);
            match doubt_about_a_denial(code, run) {
                Some(doubt) => Err(Error::Failed(format!("denied: {code}: {message}\n{doubt}"))),
                None => Err(Error::Refused(format!("denied: {code}: {message}"))),
            }
        }
        // The relay's own refusals are not signed: said as the relay's, never as the device's.
        Outcome::Relay { code: RelayCode::DeviceOffline, message } => Err(Error::DaemonUnreachable(format!(
            "relay error (not from the device): DEVICE_OFFLINE: {}",
            printable(&message)
        ))),
        Outcome::Relay { code: RelayCode::Unauthorized, message } => {
            Err(Error::Refused(format!("relay error (not from the device): UNAUTHORIZED: {}", printable(&message))))
        }
        Outcome::Relay { code, message } => {
            Err(Error::Failed(format!("relay error (not from the device): {code}: {}", printable(&message))))
        }
    }
}
