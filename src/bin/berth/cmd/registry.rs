//! `berth registry`: the embedded registry as an operator sees it.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::Global;
use crate::output::{self, Table};

/// `berth registry …`
#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// Addresses, TLS identity, storage root, blob count and bytes.
    Status,
    /// Repositories with tag counts and sizes.
    Repos,
    /// Tags of a repository.
    Tags {
        /// Repository, e.g. team/app.
        repository: String,
    },
    /// Delete unreferenced blobs; online and safe while pushes run.
    Gc {
        /// Report what would go and the bytes it would free; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete manifests that no tag reaches.
        #[arg(long)]
        delete_untagged: bool,
        /// Never collect content younger than this, e.g. 1h, 30m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Upload sessions in progress; --purge removes old ones.
    Uploads {
        /// Remove the sessions listed.
        #[arg(long)]
        purge: bool,
        /// Only sessions older than this, e.g. 24h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// With --purge: list what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every blob and resolve every link; exit 1 when anything is wrong.
    Fsck {
        /// Move corrupt blobs to a quarantine folder (never deletes).
        #[arg(long)]
        repair: bool,
    },
}

/// Bytes as KiB/MiB/GiB.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Runs a `registry` command.
pub async fn run(g: &Global, cmd: RegistryCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        RegistryCmd::Status => {
            let s = client.registry_status().await?;
            if g.json {
                output::json(&s)?;
            } else {
                let mut t = Table::new(&["FIELD", "VALUE"]);
                let rows = [
                    ("enabled", s.enabled.to_string()),
                    (
                        "listeners",
                        output::list(
                            &s.listeners
                                .iter()
                                .map(|a| format!("https://{a}"))
                                .collect::<Vec<_>>(),
                        ),
                    ),
                    ("TLS certificate", s.certificate_serial.clone()),
                    ("TLS names", output::list(&s.certificate_sans)),
                    (
                        "TLS expires",
                        s.certificate_not_after
                            .map(|t| format!("{} ({})", output::date(t), output::relative(t)))
                            .unwrap_or_default(),
                    ),
                    ("storage root", s.storage_root.clone()),
                    ("repositories", s.repositories.to_string()),
                    ("blobs", format!("{} ({})", s.blobs, size(s.bytes))),
                    ("uploads", s.uploads.to_string()),
                ];
                for (k, v) in rows {
                    t.row(vec![k.to_string(), v]);
                }
                t.print();
            }
        }
        RegistryCmd::Repos => {
            let repos = client.registry_repos().await?;
            if g.json {
                output::json(&repos)?;
            } else {
                let mut t = Table::new(&["REPOSITORY", "TAGS", "MANIFESTS", "SIZE"]);
                for r in &repos {
                    t.row(vec![
                        r.name.clone(),
                        r.tags.to_string(),
                        r.manifests.to_string(),
                        size(r.bytes),
                    ]);
                }
                t.print();
            }
        }
        RegistryCmd::Tags { repository } => {
            let tags = client.registry_tags(&repository).await?;
            if g.json {
                output::json(&serde_json::json!({ "name": repository, "tags": tags }))?;
            } else {
                for t in tags {
                    println!("{t}");
                }
            }
        }
        RegistryCmd::Gc {
            dry_run,
            delete_untagged,
            grace,
        } => {
            let r = client
                .registry_gc(dry_run, delete_untagged, Some(grace))
                .await?;
            if g.json {
                output::json(&r)?;
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                for (repo, d) in &r.manifests_deleted {
                    println!("{verb} manifest {repo}@{d}");
                }
                for (d, n) in &r.blobs_deleted {
                    println!("{verb} blob {d} ({})", size(*n));
                }
                println!(
                    "{verb} {} blobs and {} manifests, {} {}; kept {} in use and {} younger than {}",
                    r.blobs_deleted.len(),
                    r.manifests_deleted.len(),
                    size(r.bytes_freed),
                    if dry_run { "would be freed" } else { "freed" },
                    r.blobs_in_use,
                    r.blobs_young,
                    humantime::format_duration(grace)
                );
            }
        }
        RegistryCmd::Uploads {
            purge,
            older_than,
            dry_run,
        } => {
            if dry_run && !purge {
                anyhow::bail!("--dry-run only makes sense with --purge");
            }
            let list = client.registry_uploads(purge, older_than, dry_run).await?;
            if g.json {
                output::json(&list)?;
            } else {
                let mut t = Table::new(&["REPOSITORY", "ID", "BYTES", "AGE"]);
                for u in &list {
                    let age = humantime::format_duration(Duration::from_secs(u.age().as_secs()))
                        .to_string();
                    t.row(vec![
                        u.repository.clone(),
                        u.id.clone(),
                        u.size.to_string(),
                        age,
                    ]);
                }
                t.print();
                if purge {
                    let verb = if dry_run { "would purge" } else { "purged" };
                    println!("{verb} {} upload sessions", list.len());
                }
            }
        }
        RegistryCmd::Fsck { repair } => {
            let r = client.registry_fsck(repair).await?;
            if g.json {
                output::json(&r)?;
            } else {
                for p in &r.problems {
                    println!(
                        "{}: {} {} ({})",
                        p.kind,
                        p.digest,
                        p.path.display(),
                        p.detail
                    );
                }
                println!(
                    "checked {} blobs ({}): {} problems",
                    r.blobs_checked,
                    size(r.bytes_checked),
                    r.problems.len()
                );
            }
            if !r.problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
