//! Tables for people, JSON for scripts, and the few file writes the CLI does itself.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    println!("{text}");
    Ok(())
}

/// A plain text table, columns padded to their widest cell, like `docker ps`.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headings.
    pub fn new(headings: &[&str]) -> Table {
        Table {
            rows: vec![headings.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints it on stdout.
    pub fn print(&self) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// A date as RFC 3339, the way `cert ls` and `certs ls` show it.
pub fn date(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// "in 89 days", "3 days ago": how far away a date is, for expiry columns.
pub fn relative(t: OffsetDateTime) -> String {
    let now = OffsetDateTime::now_utc();
    let d = t - now;
    let days = d.whole_days();
    if d.is_negative() {
        match -days {
            0 => format!("{} hours ago", -d.whole_hours()),
            n => format!("{n} days ago"),
        }
    } else {
        match days {
            0 => format!("in {} hours", d.whole_hours()),
            n => format!("in {n} days"),
        }
    }
}

/// Most items a table cell shows; the rest are counted (`--json` has them all).
const CELL_ITEMS: usize = 8;

/// Joins a list for a table cell, "-" when empty, the first few and a count when long.
pub fn list(items: &[String]) -> String {
    match items.len() {
        0 => "-".to_string(),
        n if n <= CELL_ITEMS => items.join(","),
        n => format!(
            "{},... (+{} more)",
            items[..CELL_ITEMS].join(","),
            n - CELL_ITEMS
        ),
    }
}

/// Writes one output file atomically, refusing to replace an existing one unless `force`,
/// because overwriting a key the user still needs cannot be undone.
pub fn write_file(path: &Path, content: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        anyhow::bail!(
            "{} already exists: pass --force to replace it, or choose another --out",
            path.display()
        );
    }
    berth::fsutil::write_atomic(path, content, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Makes the output folder (0700 when new: it will hold a private key).
pub fn out_dir(dir: &Path) -> anyhow::Result<()> {
    berth::fsutil::create_dir_all(dir, 0o700)
        .with_context(|| format!("cannot create {}", dir.display()))
}
