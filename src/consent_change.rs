//! The owner's changes to the grant, made the same way from the CLI
//! (`support allow`, `support revoke`) and from the owner's console: one
//! code path each, so the consent file, its audit record and the order
//! between them cannot drift apart between the two.
//!
//! A grant is recorded (`consent.granted`) before its file is written: a
//! grant that cannot be audited is not made. A revocation removes the file
//! first and records after: an audit failure must never leave a grant
//! standing. `via` goes on the record (`console`; `None` for the CLI).

use chrono::{DateTime, Utc};

use crate::audit::{Event, Record};
use crate::consent::{self, Consent, Grant, Off};
use crate::paths::Paths;
use crate::{Error, ErrorChain};

/// Appends one record to the audit log and returns it as written.
pub(crate) type Append<'a> = &'a mut dyn FnMut(Record) -> Result<Record, Error>;

/// Records `grant` (`consent.granted`, with its scope and `via`), then
/// writes it as the consent file. The caller tells a running daemon.
///
/// # Errors
/// The audit error when the record cannot be written (nothing else is
/// done); the file error when the grant cannot be written, after the
/// consent file is removed again and `consent.revoked` recorded;
/// [`Error::Failed`] when even the removal fails (a grant may stand).
pub(crate) fn grant(paths: &Paths, grant: &Grant, via: Option<&str>, append: Append<'_>) -> Result<(), Error> {
    let mut record = Record::new(Event::ConsentGranted);
    record.grant_id = Some(grant.grant_id.clone());
    record.tier = Some(grant.tier.get());
    record.reason.clone_from(&grant.reason);
    record.via = via.map(str::to_string);
    record.detail = Some(match grant.scope_words() {
        Some(scope) => format!("expires_at {}; {scope}", crate::time::rfc3339(grant.expires_at)),
        None => format!("expires_at {}", crate::time::rfc3339(grant.expires_at)),
    });
    append(record)?;
    if let Err(e) = consent::write(paths, grant) {
        // The rename may have landed before a later step failed: make sure no grant stands.
        let removed = consent::remove(paths);
        let mut undo = Record::new(Event::ConsentRevoked);
        undo.grant_id = Some(grant.grant_id.clone());
        undo.via = via.map(str::to_string);
        undo.detail = Some(match &removed {
            Ok(_) => "the grant could not be written and was withdrawn; no grant is in force".into(),
            Err(r) => format!("the grant could not be written, nor the consent file removed: {}", ErrorChain(r)),
        });
        let _ = append(undo);
        return Err(match removed {
            Ok(_) => e.into(),
            Err(r) => Error::Failed(format!(
                "{}; and the consent file could not be removed ({}), so a grant may stand: remove {} by hand",
                ErrorChain(&e),
                ErrorChain(&r),
                paths.consent().display()
            )),
        });
    }
    Ok(())
}

/// What [`revoke`] did.
pub(crate) struct Revoked {
    /// For people, e.g. "Revoked grant g-… (tier 2, fixes). Support can do nothing now."
    pub message: String,
    /// Whether `tell` reached a running daemon.
    pub told: bool,
    /// The grant that ended (live, or expired with its file still there).
    pub ended: Option<String>,
}

/// Removes the consent file, calls `tell` (a running daemon stops the
/// tasks now, not at its next look), then records `consent.revoked` with
/// what was in force and `via`. Withdrawing nothing is not an error.
///
/// # Errors
/// The file error when the consent file cannot be removed (nothing is
/// recorded); [`Error::Failed`] when the grant is revoked but the record
/// cannot be written.
pub(crate) fn revoke(
    paths: &Paths,
    now: DateTime<Utc>,
    via: Option<&str>,
    tell: impl FnOnce() -> bool,
    append: Append<'_>,
) -> Result<Revoked, Error> {
    let before = consent::read(paths, now);
    let removed = consent::remove(paths)?;
    let told = tell();
    let mut record = Record::new(Event::ConsentRevoked);
    record.via = via.map(str::to_string);
    let ended = match &before {
        Consent::Live(g) | Consent::Off(Off::Expired(g)) => Some(g.grant_id.clone()),
        Consent::Off(_) => None,
    };
    let message = match &before {
        Consent::Live(g) => {
            record.grant_id = Some(g.grant_id.clone());
            record.tier = Some(g.tier.get());
            format!(
                "Revoked grant {} (tier {}, {}). Support can do nothing now.",
                g.grant_id,
                g.tier.get(),
                g.tier.name()
            )
        }
        Consent::Off(Off::Expired(g)) => {
            record.grant_id = Some(g.grant_id.clone());
            record.detail = Some("the grant had already expired".into());
            format!("The grant {} had already expired; its file is removed.", g.grant_id)
        }
        Consent::Off(off) if removed => {
            record.detail = Some(format!("removed a consent file that was not in force ({})", off.reason()));
            format!("No grant was in force ({}); the file is removed.", off.reason())
        }
        Consent::Off(_) => {
            record.detail = Some("no grant was in force".into());
            "No grant was in force; nothing to revoke.".to_string()
        }
    };
    append(record).map_err(|e| {
        Error::Failed(format!("the grant is revoked, but the audit record could not be written: {}", ErrorChain(&e)))
    })?;
    Ok(Revoked { message, told, ended })
}
