//! `berth ca`: the certificate authority every berth certificate chains to.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use crate::Global;
use crate::cmd::cert::print_details;
use crate::output::{self, Table};

/// `berth ca …`
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// The CA certificate (PEM) and its details.
    Show {
        /// Print only the PEM, e.g. to pipe into a trust store.
        #[arg(long)]
        pem: bool,
        /// Also write the PEM to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// The current certificate revocation list.
    Crl {
        /// Write the PEM CRL to this file instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Serialize)]
struct CaJson<'a> {
    certificate_pem: &'a str,
    details: &'a berth::pki::CertDetails,
}

/// Runs a `ca` command.
pub async fn run(g: &Global, cmd: CaCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        CaCmd::Show {
            pem: pem_only,
            out,
            force,
        } => {
            let (pem, details) = client.ca().await?;
            if let Some(path) = &out {
                output::write_file(path, pem.as_bytes(), 0o644, force)?;
            }
            if g.json {
                output::json(&CaJson {
                    certificate_pem: &pem,
                    details: &details,
                })?;
            } else if pem_only {
                print!("{pem}");
            } else {
                print_details(&details);
                println!();
                print!("{pem}");
            }
        }
        CaCmd::Crl { out, force } => {
            let crl = client.crl().await?;
            if g.json {
                output::json(&crl)?;
            } else if let Some(path) = &out {
                output::write_file(path, crl.pem.as_bytes(), 0o644, force)?;
                eprintln!("wrote {} ({} revoked)", path.display(), crl.revoked_count);
            } else {
                let mut t = Table::new(&["REVOKED", "THIS UPDATE", "NEXT UPDATE"]);
                t.row(vec![
                    crl.revoked_count.to_string(),
                    output::date(crl.this_update),
                    output::date(crl.next_update),
                ]);
                t.print();
                println!();
                print!("{}", crl.pem);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
