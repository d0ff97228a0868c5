//! Online garbage collection, fsck and the storage figures behind `berth registry status`.
//!
//! GC is safe while the registry serves, which registry:2's is not (distribution#3045: GC
//! during a push deleted the layers of the image being pushed):
//! - it runs under the storage's write lock, and every manifest PUT checks its blobs and
//!   links itself under the read lock, so a manifest is either stored with all its blobs
//!   or refused;
//! - a blob, layer link or manifest revision younger than the grace period is never
//!   swept, so the layers of a push in progress (uploaded, not yet referenced) survive;
//! - finishing an upload of a blob that already exists, or mounting one, rewrites the
//!   repository's link, which makes the blob young again; a blob a client was told exists
//!   (HEAD or GET, after which docker skips the upload) stays young in memory for the grace
//!   period too;
//! - upload sessions live in `_uploads/` and are never touched by GC.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::driver::{Driver, Key};
use super::paths::Paths;
use super::{CHUNK, Storage, read_full, read_link, subdirs, walk_repos};
use crate::registry::Error;
use crate::registry::manifest::Manifest;
use crate::registry::reference::{Digest, RepoName, Tag};

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only.
    pub dry_run: bool,
    /// Also delete manifests no tag reaches (through indexes and referrers).
    pub delete_untagged: bool,
    /// Content younger than this is never collected.
    pub grace: Duration,
}

/// What a collection did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// True when nothing was deleted.
    pub dry_run: bool,
    /// Blobs (digest, bytes) deleted.
    pub blobs_deleted: Vec<(String, u64)>,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Manifests (repository, digest) deleted.
    pub manifests_deleted: Vec<(String, String)>,
    /// Blobs kept because something references them.
    pub blobs_in_use: usize,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub blobs_young: usize,
}

/// One problem fsck found.
#[derive(Debug, Clone, Serialize)]
pub struct FsckProblem {
    /// "corrupt-blob", "dangling-layer-link", "dangling-revision", "dangling-tag",
    /// "temp-leftover".
    pub kind: String,
    /// The file at fault.
    pub path: PathBuf,
    /// The digest involved.
    pub digest: String,
    /// What is wrong, and what was done.
    pub detail: String,
}

/// What fsck found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Blobs re-hashed.
    pub blobs_checked: u64,
    /// Their bytes.
    pub bytes_checked: u64,
    /// Problems.
    pub problems: Vec<FsckProblem>,
}

/// Blob count and bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageStats {
    /// Blobs stored (layers, configs, manifests).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One repository in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct RepoSummary {
    /// Name.
    pub name: String,
    /// Tags.
    pub tags: usize,
    /// Manifests (revisions).
    pub manifests: usize,
    /// Bytes of the blobs it links plus its manifests (shared blobs count in each repo).
    pub bytes: u64,
}

/// How long ago the object at `key` was written; `None` when it is not there.
pub(super) fn age(drv: &dyn Driver, key: &Key) -> Result<Option<Duration>, Error> {
    Ok(drv.stat(key)?.map(|m| {
        SystemTime::now()
            .duration_since(m.modified)
            .unwrap_or(Duration::ZERO)
    }))
}

/// How coarse a store's object times may be: S3's `Last-Modified` counts whole seconds.
pub(super) const STORE_CLOCK_STEP: Duration = Duration::from_secs(1);

/// Leftovers younger than this may belong to a write in progress; older ones a crash left.
const LEFTOVER_GRACE: Duration = Duration::from_secs(10 * 60);

/// Whether a file name is a temp file of an atomic write (`.NAME.tmp-XXXXXXXXXXXX`).
fn is_leftover(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// The temp files crashed atomic writes left anywhere under `root` (upload sessions are
/// not leftovers: they have their own purge), with their age.
fn leftovers(drv: &dyn Driver, root: &Key, out: &mut Vec<(Key, Duration)>) -> Result<(), Error> {
    for e in drv.list(root)? {
        let k = root.join(&e.name);
        if e.is_dir {
            if e.name != "_uploads" {
                leftovers(drv, &k, out)?;
            }
        } else if is_leftover(&e.name) {
            out.push((k.clone(), age(drv, &k)?.unwrap_or(Duration::ZERO)));
        }
    }
    Ok(())
}

/// Removes a leftover and the folders it leaves empty, up to (not including) `top`: a
/// blob folder or tag folder that held only a temp file goes with it.
fn remove_leftover(drv: &dyn Driver, k: &Key, top: &Key) -> Result<(), Error> {
    drv.delete(k)?;
    let mut dir = k.parent();
    while let Some(d) = dir {
        if d == *top || !d.as_str().starts_with(top.as_str()) || !drv.list(&d)?.is_empty() {
            break;
        }
        drv.delete(&d)?;
        dir = d.parent();
    }
    Ok(())
}

/// Every blob's `data` under `blobs/`, with its digest.
fn all_blobs(drv: &dyn Driver, p: &Paths) -> Result<Vec<(Digest, Key)>, Error> {
    let mut out = Vec::new();
    let root = p.blobs();
    for alg in subdirs(drv, &root)? {
        for pre in subdirs(drv, &root.join(&alg))? {
            for hex in subdirs(drv, &root.join(&alg).join(&pre))? {
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                let data = p.blob_data(&d);
                if drv.stat(&data)?.is_some() {
                    out.push((d, data));
                }
            }
        }
    }
    Ok(out)
}

/// Link files of one kind in a repository: `<dir>/<alg>/<hex>/link`, with digests.
pub(super) fn links(drv: &dyn Driver, dir: &Key) -> Result<Vec<(Digest, Key)>, Error> {
    let mut out = Vec::new();
    for alg in subdirs(drv, dir)? {
        for hex in subdirs(drv, &dir.join(&alg))? {
            let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            out.push((d, dir.join(&alg).join(&hex).join("link")));
        }
    }
    Ok(out)
}

/// Every repository folder, including ones holding only layers or uploads.
pub(super) fn all_repos(drv: &dyn Driver, p: &Paths) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    walk_repos(drv, &p.repositories(), "", &mut out, &|drv, k| {
        Ok(drv.has_children(&k.join("_manifests"))?
            || drv.has_children(&k.join("_layers"))?
            || drv.has_children(&k.join("_uploads"))?)
    })?;
    out.sort();
    Ok(out)
}

impl Storage {
    /// Marks from tags and revisions, sweeps what nothing references and the grace period
    /// does not protect. See the module doc for why this is safe while serving.
    pub(crate) async fn gc(&self, opts: GcOptions) -> Result<GcReport, Error> {
        let shared = self.inner.shared;
        if let Some(sh) = shared
            && opts.grace < sh.min_grace
        {
            return Err(Error::GraceTooShort {
                grace: opts.grace,
                min: sh.min_grace,
            });
        }
        let _exclusive = self.inner.local.gc_lock.write().await;
        let seen = self.recently_seen(opts.grace);
        self.run(move |drv, p| {
            let mut report = GcReport {
                dry_run: opts.dry_run,
                ..GcReport::default()
            };
            let young = |key: &Key| -> Result<bool, Error> {
                Ok(age(drv, key)?.is_some_and(|a| a < opts.grace))
            };
            // On a shared store, the last look before deleting `d` (whose own object is
            // `key`): a writer elsewhere may have marked it, or stored it again, since the
            // mark phase read the store. `None`: keep it; else when the look began, for
            // `in_time`. See `Shared` for why this is enough.
            let last_look = |d: &Digest, key: &Key| -> Result<Option<std::time::Instant>, Error> {
                let started = std::time::Instant::now();
                // S3 reports times to the second, cut down: an object can look up to a
                // second older than it is, so the last look allows that second.
                let young_here = |k: &Key| -> Result<bool, Error> {
                    Ok(age(drv, k)?.is_some_and(|a| a < opts.grace + STORE_CLOCK_STEP))
                };
                if shared.is_some() && (young_here(&p.relied(d))? || young_here(key)?) {
                    return Ok(None);
                }
                Ok(Some(started))
            };
            // A delete must follow its last look quickly, or a writer's mark made after
            // the look may already be waiting on it.
            let in_time = |looked: std::time::Instant| {
                shared.is_none_or(|sh| looked.elapsed() <= sh.fence / 4)
            };
            // The delete that follows a last look, through the store's prompt client. On a
            // slow store it may fail, and then what it was to delete is kept, with a word
            // in the log: GC on a struggling store skips, it does not stop.
            let deleted_promptly = |key: &Key| -> Result<bool, Error> {
                let Some(dir) = key.parent() else {
                    return Ok(true);
                };
                match drv.delete_promptly(&dir) {
                    Ok(_) => Ok(true),
                    Err(e) if shared.is_some() => {
                        tracing::warn!(key = %dir, error = %e, "GC kept what it could not delete in time");
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            };
            let mut marked: HashSet<Digest> = HashSet::new();
            // Blobs a client was recently told exist count as young, like fresh links.
            let mut young_links: HashSet<Digest> = seen;
            let mut layer_links: Vec<(Digest, Key)> = Vec::new();
            for repo in all_repos(drv, p)? {
                let Ok(name) = repo.parse::<RepoName>() else {
                    continue;
                };
                for (d, link) in links(drv, &p.layers(&name))? {
                    if young(&link)? {
                        young_links.insert(d.clone());
                    }
                    layer_links.push((d, link));
                }
                // Manifests of this repository, parsed.
                let mut manifests: HashMap<Digest, Option<Manifest>> = HashMap::new();
                let mut young_revisions = Vec::new();
                for (d, link) in links(drv, &p.revisions(&name))? {
                    if read_link(drv, &link)?.as_ref() != Some(&d) {
                        continue;
                    }
                    if young(&link)? {
                        young_revisions.push(d.clone());
                    }
                    let parsed = drv
                        .get(&p.blob_data(&d))?
                        .and_then(|b| Manifest::parse(&b, None).ok());
                    manifests.insert(d, parsed);
                }
                let mut roots: Vec<Digest> = if opts.delete_untagged {
                    let mut r = young_revisions;
                    for t in subdirs(drv, &p.tags(&name))? {
                        let Ok(tag) = t.parse::<Tag>() else { continue };
                        if let Some(d) = read_link(drv, &p.tag_current(&name, &tag))? {
                            r.push(d);
                        }
                    }
                    r
                } else {
                    manifests.keys().cloned().collect()
                };
                roots.retain(|d| manifests.contains_key(d));
                // Closure: children of indexes, subjects of kept referrers, referrers of
                // kept manifests.
                let mut kept: HashSet<Digest> = HashSet::new();
                let mut queue: VecDeque<Digest> = roots.into_iter().collect();
                loop {
                    while let Some(d) = queue.pop_front() {
                        if !kept.insert(d.clone()) {
                            continue;
                        }
                        if let Some(Some(m)) = manifests.get(&d) {
                            for c in &m.manifests {
                                queue.push_back(c.digest.clone());
                            }
                            if let Some(s) = &m.subject {
                                queue.push_back(s.digest.clone());
                            }
                        }
                    }
                    for (d, m) in &manifests {
                        if !kept.contains(d)
                            && let Some(m) = m
                            && m.subject.as_ref().is_some_and(|s| kept.contains(&s.digest))
                        {
                            queue.push_back(d.clone());
                        }
                    }
                    if queue.is_empty() {
                        break;
                    }
                }
                for (d, m) in &manifests {
                    // Kept: reachable, or (on a shared store) marked or rewritten since the
                    // mark phase, or its revision could not be deleted promptly.
                    let keep = kept.contains(d)
                        || last_look(d, &p.revision_link(&name, d))?
                            .is_none_or(|looked| !opts.dry_run && !in_time(looked))
                        || (!opts.dry_run && !deleted_promptly(&p.revision_link(&name, d))?);
                    if keep {
                        marked.insert(d.clone());
                        match m {
                            Some(m) => marked.extend(m.blobs.iter().map(|b| b.digest.clone())),
                            // Unreadable: keep everything this repository links, to be safe.
                            None => marked
                                .extend(links(drv, &p.layers(&name))?.into_iter().map(|l| l.0)),
                        }
                        continue;
                    }
                    report.manifests_deleted.push((repo.clone(), d.to_string()));
                    if !opts.dry_run {
                        // Its referrers-index entry goes with it (reads skip a stale one,
                        // but the folder would only grow).
                        super::referrers::unindex(drv, p, &name, d)?;
                        for t in subdirs(drv, &p.tags(&name))? {
                            let Ok(tag) = t.parse::<Tag>() else { continue };
                            if let Some(dir) = p.tag_index(&name, &tag, d).parent() {
                                drv.delete(&dir)?;
                            }
                        }
                    }
                }
            }
            let mut deleted: HashSet<Digest> = HashSet::new();
            for (d, data) in all_blobs(drv, p)? {
                if marked.contains(&d) {
                    report.blobs_in_use += 1;
                    continue;
                }
                if young_links.contains(&d) || young(&data)? {
                    report.blobs_young += 1;
                    continue;
                }
                let size = drv.stat(&data)?.map_or(0, |m| m.size);
                let Some(looked) = last_look(&d, &data)? else {
                    report.blobs_young += 1;
                    continue;
                };
                if !opts.dry_run && !in_time(looked) {
                    report.blobs_young += 1;
                    continue;
                }
                if !opts.dry_run {
                    if !deleted_promptly(&data)? {
                        report.blobs_young += 1;
                        continue;
                    }
                    drv.delete(&p.media_type(&d))?;
                    if shared.is_some() {
                        drv.delete(&p.relied(&d))?;
                    }
                    deleted.insert(d.clone());
                }
                report.bytes_freed += size;
                report.blobs_deleted.push((d.to_string(), size));
            }
            for (d, link) in layer_links {
                if deleted.contains(&d)
                    && let Some(dir) = link.parent()
                {
                    drv.delete(&dir)?;
                }
            }
            // Marks of blobs that are gone (a delete by hand, another GC), once old.
            if shared.is_some() && !opts.dry_run {
                let root = p.relied_root();
                for alg in subdirs(drv, &root)? {
                    for e in drv.list(&root.join(&alg))? {
                        let Ok(d) = format!("{alg}:{}", e.name).parse::<Digest>() else {
                            continue;
                        };
                        if !e.is_dir
                            && !young(&p.relied(&d))?
                            && drv.stat(&p.blob_data(&d))?.is_none()
                        {
                            drv.delete(&p.relied(&d))?;
                        }
                    }
                }
            }
            // Temp files of writes a crash cut short, once past the grace period.
            let mut temps = Vec::new();
            leftovers(drv, &p.v2(), &mut temps)?;
            let mut removed = 0usize;
            for (k, a) in temps {
                if a >= opts.grace.max(LEFTOVER_GRACE) {
                    if !opts.dry_run {
                        remove_leftover(drv, &k, &p.v2())?;
                    }
                    removed += 1;
                }
            }
            if !opts.dry_run {
                tracing::info!(
                    leftovers = removed,
                    blobs = report.blobs_deleted.len(),
                    bytes = report.bytes_freed,
                    manifests = report.manifests_deleted.len(),
                    "registry garbage collected"
                );
            }
            Ok(report)
        })
        .await
    }

    /// Re-hashes every blob and resolves every link. With `repair`, corrupt blobs move to
    /// `_berth/quarantine/` (never deleted), so clients get BLOB_UNKNOWN instead of bad
    /// bytes.
    pub(crate) async fn fsck(&self, repair: bool) -> Result<FsckReport, Error> {
        self.run(move |drv, p| {
            let mut report = FsckReport::default();
            for (d, data) in all_blobs(drv, p)? {
                let path = drv.locate(&data);
                let Some(mut r) = drv.reader(&data, 0)? else {
                    continue;
                };
                let mut h = d.algorithm().hasher();
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                loop {
                    let k = read_full(r.as_mut(), &mut buf).map_err(|source| Error::Io {
                        op: "read",
                        path: path.clone(),
                        source,
                    })?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                drop(r);
                report.blobs_checked += 1;
                report.bytes_checked += n;
                let actual = h.finish();
                if actual != d {
                    let mut detail = format!("content hashes to {actual}");
                    if repair {
                        let q = p.quarantine(&d);
                        drv.rename(&data, &q)?;
                        let qpath = drv.locate(&q);
                        detail.push_str(&format!("; moved to {}", qpath.display()));
                        tracing::warn!(digest = %d, quarantine = %qpath.display(), "corrupt blob quarantined");
                    }
                    report.problems.push(FsckProblem {
                        kind: "corrupt-blob".into(),
                        path,
                        digest: d.to_string(),
                        detail,
                    });
                }
            }
            for repo in all_repos(drv, p)? {
                let Ok(name) = repo.parse::<RepoName>() else { continue };
                let mut check = |kind: &str, dir: Key| -> Result<(), Error> {
                    for (d, link) in links(drv, &dir)? {
                        let target = read_link(drv, &link)?;
                        if target.is_none() && drv.stat(&link)?.is_none() {
                            // A folder without its link: a write a crash cut short before
                            // it was acknowledged. Not a link; its temp file is reported
                            // below as a leftover.
                            continue;
                        }
                        let detail = if target.as_ref() != Some(&d) {
                            Some(format!("link holds {target:?}, not {d}"))
                        } else if drv.stat(&p.blob_data(&d))?.is_none() {
                            Some(format!("blob {d} is missing"))
                        } else {
                            None
                        };
                        if let Some(detail) = detail {
                            report.problems.push(FsckProblem {
                                kind: kind.into(),
                                path: drv.locate(&link),
                                digest: d.to_string(),
                                detail: format!("{repo}: {detail}"),
                            });
                        }
                    }
                    Ok(())
                };
                check("dangling-layer-link", p.layers(&name))?;
                check("dangling-revision", p.revisions(&name))?;
                for t in subdirs(drv, &p.tags(&name))? {
                    let Ok(tag) = t.parse::<Tag>() else { continue };
                    let link = p.tag_current(&name, &tag);
                    let Some(d) = read_link(drv, &link)? else { continue };
                    if read_link(drv, &p.revision_link(&name, &d))?.as_ref() != Some(&d)
                        || drv.stat(&p.blob_data(&d))?.is_none()
                    {
                        report.problems.push(FsckProblem {
                            kind: "dangling-tag".into(),
                            path: drv.locate(&link),
                            digest: d.to_string(),
                            detail: format!("{repo}:{tag} points at a manifest that is not stored"),
                        });
                    }
                }
            }
            let mut temps = Vec::new();
            leftovers(drv, &p.v2(), &mut temps)?;
            for (k, a) in temps {
                let mut detail = format!("a write a crash cut short left this temp file ({}s old)", a.as_secs());
                if repair && a >= LEFTOVER_GRACE {
                    remove_leftover(drv, &k, &p.v2())?;
                    detail.push_str("; removed");
                } else if repair {
                    detail.push_str("; kept: a write may still be in progress");
                }
                report.problems.push(FsckProblem {
                    kind: "temp-leftover".into(),
                    path: drv.locate(&k),
                    digest: String::new(),
                    detail,
                });
            }
            Ok(report)
        })
        .await
    }

    /// Blob count and bytes.
    pub(crate) async fn stats(&self) -> Result<StorageStats, Error> {
        self.run(move |drv, p| {
            let mut s = StorageStats::default();
            for (_, data) in all_blobs(drv, p)? {
                s.blobs += 1;
                s.bytes += drv.stat(&data)?.map_or(0, |m| m.size);
            }
            Ok(s)
        })
        .await
    }

    /// Repositories with tag and manifest counts and sizes.
    pub(crate) async fn repo_summaries(&self) -> Result<Vec<RepoSummary>, Error> {
        let names = self.repositories().await?;
        self.run(move |drv, p| {
            let mut out = Vec::new();
            for repo in names {
                let Ok(name) = repo.parse::<RepoName>() else {
                    continue;
                };
                let size = |d: &Digest| -> Result<u64, Error> {
                    Ok(drv.stat(&p.blob_data(d))?.map_or(0, |m| m.size))
                };
                let layers = links(drv, &p.layers(&name))?;
                let revisions = links(drv, &p.revisions(&name))?;
                let mut tags = 0;
                for t in subdirs(drv, &p.tags(&name))? {
                    if let Ok(tag) = t.parse::<Tag>()
                        && drv.stat(&p.tag_current(&name, &tag))?.is_some()
                    {
                        tags += 1;
                    }
                }
                let mut bytes = 0;
                for (d, _) in layers.iter().chain(revisions.iter()) {
                    bytes += size(d)?;
                }
                out.push(RepoSummary {
                    name: repo,
                    tags,
                    manifests: revisions.len(),
                    bytes,
                });
            }
            Ok(out)
        })
        .await
    }
}
