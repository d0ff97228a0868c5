//! `berth policy`: who may do what in the registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
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
    Check {
        /// The policy file to check against.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
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

fn identity(subject: &str, sans: &[String], serial: &str) -> anyhow::Result<CertIdentity> {
    let mut c = CertIdentity {
        subject: subject.to_string(),
        common_name: String::new(),
        organizations: Vec::new(),
        organizational_units: Vec::new(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        uris: Vec::new(),
        emails: Vec::new(),
        serial: serial.to_ascii_lowercase(),
        not_after: time::OffsetDateTime::now_utc(),
        issuer: String::new(),
    };
    for part in subject.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("invalid --subject part {part:?}: expected KEY=VALUE"))?;
        match k.trim().to_ascii_uppercase().as_str() {
            "CN" => c.common_name = v.trim().to_string(),
            "O" => c.organizations.push(v.trim().to_string()),
            "OU" => c.organizational_units.push(v.trim().to_string()),
            other => anyhow::bail!("--subject knows CN, O and OU, not {other}"),
        }
    }
    for san in sans {
        let (k, v) = san
            .split_once(':')
            .with_context(|| format!("invalid --san {san:?}: expected DNS:x, URI:x or email:x"))?;
        match k.to_ascii_lowercase().as_str() {
            "dns" => c.dns_names.push(v.to_string()),
            "uri" => c.uris.push(v.to_string()),
            "email" => c.emails.push(v.to_string()),
            other => anyhow::bail!("--san knows DNS, URI and email, not {other}"),
        }
    }
    Ok(c)
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
            let p = Policy::load(&file)?;
            let a: Action = serde_json::from_value(serde_json::Value::String(action.clone()))
                .map_err(|_| {
                    anyhow::anyhow!("unknown action {action:?}: pull, push, delete or list")
                })?;
            let c = identity(&subject, &sans, &serial)?;
            let d = p.decide_cert(&c, a, &repository);
            let verdict = if d.allowed { "allowed" } else { "denied" };
            if g.json {
                crate::output::json(&serde_json::json!({
                    "allowed": d.allowed, "rule": d.rule, "action": a.name(), "repository": repository,
                }))?;
            } else {
                println!(
                    "{verdict}: {subject} {} {repository} (rule {:?} in {})",
                    a.name(),
                    d.rule,
                    file.display()
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
