//! `berth renew` and `berth status`: this host's enrolments (made by `berth join`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::Global;
use crate::output::{self, Table};

/// Renew this host's certificates that are due.
#[derive(Debug, Args)]
pub struct RenewCmd {
    /// Every enrolment of this host (the only mode there is; kept explicit for scripts).
    #[arg(long)]
    all: bool,
    /// Renew even what is not due yet.
    #[arg(long)]
    force: bool,
    /// This host's berth records [default: berth's state folder for this user].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// What this host has joined, and when each renews.
#[derive(Debug, Args)]
pub struct StatusCmd {
    /// This host's berth records [default: berth's state folder for this user].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Renew this host's certificates on time, until stopped (for a systemd service).
#[derive(Debug, Args)]
pub struct AgentCmd {
    /// This host's berth records [default: berth's state folder for this user].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

pub async fn agent(cmd: AgentCmd) -> anyhow::Result<ExitCode> {
    // The agent is a service: it logs (to stderr, for the journal), unlike other commands.
    let (filter, bad_filter) =
        berth::config::log_filter(&std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
            .try_init();
    }
    if let Some(why) = bad_filter {
        tracing::warn!("{why}");
    }
    let dir = super::join::state_dir(cmd.state_dir);
    // The handlers are installed now, before the first pass: installed lazily (when the
    // stop future is first polled), a SIGTERM during the first pass took the default
    // action and killed the agent mid-renewal.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    berth::client::host::agent(&dir, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when nothing was due or everything due was renewed (systemd timers count on it),
/// non-zero only when a renewal failed.
pub async fn renew(g: &Global, cmd: RenewCmd) -> anyhow::Result<ExitCode> {
    let _ = cmd.all;
    let dir = super::join::state_dir(cmd.state_dir);
    let done = berth::client::host::renew_all(&dir, cmd.force).await?;
    let failed = done.iter().any(|r| r.error.is_some());
    if g.json {
        output::json(&done)?;
    } else {
        if done.is_empty() {
            println!("nothing to renew: this host has joined no registry (berth join)");
        }
        for r in &done {
            match (&r.new_serial, &r.error) {
                (_, Some(e)) => eprintln!("{}: renewal failed: {e}", r.registry),
                (Some(s), None) => println!(
                    "{}: renewed {} as {s}; next renewal {}",
                    r.registry,
                    r.old_serial,
                    output::date(r.next)
                ),
                (None, None) => println!(
                    "{}: not due (next renewal {})",
                    r.registry,
                    output::date(r.next)
                ),
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn status(g: &Global, cmd: StatusCmd) -> anyhow::Result<ExitCode> {
    let dir = super::join::state_dir(cmd.state_dir);
    let all = berth::client::host::enrolments(&dir)?;
    if g.json {
        output::json(&all)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["REGISTRY", "SERVER", "SERIAL", "EXPIRES", "RENEWS", "TREES"]);
    for e in &all {
        let mut trees = vec!["docker"];
        if e.containers {
            trees.push("containers");
        }
        if e.containerd {
            trees.push("containerd");
        }
        t.row(vec![
            e.registry.clone(),
            format!("tcp://{}:{}", e.server_host, e.server_port),
            e.serial.clone(),
            output::date(e.not_after),
            output::date(e.renewal_at()),
            trees.join(","),
        ]);
    }
    t.print();
    for e in &all {
        if let Ok(h) = e.registry.parse::<berth::certsd::HostPort>()
            && let Some(w) = h.docker_loopback()
        {
            eprintln!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
