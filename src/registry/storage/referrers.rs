//! The referrers index: `<repo>/_referrers/<alg>/<hex>/` (the subject) holds a link
//! `<alg>/<hex>/link` for every manifest of the repository whose `subject` it is, so the
//! referrers API reads the referrers of one subject instead of every manifest revision of
//! the repository. registry:2 skips `_` folders, so the tree stays its layout.
//!
//! Why it stays right:
//! - berth writes the link before the revision link when it stores a manifest with a
//!   subject, so a stored manifest is always indexed; a crash in between leaves a link to
//!   a manifest that is not in the repository, which reads skip.
//! - Every read checks each link against the revision links, so a manifest deleted by
//!   anyone (berth, GC, registry:2) is never listed.
//! - Manifests somebody else wrote (registry:2 serving the same tree, or a tree migrated
//!   from it) are found by catching up: the revisions this process has already looked at
//!   are remembered per repository; when the revisions folder changed since, its names are
//!   listed and only the new manifests are read and indexed. A folder whose change time
//!   cannot be told is listed on every read (names only, never the manifests again).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use super::driver::Driver;
use super::gc::links;
use super::paths::Paths;
use super::{Storage, read_link, write_link};
use crate::registry::Error;
use crate::registry::manifest::Manifest;
use crate::registry::reference::{Digest, RepoName};

/// A folder changed this recently may change again within the same timestamp tick
/// (filesystems stamp with a coarse clock): its time is not trusted to mean "no news".
const SETTLE: Duration = Duration::from_secs(2);

/// What this process has indexed of one repository's revisions.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Revisions already read (and indexed when they have a subject).
    known: HashSet<Digest>,
    /// The revisions folder's change time when `known` was complete, if trusted.
    stamp: Option<SystemTime>,
}

/// Per-repository catch-up state.
pub(super) type SeenMap = HashMap<RepoName, Seen>;

/// When anything was last added to or removed from `name`'s revisions (the folder and
/// its algorithm folders); `None` when the driver cannot tell.
fn revisions_stamp(
    drv: &dyn Driver,
    p: &Paths,
    name: &RepoName,
) -> Result<Option<SystemTime>, Error> {
    let dir = p.revisions(name);
    let mut latest = match drv.changed_at(&dir)? {
        Some(t) => t,
        None => return Ok(None),
    };
    for alg in super::subdirs(drv, &dir)? {
        match drv.changed_at(&dir.join(&alg))? {
            Some(t) => latest = latest.max(t),
            None => return Ok(None),
        }
    }
    Ok(Some(latest))
}

/// The subject a stored manifest names, if any (unparseable content has none).
fn subject_of(drv: &dyn Driver, p: &Paths, d: &Digest) -> Result<Option<Digest>, Error> {
    Ok(drv
        .get(&p.blob_data(d))?
        .and_then(|b| Manifest::parse(&b, None).ok())
        .and_then(|m| m.subject)
        .map(|s| s.digest))
}

impl Storage {
    fn seen_map(&self) -> std::sync::MutexGuard<'_, SeenMap> {
        self.inner
            .local
            .referrers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Indexes manifests of `name` this process has not looked at yet (written by someone
    /// else), reading only those.
    fn catch_up(&self, drv: &dyn Driver, p: &Paths, name: &RepoName) -> Result<(), Error> {
        let stamp = revisions_stamp(drv, p, name)?;
        let known: HashSet<Digest> = {
            let map = self.seen_map();
            match map.get(name) {
                Some(s) if stamp.is_some() && s.stamp == stamp => return Ok(()),
                Some(s) => s.known.clone(),
                None => HashSet::new(),
            }
        };
        let present: Vec<Digest> = links(drv, &p.revisions(name))?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        for d in present.iter().filter(|d| !known.contains(*d)) {
            if let Some(s) = subject_of(drv, p, d)? {
                write_link(drv, &p.referrer_link(name, &s, d), d)?;
            }
        }
        let settled = stamp.filter(|t| {
            SystemTime::now()
                .duration_since(*t)
                .is_ok_and(|age| age > SETTLE)
        });
        let mut map = self.seen_map();
        let seen = map.entry(name.clone()).or_default();
        seen.known = present.into_iter().collect();
        seen.stamp = settled;
        Ok(())
    }

    /// Records that this process indexed `d` itself (stored with its subject), so catching
    /// up does not read it again.
    pub(super) fn indexed(&self, name: &RepoName, d: &Digest) {
        let mut map = self.seen_map();
        if let Some(seen) = map.get_mut(name) {
            seen.known.insert(d.clone());
        }
    }

    /// Every manifest of `name` whose subject is `subject`, with its bytes, in digest
    /// order.
    pub(crate) async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<(Digest, Vec<u8>)>, Error> {
        let (me, name, subject) = (self.clone(), name.clone(), subject.clone());
        self.run(move |drv, p| {
            me.catch_up(drv, p, &name)?;
            let mut out = Vec::new();
            for (d, _) in links(drv, &p.referrers(&name, &subject))? {
                if read_link(drv, &p.revision_link(&name, &d))?.as_ref() != Some(&d) {
                    continue;
                }
                if let Some(bytes) = drv.get(&p.blob_data(&d))? {
                    out.push((d, bytes));
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Removes `d`'s entry from the index of the subject it names (its manifest is being
/// deleted). Reads skip a missed one anyway; this keeps the folder from growing.
pub(super) fn unindex(
    drv: &dyn Driver,
    p: &Paths,
    name: &RepoName,
    d: &Digest,
) -> Result<(), Error> {
    if let Some(s) = subject_of(drv, p, d)? {
        let link = p.referrer_link(name, &s, d);
        if let Some(dir) = link.parent() {
            drv.delete(&dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
