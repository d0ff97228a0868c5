//! `berth system`: is the daemon there, which one, and where it keeps things.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use crate::Global;
use crate::output::{self, Table};

/// `berth system …`
#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Version, state folder, socket and CA fingerprint.
    Info,
    /// Client and daemon versions.
    Version,
    /// Exit 0 when berthd is serving, 1 otherwise.
    Health,
}

#[derive(Serialize)]
struct Versions<'a> {
    client: &'a str,
    daemon: String,
    api: String,
}

/// Runs a `system` command.
pub async fn run(g: &Global, cmd: SystemCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    match cmd {
        SystemCmd::Info => {
            let info = client.info().await?;
            if g.json {
                output::json(&info)?;
            } else {
                let mut t = Table::new(&["FIELD", "VALUE"]);
                let rows = [
                    ("version", info.version.clone()),
                    ("state dir", info.state_dir.clone()),
                    ("socket", info.socket.clone()),
                    ("tcp", output::list(&info.tcp_listeners)),
                    ("registry", output::list(&info.registry_listeners)),
                    ("registry root", info.registry_root.clone()),
                    ("CA subject", info.ca_subject.clone()),
                    (
                        "CA fingerprint",
                        format!("SHA256 {}", info.ca_fingerprint_sha256),
                    ),
                    (
                        "CA expires",
                        info.ca_not_after.map(output::date).unwrap_or_default(),
                    ),
                    ("docker certs.d", info.docker_certs_root.clone()),
                    ("containers certs.d", info.containers_certs_root.clone()),
                    ("pid", info.pid.to_string()),
                    (
                        "started",
                        info.started_at.map(output::date).unwrap_or_default(),
                    ),
                    ("you are", info.caller.clone()),
                ];
                for (k, v) in rows {
                    t.row(vec![k.to_string(), v]);
                }
                t.print();
            }
        }
        SystemCmd::Version => {
            let (daemon, git) = client.version().await?;
            let v = Versions {
                client: env!("CARGO_PKG_VERSION"),
                daemon,
                api: git,
            };
            if g.json {
                output::json(&v)?;
            } else {
                println!("client: {}\ndaemon: {} (api {})", v.client, v.daemon, v.api);
            }
        }
        SystemCmd::Health => {
            let serving = client.health().await?;
            if g.json {
                output::json(&serde_json::json!({ "serving": serving }))?;
            } else {
                println!("{}", if serving { "serving" } else { "not serving" });
            }
            if !serving {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
