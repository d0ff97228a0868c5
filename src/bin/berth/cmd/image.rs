//! `berth image`: one image in the embedded registry.

use std::process::ExitCode;

use clap::Subcommand;

use crate::Global;
use crate::cmd::registry::size;
use crate::output::{self, Table};

/// `berth image …`
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Manifest, config (image ID), layers with diff IDs and chain IDs, or an index's platforms.
    Inspect {
        /// repo:tag, repo@digest, or repo (repo:latest).
        reference: String,
    },
    /// Untag (repo:tag), or delete a manifest and its tags (repo@digest).
    Rm {
        /// repo:tag or repo@digest.
        reference: String,
    },
}

/// Runs an `image` command.
pub async fn run(g: &Global, cmd: ImageCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        ImageCmd::Inspect { reference } => {
            let i = client.image_inspect(&reference).await?;
            if g.json {
                output::json(&i)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("repository   {}", i.repository);
            println!("digest       {}", i.digest);
            println!("media type   {}", i.media_type);
            println!("kind         {}", i.kind);
            if let Some(c) = &i.config_digest {
                println!("image ID     {c}");
                println!(
                    "platform     {}/{}",
                    i.os.as_deref().unwrap_or("?"),
                    i.architecture.as_deref().unwrap_or("?")
                );
            }
            println!("size         {}", size(i.total_size));
            if !i.layers.is_empty() {
                println!();
                let mut t = Table::new(&[
                    "#",
                    "DIGEST",
                    "SIZE",
                    "COMPRESSION",
                    "DIFF ID",
                    "CHAIN ID",
                    "CONFIG",
                ]);
                for (n, l) in i.layers.iter().enumerate() {
                    t.row(vec![
                        n.to_string(),
                        l.digest.to_string(),
                        size(l.size),
                        l.compression.clone(),
                        l.diff_id
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "-".into()),
                        l.chain_id
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "-".into()),
                        match l.diff_id_matches {
                            Some(true) => "matches".into(),
                            Some(false) => "MISMATCH".into(),
                            None => "-".into(),
                        },
                    ]);
                }
                t.print();
            }
            if !i.platforms.is_empty() {
                println!();
                let mut t = Table::new(&["PLATFORM", "DIGEST", "MEDIA TYPE", "SIZE"]);
                for p in &i.platforms {
                    let mut plat = format!(
                        "{}/{}",
                        p.os.as_deref().unwrap_or("?"),
                        p.architecture.as_deref().unwrap_or("?")
                    );
                    if let Some(v) = &p.variant {
                        plat.push('/');
                        plat.push_str(v);
                    }
                    t.row(vec![
                        plat,
                        p.digest.to_string(),
                        p.media_type.clone(),
                        size(p.size),
                    ]);
                }
                t.print();
            }
        }
        ImageCmd::Rm { reference } => {
            let (digest, untagged) = client.image_rm(&reference).await?;
            if g.json {
                output::json(
                    &serde_json::json!({ "reference": reference, "digest": digest, "untagged": untagged }),
                )?;
            } else if untagged {
                println!(
                    "untagged {reference} (manifest {digest} stays; `berth registry gc --delete-untagged` frees it)"
                );
            } else {
                println!("deleted {reference} and every tag on it");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
