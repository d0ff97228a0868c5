//! `berth certs`: the certs.d folders docker, podman and skopeo read client TLS files from.

use std::process::ExitCode;

use berth::certsd::{ActionKind, Entry, FileAction};
use berth::client::Trees;
use clap::Subcommand;
use serde::Serialize;

use crate::Global;
use crate::output::{self, Table};

/// `berth certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Install ca.crt (and client.cert/client.key with --client) for a registry.
    Install {
        /// The registry as docker names it: host or host:port (port 443 is left out).
        host: String,
        /// Also install this client's certificate and key (issued now if berthd has none).
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Also write the containers (podman, skopeo, buildah) certs.d folder.
        #[arg(long)]
        containers: bool,
        /// Also write containerd's hosts folder (hosts.toml with the pair).
        #[arg(long)]
        containerd: bool,
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace files berth did not write.
        #[arg(long)]
        force: bool,
    },
    /// Every certs.d entry: its CA, client certificate, expiry and problems.
    Ls,
    /// Delete the files berth wrote for a registry (files changed since are kept).
    #[command(alias = "rm")]
    Remove {
        /// The registry, as given to install.
        host: String,
        /// Also the containers certs.d folder.
        #[arg(long)]
        containers: bool,
        /// Also containerd's hosts folder.
        #[arg(long)]
        containerd: bool,
        /// Print what would be deleted and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a registry's certs.d entries the way docker would read them; exit 1 on problems.
    Verify {
        /// The registry.
        host: String,
        /// Also connect to the registry the way the clients would (berth doctor's probe).
        #[arg(long)]
        probe: bool,
    },
}

#[derive(Serialize)]
struct PlanJson<'a> {
    dry_run: bool,
    actions: &'a [FileAction],
}

/// Runs a `certs` command.
pub async fn run(g: &Global, cmd: CertsCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        CertsCmd::Install {
            host,
            client: name,
            containers,
            containerd,
            dry_run,
            force,
        } => {
            let outcome = client
                .certs_install(
                    &host,
                    name.as_deref(),
                    Trees {
                        containers,
                        containerd,
                    },
                    dry_run,
                    force,
                )
                .await?;
            if g.json {
                output::json(&outcome)?;
            } else {
                if dry_run {
                    println!("dry run: nothing was changed");
                }
                if outcome.issued_client
                    && let Some(n) = &name
                {
                    let verb = if dry_run { "would issue" } else { "issued" };
                    println!("{verb} a client certificate for {n:?}");
                }
                print_actions(&outcome.actions, dry_run);
                if !dry_run {
                    for d in &outcome.directories {
                        let who = if outcome.warnings.is_empty() {
                            "docker, podman and skopeo"
                        } else {
                            "podman and skopeo (not docker: see below)"
                        };
                        println!("{who} now trust {host} with {}", d.display());
                    }
                }
                for w in &outcome.warnings {
                    eprintln!("warning: {w}");
                }
                for n in &outcome.notes {
                    println!("note: {n}");
                }
            }
        }
        CertsCmd::Ls => {
            let entries = client.certs_list().await?;
            if g.json {
                output::json(&entries)?;
            } else {
                print_entries(&entries);
            }
        }
        CertsCmd::Remove {
            host,
            containers,
            containerd,
            dry_run,
        } => {
            let actions = client
                .certs_remove(
                    &host,
                    Trees {
                        containers,
                        containerd,
                    },
                    dry_run,
                )
                .await?;
            if g.json {
                output::json(&PlanJson {
                    dry_run,
                    actions: &actions,
                })?;
            } else {
                if dry_run {
                    println!("dry run: nothing was changed");
                }
                print_actions(&actions, dry_run);
            }
        }
        CertsCmd::Verify { host, probe } => {
            let entries = client.certs_verify(&host).await?;
            let problems: usize = entries.iter().map(|e| e.problems.len()).sum();
            // berthd's trees, seen the way each runtime reads them, and the live registry.
            let info = client.info().await?;
            let docker = std::path::PathBuf::from(&info.docker_certs_root);
            let roots = berth::doctor::Roots {
                trees: vec![
                    ("docker", vec![docker.clone()]),
                    (
                        "podman",
                        vec![
                            std::path::PathBuf::from(&info.containers_certs_root),
                            docker,
                        ],
                    ),
                ],
            };
            let hp: berth::certsd::HostPort = host.parse()?;
            let report = berth::doctor::diagnose(&roots, &hp, probe).await;
            if g.json {
                output::json(&serde_json::json!({ "entries": entries, "doctor": report }))?;
            } else {
                print_entries(&entries);
                for e in &entries {
                    for p in &e.problems {
                        println!("problem: {}: {p}", e.directory.display());
                    }
                }
                crate::cmd::doctor::print(
                    &report,
                    std::io::IsTerminal::is_terminal(&std::io::stdout()),
                );
            }
            if problems > 0 || report.has_errors() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn print_actions(actions: &[FileAction], dry_run: bool) {
    let mut t = Table::new(&["ACTION", "MODE", "PATH"]);
    for a in actions {
        let verb = if dry_run && a.kind != ActionKind::Unchanged {
            format!("would {}", a.kind.verb())
        } else {
            a.kind.verb().to_string()
        };
        let mode = if a.mode == 0 {
            "-".to_string()
        } else {
            format!("{:04o}", a.mode)
        };
        t.row(vec![verb, mode, a.path.display().to_string()]);
    }
    t.print();
}

fn print_entries(entries: &[Entry]) {
    let mut t = Table::new(&[
        "ROOT", "HOST", "CA", "CLIENT", "EXPIRES", "BERTH", "PROBLEMS",
    ]);
    for e in entries {
        let ca = match e.cas.as_slice() {
            [] => "-".to_string(),
            [one] => one.subject.clone(),
            many => format!("{} CAs", many.len()),
        };
        let client = e
            .clients
            .first()
            .map(|c| c.subject.clone())
            .unwrap_or_else(|| "-".to_string());
        let expires = e
            .clients
            .iter()
            .chain(e.cas.iter())
            .filter_map(|c| c.not_after)
            .min()
            .map(|t| format!("{} ({})", output::date(t), output::relative(t)))
            .unwrap_or_else(|| "-".to_string());
        let berth_ca = e.cas.iter().any(|c| c.berth_ca);
        t.row(vec![
            e.root.name().to_string(),
            e.host.clone(),
            ca,
            client,
            expires,
            match (e.managed, berth_ca) {
                (true, _) => "managed",
                (false, true) => "berth CA",
                (false, false) => "no",
            }
            .to_string(),
            e.problems.len().to_string(),
        ]);
    }
    t.print();
}
