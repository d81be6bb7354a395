//! The one table every listing prints (`actions`, `audit`, `tasks`,
//! `relay devices`, `operator devices`, `trust list`): columns two spaces
//! apart under a ruled header, fitted to the width and wrapped only at spaces.
//!
//! # Width
//! `COLUMNS` when it is a positive number (so `COLUMNS=100 support audit | less`
//! works), else the terminal's width when stdout is one. Into a pipe or a file
//! with no `COLUMNS`, rows are not wrapped at all: each stays on its line for
//! `grep` and `less -S`, as `ps` and `ls -l` do.
//!
//! # Wrapping
//! A cell wraps only at spaces. In a [`Wrap::Words`] column (ids, names,
//! actions, events) no word is ever cut: the column is at least as
//! wide as its longest word, even if the table then overflows a very narrow
//! terminal. In a [`Wrap::Text`] column (descriptions, outcomes) a word is
//! cut only when it is longer than the column's share of what is left (a
//! fingerprint or a pattern in an 80-column terminal). A [`Wrap::Instant`]
//! column (times, one word each: `2026-11-22T10:36:26Z`) is a `Words`
//! column while the table fits with its times whole and still leaves each
//! `Text` column [`TEXT_ROOM`] characters; otherwise each time there breaks
//! after its `T`, the date over the time of day, and is never cut elsewhere.

use comfy_table::{ColumnConstraint, ContentArrangement, ContentLineStyle, LineStyle, Table, TableStyle, Width};

use super::out::outln;
use crate::Error;

/// How a column's cells may wrap; see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrap {
    /// At spaces only, never inside a word.
    Words,
    /// At spaces; inside a word only when that word cannot fit.
    Text,
    /// As `Words`, and a time (`2026-11-22T10:36:26Z`) breaks after its
    /// `T` when the table does not fit with it whole.
    Instant,
}

/// The room a `Text` column keeps before the times in `Instant` columns
/// break in two: about three words.
const TEXT_ROOM: usize = 20;

/// Spaces between two columns: each column's padding on its right, then the junction's.
const GAP: usize = PAD + 1;

/// Each column's padding on its right (none on its left, so rows start at the margin).
const PAD: usize = 1;

/// A table being filled: a header, rows of cells, then [`Listing::print`].
pub(crate) struct Listing {
    header: Vec<String>,
    wraps: Vec<Wrap>,
    rows: Vec<Vec<String>>,
}

impl Listing {
    /// A table with these columns: (header, how its cells wrap).
    pub fn new(columns: &[(&str, Wrap)]) -> Listing {
        Listing {
            header: columns.iter().map(|(h, _)| h.to_string()).collect(),
            wraps: columns.iter().map(|(_, w)| *w).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; its cells are already printable text (`\n` starts a new line in a cell).
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }

    /// Prints the table to stdout, fitted to the width (see the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::Stdout`] when stdout cannot be written.
    pub fn print(self) -> Result<(), Error> {
        for line in self.render(width()) {
            outln!("{line}")?;
        }
        Ok(())
    }

    /// The table's lines, fitted as [`Listing::print`] fits them, for text
    /// that is printed later (a grant's summary).
    pub fn lines(self) -> Vec<String> {
        self.render(width())
    }

    /// The table's lines for a width in columns (`None`: no wrapping), with no trailing spaces.
    fn render(mut self, width: Option<u16>) -> Vec<String> {
        if width.is_some_and(|w| !self.fits_with_times_whole(w.into())) {
            self.break_times();
        }
        let mut table = Table::new();
        let style = TableStyle::new()
            .header_lines(ContentLineStyle::none().junction(' '))
            .header_separator(LineStyle::none().fill('─').junction(' '))
            .content_lines(ContentLineStyle::none().junction(' '));
        table.load_style(style).set_header(&self.header);
        for row in &self.rows {
            table.add_row(row);
        }
        for column in table.column_iter_mut() {
            column.set_padding((0, PAD as u16));
        }
        if let Some(width) = width {
            table.set_content_arrangement(ContentArrangement::Dynamic).set_width(width);
            // comfy-table's boundaries count the padding.
            table.set_constraints(
                self.lower_bounds(width.into())
                    .into_iter()
                    .map(|w| ColumnConstraint::LowerBoundary(Width::Fixed(u16::try_from(w + PAD).unwrap_or(u16::MAX)))),
            );
        } else {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
        table.lines().map(|l| l.trim_end().to_string()).collect()
    }

    /// Each column's longest word (the header's too).
    fn longest_words(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|i| {
                let cells = std::iter::once(&self.header[i]).chain(self.rows.iter().filter_map(|r| r.get(i)));
                cells.flat_map(|c| c.split_whitespace()).map(|w| w.chars().count()).max().unwrap_or(0)
            })
            .collect()
    }

    /// The width the columns that never cut a word take, each its longest word.
    fn whole_words(&self, longest: &[usize]) -> usize {
        longest.iter().zip(&self.wraps).filter(|(_, w)| **w != Wrap::Text).map(|(l, _)| *l).sum()
    }

    /// Whether `width` holds the table with every time whole and [`TEXT_ROOM`] for each `Text` column.
    fn fits_with_times_whole(&self, width: usize) -> bool {
        let texts = self.wraps.iter().filter(|w| **w == Wrap::Text).count();
        GAP * self.header.len() + self.whole_words(&self.longest_words()) + texts * TEXT_ROOM <= width
    }

    /// Every time in an `Instant` column as its date over its time of day.
    fn break_times(&mut self) {
        for row in &mut self.rows {
            for (cell, _) in row.iter_mut().zip(&self.wraps).filter(|(_, w)| **w == Wrap::Instant) {
                let words: Vec<String> = cell.split(' ').map(broken_time).collect();
                *cell = words.join(" ");
            }
        }
    }

    /// Each column's narrowest width: its longest word in a `Words` or
    /// `Instant` column; in a `Text` column, that or its share of the width
    /// the others leave.
    fn lower_bounds(&self, width: usize) -> Vec<usize> {
        let longest = self.longest_words();
        let gaps = GAP * self.header.len();
        let texts = self.wraps.iter().filter(|w| **w == Wrap::Text).count();
        let share = width.saturating_sub(gaps + self.whole_words(&longest)) / texts.max(1);
        longest
            .iter()
            .zip(&self.wraps)
            .map(|(l, w)| if *w == Wrap::Text { (*l).min(share).max(1) } else { *l })
            .collect()
    }
}

/// `2026-11-22T10:36:26Z` as `2026-11-22T` over `10:36:26Z`; any other word as it is.
fn broken_time(word: &str) -> String {
    match word.split_once('T') {
        Some((date, time)) if word.len() == 20 && crate::time::parse_rfc3339(word).is_some() => {
            format!("{date}T\n{time}")
        }
        _ => word.to_string(),
    }
}

/// The width to fit: `COLUMNS` if a positive number, else the terminal's (when stdout is one).
fn width() -> Option<u16> {
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<u16>().ok()).filter(|c| *c > 0);
    columns.or_else(|| Table::new().width())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions() -> Listing {
        let mut l = Listing::new(&[("action", Wrap::Words), ("tier", Wrap::Words), ("description", Wrap::Text)]);
        l.row(["restart-user-service *".into(), "2".into(), "Restart one of your own systemd user services (e.g. pipewire.service) now and again, with a long description".into()]);
        l.row(["memory".into(), "1".into(), "Memory and swap in use".into()]);
        l
    }

    #[test]
    fn a_narrow_width_wraps_at_spaces_only() {
        for width in [40u16, 60, 80] {
            let lines = actions().render(Some(width));
            let text = lines.join("\n");
            assert!(lines.iter().all(|l| l.chars().count() <= usize::from(width)), "width {width}:\n{text}");
            assert!(lines.len() > 4, "width {width}: nothing wrapped:\n{text}");
            // A Words column never cuts; a Text column only a word over its share.
            let whole: &[&str] = if width >= 60 {
                &["restart-user-service", "pipewire.service)", "description"]
            } else {
                &["restart-user-service"]
            };
            for word in whole {
                assert!(text.contains(word), "width {width}: `{word}` is split:\n{text}");
            }
        }
    }

    #[test]
    fn no_width_keeps_each_row_on_its_line() {
        let lines = actions().render(None);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("action") && lines[1].starts_with('─'));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn times_stay_whole_while_they_fit_and_else_break_after_the_t_only() {
        let table = || {
            let mut l = Listing::new(&[
                ("time", Wrap::Instant),
                ("task", Wrap::Words),
                ("action", Wrap::Words),
                ("outcome", Wrap::Text),
            ]);
            l.row([
                "2026-11-22T10:36:26Z".into(),
                "t-adcd1f8836157068".into(),
                "restart-user-service".into(),
                "denied TIER_INSUFFICIENT".into(),
            ]);
            l.row(["-".into(), "t-1".into(), "memory".into(), "ok".into()]);
            l
        };
        let wide = table().render(Some(100)).join("\n");
        assert!(wide.contains("2026-11-22T10:36:26Z  t-adcd1f8836157068"), "{wide}");
        for width in [60u16, 80] {
            let lines = table().render(Some(width));
            let text = lines.join("\n");
            assert!(lines.iter().all(|l| l.chars().count() <= usize::from(width)), "width {width}:\n{text}");
            let at = lines.iter().position(|l| l.starts_with("2026-11-22T  t-adcd1f8836157068"));
            assert!(at.is_some_and(|at| lines[at + 1].starts_with("10:36:26Z")), "width {width}:\n{text}");
            assert!(width < 80 || text.contains("TIER_INSUFFICIENT"), "width {width}:\n{text}");
        }
        assert_eq!(table().render(None)[2].split_whitespace().next(), Some("2026-11-22T10:36:26Z"));
    }

    #[test]
    fn a_word_too_long_for_any_width_is_cut_only_in_a_text_column() {
        let mut l = Listing::new(&[("operator", Wrap::Words), ("detail", Wrap::Text)]);
        l.row(["alice".into(), format!("SHA256:{}", "A".repeat(60))]);
        let lines = l.render(Some(40));
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{lines:#?}");
        assert!(lines[2].starts_with("alice"));
    }
}
