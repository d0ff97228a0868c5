//! `berth policy`: who may do what in the registry.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::identity::CertIdentity;
use berth::registry::policy::{Action, Policy};
use clap::Subcommand;

use crate::Global;

/// The registry's policy.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Read registry.policy again on berthd (an invalid file keeps the running one).
    Reload,
    /// Explain a decision: which rule lets a certificate do something, or refuses it.
    /// Against berthd's loaded policy, or offline against --file.
    Check {
        /// Check this policy file offline instead of asking berthd.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The certificate's subject, e.g. "CN=ci-bot,O=builders,OU=ci".
        #[arg(long)]
        subject: String,
        /// A SAN of the certificate (repeatable): DNS:x, URI:spiffe://..., email:x.
        #[arg(long = "san", value_name = "TYPE:VALUE")]
        sans: Vec<String>,
        /// The certificate's serial (hex).
        #[arg(long, default_value = "")]
        serial: String,
        /// pull, push, delete or list.
        action: String,
        /// The repository, e.g. team-a/app.
        repository: String,
    },
}

pub async fn run(g: &Global, cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Reload => {
            let source = g.connect().await?.reload_policy().await?;
            println!("policy in force: {source}");
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Check {
            file,
            subject,
            sans,
            serial,
            action,
            repository,
        } => {
            let a: Action = serde_json::from_value(serde_json::Value::String(action.clone()))
                .map_err(|_| {
                    anyhow::anyhow!("unknown action {action:?}: pull, push, delete or list")
                })?;
            let (d, source) = match &file {
                Some(file) => {
                    let p = Policy::load(file)?;
                    let c = CertIdentity::described(&subject, &sans, &serial)
                        .map_err(|e| anyhow::anyhow!("--subject/--san: {e}"))?;
                    (
                        p.decide_cert(&c, a, &repository),
                        file.display().to_string(),
                    )
                }
                None => {
                    g.connect()
                        .await?
                        .check_policy(&subject, &sans, &serial, a, &repository)
                        .await?
                }
            };
            let verdict = if d.allowed { "allowed" } else { "denied" };
            if g.json {
                crate::output::json(&serde_json::json!({
                    "allowed": d.allowed, "rule": d.rule, "action": a.name(), "repository": repository, "source": source,
                }))?;
            } else {
                println!(
                    "{verdict}: {subject} {} {repository} (rule {:?} in {})",
                    a.name(),
                    d.rule,
                    source
                );
            }
            Ok(if d.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
