//! `berth audit`: who did what, from berthd's audit log (over the socket or `--host`).

use std::process::ExitCode;

use clap::Args;

use berth::audit::{Decision, Filter, Record};

use crate::Global;
use crate::output;

/// `berth audit`
#[derive(Debug, Args)]
pub struct AuditCmd {
    /// Only records this recent: 30m, 1h, 7d.
    #[arg(long, value_name = "DURATION")]
    since: Option<humantime::Duration>,
    /// Only this actor: a CN or subject part (ci-bot, O=builders), a serial or a uid.
    #[arg(long)]
    actor: Option<String>,
    /// Only this repository (team-a/app), or a prefix ending in * (team-a/*).
    #[arg(long)]
    repo: Option<String>,
    /// Only this action (manifest.put), or its first part (manifest, cert, token).
    #[arg(long)]
    action: Option<String>,
    /// Only denials.
    #[arg(long)]
    denied: bool,
    /// At most this many records, the newest.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

fn actor(r: &Record) -> String {
    let a = &r.actor;
    let who = match (a.kind.as_str(), &a.subject, a.uid) {
        ("cert", Some(s), _) => s.clone(),
        ("unix", _, Some(uid)) => format!("uid {uid}"),
        (k, _, _) => k.to_string(),
    };
    let who = match &a.peer {
        Some(p) => format!("{who} from {p}"),
        None => who,
    };
    match &r.via {
        Some(v) => format!("{who} via {v}"),
        None => who,
    }
}

fn target(r: &Record) -> String {
    let t = &r.target;
    let mut parts = Vec::new();
    if let Some(repo) = &t.repository {
        let mut s = repo.clone();
        if let Some(tag) = &t.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(d) = &t.digest {
            s.push('@');
            s.push_str(d);
        }
        parts.push(s);
    }
    if let Some(f) = &t.from {
        parts.push(format!("from {f}"));
    }
    if let Some(n) = &t.name {
        parts.push(n.clone());
    }
    if let Some(s) = &t.serial {
        parts.push(format!("serial {s}"));
    }
    parts.join(" ")
}

/// Prints the selected records, oldest first.
pub async fn run(g: &Global, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    let since = match cmd.since {
        Some(d) => Some(
            time::OffsetDateTime::now_utc()
                - time::Duration::try_from(*d.as_ref())
                    .map_err(|_| anyhow::anyhow!("--since {d} is too long"))?,
        ),
        None => None,
    };
    let filter = Filter {
        since,
        actor: cmd.actor,
        repository: cmd.repo,
        action: cmd.action,
        decision: cmd.denied.then_some(Decision::Deny),
        limit: cmd.limit,
    };
    let records = g.connect().await?.audit(&filter).await?;
    if g.json {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::Table::new(&["TIME", "ACTOR", "ACTION", "TARGET", "DECISION", "RESULT"]);
    for r in &records {
        let decision = match (&r.decision, &r.rule) {
            (Decision::Allow, None) => "allow".to_string(),
            (Decision::Allow, Some(rule)) => format!("allow ({rule})"),
            (Decision::Deny, Some(rule)) => format!("DENY ({rule})"),
            (Decision::Deny, None) => "DENY".to_string(),
        };
        t.row(vec![
            output::date(r.time),
            actor(r),
            r.action.name().to_string(),
            target(r),
            decision,
            r.result.clone(),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
