//! Reading the log back: `berth audit --since 1h --actor ci-bot --repo team-a/* --action
//! manifest`.

use std::io::{BufRead, BufReader};
use std::path::Path;

use time::OffsetDateTime;

use super::{Decision, Error, FILE, Record};

/// What to select; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Subject, CN, serial or uid (see [`super::Actor::matches`]).
    pub actor: Option<String>,
    /// Repository, exactly, or a prefix ending in `*` (`team-a/*`).
    pub repository: Option<String>,
    /// Action name or its first part (`manifest` selects `manifest.put` and
    /// `manifest.delete`).
    pub action: Option<String>,
    /// Only denials, or only allowed actions.
    pub decision: Option<Decision>,
    /// At most this many records, the newest (0: no limit).
    pub limit: usize,
}

impl Filter {
    /// Whether `r` is selected.
    pub fn matches(&self, r: &Record) -> bool {
        self.since.is_none_or(|t| r.time >= t)
            && self.actor.as_deref().is_none_or(|a| r.actor.matches(a))
            && self.repository.as_deref().is_none_or(|want| {
                r.target
                    .repository
                    .as_deref()
                    .is_some_and(|have| match want.strip_suffix('*') {
                        Some(prefix) => have.starts_with(prefix.trim_end_matches('*')),
                        None => have == want,
                    })
            })
            && self.action.as_deref().is_none_or(|a| {
                let name = r.action.name();
                name == a
                    || name
                        .strip_prefix(a)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            && self.decision.is_none_or(|d| r.decision == d)
    }
}

pub(super) fn run(dir: &Path, keep: u32, filter: &Filter) -> Result<Vec<Record>, Error> {
    let mut out = std::collections::VecDeque::new();
    let mut files: Vec<_> = (1..=keep)
        .rev()
        .map(|n| dir.join(format!("{FILE}.{n}")))
        .collect();
    files.push(dir.join(FILE));
    for path in files {
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    op: "open",
                    path,
                    source,
                });
            }
        };
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(|source| Error::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
            let Ok(r) = serde_json::from_slice::<Record>(&line) else {
                continue;
            };
            if filter.matches(&r) {
                out.push_back(r);
                if filter.limit > 0 && out.len() > filter.limit {
                    out.pop_front();
                }
            }
        }
    }
    Ok(out.into())
}
