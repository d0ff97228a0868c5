//! `berth events`: registry pushes, pulls and deletes as they happen, like `docker events`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use crate::Global;
use crate::output;

/// `berth events`
#[derive(Debug, Args)]
pub struct EventsCmd {
    /// Only this repository.
    #[arg(long)]
    repo: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
}

/// Streams events until interrupted (or --count is reached).
pub async fn run(g: &Global, cmd: EventsCmd) -> anyhow::Result<ExitCode> {
    let client = g.connect().await?;
    let mut seen = 0usize;
    let mut out = std::io::stdout();
    client
        .registry_events(cmd.repo.as_deref(), |e| {
            let line = if g.json {
                serde_json::to_string(&e).unwrap_or_default()
            } else {
                let what = match (&e.digest, &e.tag) {
                    (Some(d), Some(t)) => format!("{}:{t} {d}", e.repository),
                    (Some(d), None) => format!("{}@{d}", e.repository),
                    (None, Some(t)) => format!("{}:{t}", e.repository),
                    (None, None) => e.repository.clone(),
                };
                format!(
                    "{} {} {} {} (by {})",
                    output::date(e.time),
                    serde_json::to_value(e.action)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    serde_json::to_value(e.target)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    what,
                    if e.actor.is_empty() { "?" } else { &e.actor }
                )
            };
            let ok = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
            seen += 1;
            ok && cmd.count.is_none_or(|c| seen < c)
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
