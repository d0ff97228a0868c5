//! `berth doctor`: why docker, podman or containerd will refuse a registry. Client-side:
//! it reads this host's certs.d trees and talks to the registry; berthd is not needed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use berth::certsd::HostPort;
use berth::doctor::{self, Report, Roots, Severity};
use clap::Args;

use crate::Global;

/// `berth doctor`
#[derive(Debug, Args)]
pub struct DoctorCmd {
    /// The registry as images name it (host[:port], or an image reference such as
    /// host:5443/team/app:1.0); none: every registry with a folder.
    registry: Option<String>,
    /// Examine this folder of host folders instead of this host's trees.
    #[arg(long = "certs-d", value_name = "DIR")]
    certs_d: Option<PathBuf>,
    /// Only the files: do not connect to the registry.
    #[arg(long)]
    no_probe: bool,
}

/// Prints a report for people: grouped by runtime, most severe first, with the fix.
pub(crate) fn print(r: &Report, colour: bool) {
    let paint = |s: &str, code: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let used: Vec<String> = r
        .folders
        .iter()
        .map(|(rt, d)| match d {
            Some(d) => format!("{rt}: {}", d.display()),
            None => format!("{rt}: -"),
        })
        .collect();
    println!("{} ({})", r.registry, used.join(", "));
    if r.findings.is_empty() {
        println!("  {} every runtime's view is sound", paint("ok", "32"));
        return;
    }
    let mut runtime = "";
    for f in &r.findings {
        if f.runtime != runtime {
            runtime = f.runtime;
            println!("  {runtime}:");
        }
        let sev = match f.severity {
            Severity::Error => paint("error", "31"),
            Severity::Warning => paint("warning", "33"),
        };
        println!("    {sev} [{}] {}", f.code, f.message);
        if let Some(c) = &f.client_error {
            println!("      the client says: {c}");
        }
        if let Some(x) = &f.fix {
            println!("      fix: {x}");
        }
    }
}

/// Exit 0: no errors; 1: errors; 2: it could not run.
pub async fn run(g: &Global, cmd: DoctorCmd) -> anyhow::Result<ExitCode> {
    let roots = match &cmd.certs_d {
        Some(d) => {
            if !d.is_dir() {
                eprintln!(
                    "berth: {} is not a folder (--certs-d names a folder of host folders, like /etc/docker/certs.d)",
                    d.display()
                );
                return Ok(ExitCode::from(2));
            }
            Roots::certs_d(d)
        }
        None => Roots::system(std::env::var_os("HOME").map(PathBuf::from).as_deref()),
    };
    let hosts: Vec<HostPort> = match &cmd.registry {
        Some(r) => match doctor::registry_of(r).parse() {
            Ok(h) => vec![h],
            Err(e) => {
                eprintln!("berth: {e}");
                return Ok(ExitCode::from(2));
            }
        },
        None => doctor::registries(&roots),
    };
    if hosts.is_empty() {
        eprintln!("berth: no registry folders found; name one: berth doctor HOST:PORT");
        return Ok(ExitCode::from(2));
    }
    let mut reports = Vec::new();
    for h in &hosts {
        reports.push(doctor::diagnose(&roots, h, !cmd.no_probe).await);
    }
    let errors = reports.iter().any(Report::has_errors);
    if g.json {
        crate::output::json(&reports)?;
    } else {
        let colour = std::io::stdout().is_terminal();
        for r in &reports {
            print(r, colour);
        }
    }
    Ok(if errors {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
