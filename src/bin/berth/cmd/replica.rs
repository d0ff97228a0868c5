//! `berth replica`: a registry replica's view of its primary (ask the replica's socket).

use std::process::ExitCode;

use clap::Subcommand;

use crate::Global;
use crate::output;

/// Registry replicas (`berthd --role registry`).
#[derive(Debug, Subcommand)]
pub enum ReplicaCmd {
    /// Whether this replica hears its primary, and until when it serves without it
    /// (`--socket` names the replica's socket). Exits 1 when the primary is lost.
    Status,
}

pub async fn run(g: &Global, cmd: ReplicaCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        ReplicaCmd::Status => {
            let s = client.replica_status().await?;
            let code = if s.connected {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            if g.json {
                output::json(&s)?;
                return Ok(code);
            }
            let when = |t: Option<time::OffsetDateTime>| t.map_or("-".to_string(), output::date);
            let link = if s.connected { "connected" } else { "LOST" };
            println!(
                "primary:        {} ({link} since {})",
                s.primary,
                when(s.since)
            );
            println!(
                "last heard:     {} (generation {})",
                when(s.last_update_at),
                s.generation
            );
            println!(
                "CRL valid to:   {} ({} revoked)",
                when(s.crl_next_update),
                s.revoked_count
            );
            println!("serving until:  {}", when(s.serving_until));
            println!(
                "certificate:    {} (until {})",
                s.certificate_serial,
                when(s.certificate_not_after)
            );
            println!("policy:         {}", s.policy_source);
            println!("registry:       {}", output::list(&s.registry_listeners));
            if !s.connected && !s.last_error.is_empty() {
                println!("last error:     {}", s.last_error);
            }
            Ok(code)
        }
    }
}
