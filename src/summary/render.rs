//! A summary as text for people: a header, then tables like `support
//! audit`'s (times as [`crate::time::human`] shows them), then whether the
//! span verifies. Every text that came from a record goes through `printable`.

use std::fmt::Write as _;

use super::{ActionRun, Ending, GrantSummary};
use crate::cli::table::{Listing, Wrap};
use crate::text::printable;
use crate::time::human_text;

/// `1234` ms as `1s 234ms`, to the millisecond below a minute and to the second above.
fn duration(ms: u64) -> String {
    let d = if ms >= 60_000 { std::time::Duration::from_secs(ms / 1000) } else { std::time::Duration::from_millis(ms) };
    humantime::format_duration(d).to_string()
}

/// Bytes as `512 B`, `1.5 KiB`, `3.0 MiB`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// How a task ended, in one cell.
fn outcome(a: &ActionRun) -> String {
    let mut s = match (&a.status, a.exit_code) {
        (None, _) => "no end on record".to_string(),
        (Some(st), Some(code)) => format!("{st} (exit {code})"),
        (Some(st), None) => st.clone(),
    };
    if let Some(by) = &a.stopped_by {
        let _ = write!(s, ", stopped by {by}");
    }
    if let (Some(why), None) = (&a.reason, a.exit_code)
        && a.status.as_deref() != Some("ok")
    {
        let _ = write!(s, ": {why}");
    }
    printable(&s)
}

impl GrantSummary {
    /// How the grant ended, in a few words: `revoked by the owner at T`,
    /// `expired at T`, `replaced by grant g-… at T`, `in force until T`,
    /// `ran out at T (no end on record: ...)`; T as [`crate::time::human`] shows it.
    pub fn ending(&self) -> String {
        let at = self.ended_at.as_deref().map(human_text).unwrap_or_default();
        match self.ended {
            Ending::Revoked => format!("revoked by the owner at {at}"),
            Ending::Expired => format!("expired at {at}"),
            Ending::Replaced => {
                format!("replaced by grant {} at {at}", printable(self.replaced_by.as_deref().unwrap_or("?")))
            }
            Ending::NotEnded => match self.ends_at.as_deref().map(|t| (t, crate::time::parse_rfc3339(t))) {
                Some((t, Some(end))) if end > chrono::Utc::now() => format!("in force until {}", human_text(t)),
                Some((t, _)) => {
                    format!("ran out at {} (no end on record: no daemon was running to record it)", human_text(t))
                }
                None => "no end on record".into(),
            },
        }
    }

    /// One line for a notification or a log: the grant, how it ended,
    /// how many actions by whom and how they ended, the denials and stops,
    /// and whether the span verifies. Printable, at most a few hundred characters.
    pub fn gist(&self) -> String {
        let ok = self.actions.iter().filter(|a| a.status.as_deref() == Some("ok")).count();
        let mut s = format!(
            "Grant {} (tier {}) {}: {}",
            printable(&self.grant_id),
            self.tier.map_or("?".into(), |t| t.to_string()),
            self.ending(),
            plural(self.actions.len(), "action", "actions"),
        );
        if !self.operators.is_empty() {
            let names: Vec<String> = self.operators.iter().take(4).map(|o| crate::text::brief(o)).collect();
            let more = if self.operators.len() > 4 { ", ..." } else { "" };
            let _ = write!(s, " by {}{more}", names.join(", "));
        }
        if !self.actions.is_empty() {
            let _ = write!(s, " ({ok} ok)");
        }
        let denied: u64 = self.denials.iter().map(|d| d.count).sum();
        let _ = write!(s, ", {} denied, {} stopped", denied, self.stops.len());
        s.push_str(if self.chain.ok { "; audit chain verifies." } else { "; AUDIT CHAIN DOES NOT VERIFY." });
        s
    }

    /// The summary for people: a header, the actions, denials and stops as
    /// tables fitted to the width (`COLUMNS` or the terminal's, see
    /// `cli::table`), then the chain. Ends with a newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let tier = self.tier.and_then(crate::Tier::new).map_or("?".into(), |t| t.to_string());
        let _ =
            writeln!(out, "Grant {}: tier {tier}, granted {}", printable(&self.grant_id), human_text(&self.granted_at));
        if let Some(reason) = &self.reason {
            let _ = writeln!(out, "Reason: {}", printable(reason));
        }
        if let Some(scope) = &self.scope {
            let _ = writeln!(out, "Scope: {}", printable(scope));
        }
        let _ = writeln!(out, "Ended: {}", self.ending());
        let who = if self.operators.is_empty() { "nobody".into() } else { printable(&self.operators.join(", ")) };
        let _ = writeln!(out, "Who acted: {who}");
        if self.actions.is_empty() {
            out.push_str("\nNo action ran.\n");
        } else {
            let _ = writeln!(out, "\n{}:", plural(self.actions.len(), "action", "actions"));
            let mut t = Listing::new(&[
                ("started", Wrap::Instant),
                ("operator", Wrap::Words),
                ("action", Wrap::Words),
                ("params", Wrap::Text),
                ("outcome", Wrap::Text),
                ("took", Wrap::Words),
                ("output", Wrap::Words),
            ]);
            for a in &self.actions {
                let params: Vec<String> =
                    a.params.iter().map(|(k, v)| format!("{k}={}", crate::text::brief(v))).collect();
                t.row([
                    human_text(&a.started_at),
                    printable(a.operator.as_deref().unwrap_or("?")),
                    printable(a.action.as_deref().unwrap_or("?")),
                    printable(&params.join(" ")),
                    outcome(a),
                    a.duration_ms.map(duration).unwrap_or_default(),
                    a.output_bytes.map(size).unwrap_or_default(),
                ]);
            }
            push_table(&mut out, t);
        }
        if !self.denials.is_empty() {
            let denied: u64 = self.denials.iter().map(|d| d.count).sum();
            let _ = writeln!(out, "\n{}:", plural(denied as usize, "denial", "denials"));
            let mut t = Listing::new(&[
                ("time", Wrap::Instant),
                ("operator", Wrap::Words),
                ("action", Wrap::Words),
                ("code", Wrap::Words),
                ("reason", Wrap::Text),
            ]);
            for d in &self.denials {
                let code = d.code.as_deref().unwrap_or("?");
                t.row([
                    human_text(&d.at),
                    printable(d.operator.as_deref().unwrap_or("")),
                    printable(d.action.as_deref().unwrap_or("")),
                    if d.count > 1 { format!("{} × {}", d.count, printable(code)) } else { printable(code) },
                    printable(d.reason.as_deref().unwrap_or("")),
                ]);
            }
            push_table(&mut out, t);
        }
        if !self.stops.is_empty() {
            let _ = writeln!(out, "\n{}:", plural(self.stops.len(), "stop", "stops"));
            let mut t = Listing::new(&[
                ("time", Wrap::Instant),
                ("task", Wrap::Words),
                ("action", Wrap::Words),
                ("operator", Wrap::Words),
                ("stopped by", Wrap::Words),
            ]);
            for s in &self.stops {
                t.row([
                    human_text(&s.at),
                    printable(s.task_id.as_deref().unwrap_or("")),
                    printable(s.action.as_deref().unwrap_or("")),
                    printable(s.operator.as_deref().unwrap_or("")),
                    printable(&s.by),
                ]);
            }
            push_table(&mut out, t);
        }
        let c = &self.chain;
        let checked = if c.macs_checked { "" } else { " (links only; the MACs were not checked)" };
        let _ = match &c.error {
            None => writeln!(out, "\nAudit chain, seq {} to {}: verifies{checked}.", c.first_seq, c.last_seq),
            Some(e) => writeln!(
                out,
                "\nAudit chain, seq {} to {}: DOES NOT VERIFY at {}. Run `support audit --verify`.",
                c.first_seq,
                c.last_seq,
                printable(e)
            ),
        };
        out
    }
}

fn push_table(out: &mut String, t: Listing) {
    for line in t.lines() {
        out.push_str(&line);
        out.push('\n');
    }
}
