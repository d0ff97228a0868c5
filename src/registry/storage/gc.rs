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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Storage, blocking, io, read_link, remove_dir_all_if_exists, subdirs, walk_repos};
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
    /// "corrupt-blob", "dangling-layer-link", "dangling-revision", "dangling-tag".
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

fn age(path: &Path) -> Option<Duration> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(m)
            .unwrap_or(Duration::ZERO),
    )
}

/// Every `data` file under `blobs/`, with its digest.
fn all_blobs(v2: &Path) -> Result<Vec<(Digest, PathBuf)>, Error> {
    let mut out = Vec::new();
    let root = v2.join("blobs");
    for alg in subdirs(&root)? {
        for pre in subdirs(&root.join(&alg))? {
            for hex in subdirs(&root.join(&alg).join(&pre))? {
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                let data = root.join(&alg).join(&pre).join(&hex).join("data");
                if data.is_file() {
                    out.push((d, data));
                }
            }
        }
    }
    Ok(out)
}

/// Link files of one kind in a repository: `<dir>/<alg>/<hex>/link`, with digests.
fn links(dir: &Path) -> Result<Vec<(Digest, PathBuf)>, Error> {
    let mut out = Vec::new();
    for alg in subdirs(dir)? {
        for hex in subdirs(&dir.join(&alg))? {
            let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            out.push((d, dir.join(&alg).join(&hex).join("link")));
        }
    }
    Ok(out)
}

/// Every repository folder, including ones holding only layers or uploads.
pub(super) fn all_repos(repos: &Path) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    walk_repos(repos, "", &mut out, &|p: &Path| {
        p.join("_manifests").is_dir() || p.join("_layers").is_dir() || p.join("_uploads").is_dir()
    })?;
    out.sort();
    Ok(out)
}

impl Storage {
    /// Marks from tags and revisions, sweeps what nothing references and the grace period
    /// does not protect. See the module doc for why this is safe while serving.
    pub async fn gc(&self, opts: GcOptions) -> Result<GcReport, Error> {
        let _exclusive = self.inner.gc_lock.write().await;
        let seen = self.recently_seen(opts.grace);
        let p = self.paths().clone();
        blocking(move || {
            let mut report = GcReport {
                dry_run: opts.dry_run,
                ..GcReport::default()
            };
            let young = |path: &Path| age(path).is_some_and(|a| a < opts.grace);
            let mut marked: HashSet<Digest> = HashSet::new();
            // Blobs a client was recently told exist count as young, like fresh links.
            let mut young_links: HashSet<Digest> = seen;
            let mut layer_links: Vec<(Digest, PathBuf)> = Vec::new();
            for repo in all_repos(&p.repositories())? {
                let Ok(name) = repo.parse::<RepoName>() else {
                    continue;
                };
                for (d, link) in links(&p.repo(&name).join("_layers"))? {
                    if young(&link) {
                        young_links.insert(d.clone());
                    }
                    layer_links.push((d, link));
                }
                // Manifests of this repository, parsed.
                let mut manifests: HashMap<Digest, Option<Manifest>> = HashMap::new();
                let mut young_revisions = Vec::new();
                for (d, link) in links(&p.revisions(&name))? {
                    if read_link(&link)?.as_ref() != Some(&d) {
                        continue;
                    }
                    if young(&link) {
                        young_revisions.push(d.clone());
                    }
                    let parsed = std::fs::read(p.blob_data(&d))
                        .ok()
                        .and_then(|b| Manifest::parse(&b, None).ok());
                    manifests.insert(d, parsed);
                }
                let mut roots: Vec<Digest> = if opts.delete_untagged {
                    let mut r = young_revisions;
                    for t in subdirs(&p.tags(&name))? {
                        let Ok(tag) = t.parse::<Tag>() else { continue };
                        if let Some(d) = read_link(&p.tag_current(&name, &tag))? {
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
                    if kept.contains(d) {
                        marked.insert(d.clone());
                        match m {
                            Some(m) => marked.extend(m.blobs.iter().map(|b| b.digest.clone())),
                            // Unreadable: keep everything this repository links, to be safe.
                            None => marked.extend(
                                links(&p.repo(&name).join("_layers"))?
                                    .into_iter()
                                    .map(|l| l.0),
                            ),
                        }
                    } else {
                        report.manifests_deleted.push((repo.clone(), d.to_string()));
                        if !opts.dry_run {
                            if let Some(dir) = p.revision_link(&name, d).parent() {
                                remove_dir_all_if_exists(dir)?;
                            }
                            for t in subdirs(&p.tags(&name))? {
                                let Ok(tag) = t.parse::<Tag>() else { continue };
                                if let Some(dir) = p.tag_index(&name, &tag, d).parent() {
                                    remove_dir_all_if_exists(dir)?;
                                }
                            }
                        }
                    }
                }
            }
            let mut deleted: HashSet<Digest> = HashSet::new();
            for (d, data) in all_blobs(p.v2())? {
                if marked.contains(&d) {
                    report.blobs_in_use += 1;
                    continue;
                }
                if young_links.contains(&d) || young(&data) {
                    report.blobs_young += 1;
                    continue;
                }
                let size = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
                report.bytes_freed += size;
                report.blobs_deleted.push((d.to_string(), size));
                if !opts.dry_run {
                    remove_dir_all_if_exists(&p.blob_dir(&d))?;
                    let _ = std::fs::remove_file(p.media_type(&d));
                    deleted.insert(d);
                }
            }
            for (d, link) in layer_links {
                if deleted.contains(&d)
                    && let Some(dir) = link.parent()
                {
                    remove_dir_all_if_exists(dir)?;
                }
            }
            if !opts.dry_run {
                tracing::info!(
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
    pub async fn fsck(&self, repair: bool) -> Result<FsckReport, Error> {
        let p = self.paths().clone();
        blocking(move || {
            let mut report = FsckReport::default();
            for (d, data) in all_blobs(p.v2())? {
                let f = std::fs::File::open(&data).map_err(io("open", &data))?;
                let mut h = d.algorithm().hasher();
                let mut r = std::io::BufReader::with_capacity(1024 * 1024, f);
                let mut n = 0u64;
                loop {
                    let buf = std::io::BufRead::fill_buf(&mut r).map_err(io("read", &data))?;
                    if buf.is_empty() {
                        break;
                    }
                    h.update(buf);
                    let len = buf.len();
                    n += len as u64;
                    std::io::BufRead::consume(&mut r, len);
                }
                report.blobs_checked += 1;
                report.bytes_checked += n;
                let actual = h.finish();
                if actual != d {
                    let mut detail = format!("content hashes to {actual}");
                    if repair {
                        let q = p.v2().join("_berth/quarantine").join(d.algorithm().name()).join(d.hex());
                        crate::fsutil::create_dir_all(&q, 0o700)?;
                        std::fs::rename(&data, q.join("data")).map_err(io("quarantine", &data))?;
                        detail.push_str(&format!("; moved to {}", q.display()));
                        tracing::warn!(digest = %d, quarantine = %q.display(), "corrupt blob quarantined");
                    }
                    report.problems.push(FsckProblem {
                        kind: "corrupt-blob".into(),
                        path: data,
                        digest: d.to_string(),
                        detail,
                    });
                }
            }
            for repo in all_repos(&p.repositories())? {
                let Ok(name) = repo.parse::<RepoName>() else { continue };
                let mut check = |kind: &str, dir: PathBuf| -> Result<(), Error> {
                    for (d, link) in links(&dir)? {
                        let target = read_link(&link)?;
                        let detail = if target.as_ref() != Some(&d) {
                            Some(format!("link holds {target:?}, not {d}"))
                        } else if !p.blob_data(&d).is_file() {
                            Some(format!("blob {d} is missing"))
                        } else {
                            None
                        };
                        if let Some(detail) = detail {
                            report.problems.push(FsckProblem {
                                kind: kind.into(),
                                path: link,
                                digest: d.to_string(),
                                detail: format!("{repo}: {detail}"),
                            });
                        }
                    }
                    Ok(())
                };
                check("dangling-layer-link", p.repo(&name).join("_layers"))?;
                check("dangling-revision", p.revisions(&name))?;
                for t in subdirs(&p.tags(&name))? {
                    let Ok(tag) = t.parse::<Tag>() else { continue };
                    let link = p.tag_current(&name, &tag);
                    let Some(d) = read_link(&link)? else { continue };
                    if read_link(&p.revision_link(&name, &d))?.as_ref() != Some(&d) || !p.blob_data(&d).is_file() {
                        report.problems.push(FsckProblem {
                            kind: "dangling-tag".into(),
                            path: link,
                            digest: d.to_string(),
                            detail: format!("{repo}:{tag} points at a manifest that is not stored"),
                        });
                    }
                }
            }
            Ok(report)
        })
        .await
    }

    /// Blob count and bytes.
    pub async fn stats(&self) -> Result<StorageStats, Error> {
        let p = self.paths().clone();
        blocking(move || {
            let mut s = StorageStats::default();
            for (_, data) in all_blobs(p.v2())? {
                s.blobs += 1;
                s.bytes += std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            }
            Ok(s)
        })
        .await
    }

    /// Repositories with tag and manifest counts and sizes.
    pub async fn repo_summaries(&self) -> Result<Vec<RepoSummary>, Error> {
        let p = self.paths().clone();
        let names = self.repositories().await?;
        blocking(move || {
            let mut out = Vec::new();
            for repo in names {
                let Ok(name) = repo.parse::<RepoName>() else {
                    continue;
                };
                let size = |d: &Digest| {
                    std::fs::metadata(p.blob_data(d))
                        .map(|m| m.len())
                        .unwrap_or(0)
                };
                let layers = links(&p.repo(&name).join("_layers"))?;
                let revisions = links(&p.revisions(&name))?;
                let tags = subdirs(&p.tags(&name))?
                    .into_iter()
                    .filter_map(|t| t.parse::<Tag>().ok())
                    .filter(|t| p.tag_current(&name, t).is_file())
                    .count();
                let bytes = layers.iter().map(|(d, _)| size(d)).sum::<u64>()
                    + revisions.iter().map(|(d, _)| size(d)).sum::<u64>();
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
