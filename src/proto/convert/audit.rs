//! Audit records and queries, both directions.

use super::{WireError, time_in, ts};
use crate::audit::{Action, Actor, Decision, Filter, Record, Target};
use crate::proto as pb;

/// Records at most one answer carries when the query names no limit.
const DEFAULT_LIMIT: usize = 1000;

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A filter, from the wire.
pub(crate) fn audit_filter_in(q: pb::AuditQueryRequest) -> Result<Filter, WireError> {
    let decision = match q.decision.as_str() {
        "" => None,
        "allow" => Some(Decision::Allow),
        "deny" => Some(Decision::Deny),
        other => {
            return Err(WireError::Invalid {
                what: "audit decision",
                value: other.to_string(),
                reason: "expected allow or deny".into(),
            });
        }
    };
    Ok(Filter {
        since: q.since.map(time_in),
        actor: opt(q.actor),
        repository: opt(q.repository),
        action: opt(q.action),
        decision,
        limit: match q.limit {
            0 => DEFAULT_LIMIT,
            n => n as usize,
        },
    })
}

/// A filter, to the wire.
pub(crate) fn audit_filter_out(f: &Filter) -> pb::AuditQueryRequest {
    pb::AuditQueryRequest {
        since: f.since.map(ts),
        actor: f.actor.clone().unwrap_or_default(),
        repository: f.repository.clone().unwrap_or_default(),
        action: f.action.clone().unwrap_or_default(),
        decision: match f.decision {
            None => String::new(),
            Some(Decision::Allow) => "allow".into(),
            Some(Decision::Deny) => "deny".into(),
        },
        limit: u32::try_from(f.limit).unwrap_or(u32::MAX),
    }
}

/// A record, to the wire.
pub(crate) fn audit_record_out(r: &Record) -> pb::AuditRecord {
    pb::AuditRecord {
        time: Some(ts(r.time)),
        request_id: r.request_id.clone().unwrap_or_default(),
        actor: Some(pb::AuditActor {
            kind: r.actor.kind.clone(),
            subject: r.actor.subject.clone().unwrap_or_default(),
            serial: r.actor.serial.clone().unwrap_or_default(),
            uid: r.actor.uid,
            gid: r.actor.gid,
            peer: r.actor.peer.clone().unwrap_or_default(),
        }),
        action: r.action.name().to_string(),
        target: Some(pb::AuditTarget {
            repository: r.target.repository.clone().unwrap_or_default(),
            digest: r.target.digest.clone().unwrap_or_default(),
            tag: r.target.tag.clone().unwrap_or_default(),
            serial: r.target.serial.clone().unwrap_or_default(),
            name: r.target.name.clone().unwrap_or_default(),
            from: r.target.from.clone().unwrap_or_default(),
        }),
        denied: r.decision == Decision::Deny,
        rule: r.rule.clone().unwrap_or_default(),
        result: r.result.clone(),
        via: r.via.clone().unwrap_or_default(),
    }
}

/// A record, from the wire.
pub(crate) fn audit_record_in(r: pb::AuditRecord) -> Result<Record, WireError> {
    let action: Action = serde_json::from_value(serde_json::Value::String(r.action.clone()))
        .map_err(|_| WireError::Invalid {
            what: "audit action",
            value: r.action.clone(),
            reason: "not an action this build knows".into(),
        })?;
    let a = r.actor.unwrap_or_default();
    let t = r.target.unwrap_or_default();
    Ok(Record {
        time: r
            .time
            .map(time_in)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        request_id: opt(r.request_id),
        actor: Actor {
            kind: a.kind,
            subject: opt(a.subject),
            serial: opt(a.serial),
            uid: a.uid,
            gid: a.gid,
            peer: opt(a.peer),
        },
        action,
        target: Target {
            repository: opt(t.repository),
            digest: opt(t.digest),
            tag: opt(t.tag),
            serial: opt(t.serial),
            name: opt(t.name),
            from: opt(t.from),
        },
        decision: if r.denied {
            Decision::Deny
        } else {
            Decision::Allow
        },
        rule: opt(r.rule),
        result: r.result,
        via: opt(r.via),
    })
}
