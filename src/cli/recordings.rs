//! `support recordings [--json]` and `support play ID [--speed X] [--idle-limit S]`

use std::collections::HashMap;
use std::io::Write as _;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::Duration;

use super::Ctx;
use super::out::outln;
use super::table::{Listing, Wrap};
use crate::Error;
use crate::recording::{self, ReadError, Reader};

/// List the recordings of interactive sessions (in the state directory's
/// `recordings/`): id, start, title (who opened it, on what), duration,
/// size, SHA-256, and whether that digest is the one on the session's
/// `action.finished` record (`recording_sha256`): a file changed after its
/// session ended says "ALTERED".
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print one JSON object per recording, one per line.
    #[arg(long)]
    json: bool,
}

/// Replay a recording's output in this terminal at its real pace. The file
/// is checked whole first: a damaged or oversized one plays nothing and
/// exits 1; an unknown or malformed ID exits 2.
#[derive(Debug, clap::Args)]
pub struct PlayArgs {
    /// The recording (the session's task id, as `support recordings` lists it).
    #[arg(value_name = "ID")]
    id: String,
    /// Play this many times faster (0.01 to 1000; 2 is twice as fast).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    speed: f64,
    /// Shorten every pause to at most this many seconds (default: the
    /// file's `idle_time_limit`, else none).
    #[arg(long, value_name = "SECONDS")]
    idle_limit: Option<f64>,
}

/// A recording as listed: its summary, and the digest its session's
/// `action.finished` record holds (in the MAC'd audit chain), if any.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    summary: recording::Summary,
    /// `recording_sha256` of the task's `action.finished` record.
    recorded_sha256: Option<String>,
    /// Whether the file's digest is that one; `None` with no record (a
    /// session still running, or a file support did not write).
    matches_record: Option<bool>,
}

/// Each task's `recording_sha256` on its `action.finished` record.
fn recorded_digests(ctx: &Ctx) -> Result<HashMap<String, String>, Error> {
    let mut found = HashMap::new();
    crate::audit::newest_first(&ctx.paths, |r| {
        if r.event == crate::audit::Event::ActionFinished
            && let (Some(task), Some(digest)) = (r.task_id, r.recording_sha256)
        {
            found.entry(task).or_insert(digest);
        }
        ControlFlow::Continue(())
    })?;
    Ok(found)
}

pub(crate) fn list(ctx: &Ctx, args: ListArgs) -> Result<ExitCode, Error> {
    let dir = recording::dir(&ctx.paths.state_dir);
    crate::paths::check_dir(&dir)?;
    let all = recording::list(&dir).map_err(|e| Error::Failed(format!("cannot list {}: {e}", dir.display())))?;
    let mut recorded = if all.is_empty() { HashMap::new() } else { recorded_digests(ctx)? };
    let all: Vec<Listed> = all
        .into_iter()
        .map(|summary| {
            let recorded_sha256 = recorded.remove(&summary.id);
            let matches_record = recorded_sha256.as_ref().map(|r| summary.sha256.as_ref() == Some(r));
            Listed { summary, recorded_sha256, matches_record }
        })
        .collect();
    if args.json {
        for s in &all {
            outln!("{}", serde_json::to_string(s).expect("a summary serialises"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        outln!("No recordings yet ({}).", dir.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Listing::new(&[
        ("id", Wrap::Words),
        ("started", Wrap::Instant),
        ("title", Wrap::Text),
        ("duration", Wrap::Words),
        ("size", Wrap::Words),
        ("sha256", Wrap::Text),
        ("record", Wrap::Words),
    ]);
    for Listed { summary: s, matches_record, .. } in &all {
        let started = s.started.as_deref().map(crate::time::human_text);
        let duration = s.duration_s.map(|d| humantime::format_duration(Duration::from_secs(d as u64)).to_string());
        let digest = match (&s.sha256, &s.error) {
            (Some(h), _) => h.clone(),
            (None, Some(e)) => format!("damaged: {}", crate::text::printable(e)),
            (None, None) => "-".into(),
        };
        table.row([
            s.id.clone(),
            started.unwrap_or_else(|| "-".into()),
            s.title.as_deref().map(crate::text::printable).unwrap_or_else(|| "-".into()),
            duration.unwrap_or_else(|| "-".into()),
            format!("{} B", s.bytes),
            digest,
            match matches_record {
                Some(true) => "matches".into(),
                Some(false) => "ALTERED".into(),
                None => "-".into(),
            },
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn play(ctx: &Ctx, args: PlayArgs) -> Result<ExitCode, Error> {
    if !(args.speed.is_finite() && (0.01..=1000.0).contains(&args.speed)) {
        return Err(Error::Usage(format!("--speed must be 0.01 to 1000, not {}", args.speed)));
    }
    if let Some(s) = args.idle_limit
        && !(s.is_finite() && s >= 0.0)
    {
        return Err(Error::Usage(format!("--idle-limit must be a number of seconds, not {s}")));
    }
    let dir = recording::dir(&ctx.paths.state_dir);
    let Some(path) = recording::path(&dir, &args.id) else {
        return Err(Error::Usage(format!(
            "{} is not a recording id: 1 to 64 of A-Z a-z 0-9 _ -, as `{}` lists them",
            crate::text::brief(&args.id),
            ctx.command_line(&["recordings"])
        )));
    };
    crate::paths::check_dir(&dir)?;
    // The whole file first, so a damaged one plays nothing.
    let mut check = Reader::open(&path).map_err(|e| read_error(ctx, e))?;
    while check.next_event().map_err(|e| read_error(ctx, e))?.is_some() {}
    let mut reader = Reader::open(&path).map_err(|e| read_error(ctx, e))?;
    let idle = args.idle_limit.or(reader.header().idle_time_limit.filter(|s| s.is_finite() && *s >= 0.0));
    let idle = idle.map(Duration::from_secs_f64);
    let mut out = std::io::stdout().lock();
    let mut shown = Duration::ZERO;
    while let Some(event) = reader.next_event().map_err(|e| read_error(ctx, e))? {
        if event.code != "o" {
            continue;
        }
        let mut wait = event.at.saturating_sub(shown).div_f64(args.speed);
        if let Some(idle) = idle {
            wait = wait.min(idle);
        }
        shown = event.at;
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        out.write_all(event.data.as_bytes()).and_then(|()| out.flush()).map_err(Error::Stdout)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// An unknown recording is the caller's input (exit 2); a file that is
/// not one support can play is a failure (exit 1).
fn read_error(ctx: &Ctx, e: ReadError) -> Error {
    match e {
        ReadError::NotFound(p) => Error::Usage(format!(
            "there is no recording {}; `{}` lists them",
            p.display(),
            ctx.command_line(&["recordings"])
        )),
        ReadError::File(f) => f.into(),
        other => Error::Failed(crate::ErrorChain(&other).to_string()),
    }
}
