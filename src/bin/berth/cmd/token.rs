//! `berth token`: one-time enrolment tokens for `berth join`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::Global;
use crate::output::{self, Table};

/// Enrolment tokens.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a one-time token for a client host; it is printed once, stored only hashed.
    Create {
        /// The client's common name (the certificate `berth join` gets carries it).
        #[arg(long)]
        name: String,
        /// How long it may be used, e.g. 1h, 30m, 2d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A token for registry replicas (`berthd --role registry --join-token`): usable
        /// again until it expires or is revoked, so replicas can restart without state.
        #[arg(long, requires = "san")]
        replica: bool,
        /// A DNS name or IP address the replicas are dialled by (the load balancer's
        /// name, their addresses); repeat it. Only with --replica.
        #[arg(long, requires = "replica")]
        san: Vec<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Make a token unusable.
    Revoke {
        /// Its id (`berth token ls`).
        id: String,
    },
}

pub async fn run(g: &Global, cmd: TokenCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        TokenCmd::Create {
            name,
            ttl,
            replica,
            san,
        } => {
            let names = replica.then_some(san);
            let t = client
                .token_create(&name, Some(ttl), names.as_deref())
                .await?;
            if g.json {
                output::json(&serde_json::json!({"token": t.record, "secret": t.secret}))?;
            } else {
                println!("{}", t.secret);
                let uses = if replica {
                    "a replica token (reusable)"
                } else {
                    "usable once"
                };
                eprintln!(
                    "token {} for {name:?}, {uses} until {}; it is not shown again",
                    t.record.id,
                    output::date(t.record.expires_at)
                );
            }
        }
        TokenCmd::Ls => {
            let all = client.token_list().await?;
            if g.json {
                output::json(&all)?;
            } else {
                let mut t = Table::new(&["ID", "NAME", "EXPIRES", "STATE", "CERTIFICATE"]);
                for r in all {
                    let state = if r.revoked_at.is_some() {
                        "revoked"
                    } else if r.used_at.is_some() && !r.replica {
                        "used"
                    } else if r.expires_at <= time::OffsetDateTime::now_utc() {
                        "expired"
                    } else if r.replica {
                        "usable (replica)"
                    } else {
                        "usable"
                    };
                    t.row(vec![
                        r.id,
                        r.name,
                        output::date(r.expires_at),
                        state.to_string(),
                        r.certificate_serial.unwrap_or_default(),
                    ]);
                }
                t.print();
            }
        }
        TokenCmd::Revoke { id } => {
            let r = client.token_revoke(&id).await?;
            if g.json {
                output::json(&r)?;
            } else {
                println!("revoked token {} for {:?}", r.id, r.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
