//! One audit record, and the request context (request id, peer address) the edges set
//! around every request so the cores can record them without every door taking them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::Identity;

tokio::task_local! {
    static CONTEXT: Context;
}

/// What the network edge knows about a request that the identity does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The id berthd gave the request (also sent back as `X-Request-Id`).
    pub request_id: String,
    /// The peer's address (none on the unix socket).
    pub peer: Option<SocketAddr>,
}

impl Context {
    /// A context with a fresh request id.
    pub fn new(peer: Option<SocketAddr>) -> Context {
        Context {
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            peer,
        }
    }

    /// The context of the request this task serves, if any.
    pub fn current() -> Option<Context> {
        CONTEXT.try_with(Clone::clone).ok()
    }

    /// Runs `f` as part of the request `self` describes.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CONTEXT.scope(self, f).await
    }

    /// Runs blocking `f` (on another thread) as part of the request `ctx` describes.
    pub fn sync_scope<R>(ctx: Option<Context>, f: impl FnOnce() -> R) -> R {
        match ctx {
            Some(c) => CONTEXT.sync_scope(c, f),
            None => f(),
        }
    }
}

/// What was done or attempted. The names (`manifest.put`) are what `berth audit --action`
/// matches, by prefix (`--action manifest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// A certificate was issued (`berth cert issue`).
    #[serde(rename = "cert.issue")]
    CertIssue,
    /// A CSR was signed.
    #[serde(rename = "cert.sign")]
    CertSign,
    /// A certificate was renewed (by an admin, or by an enrolled host with its own).
    #[serde(rename = "cert.renew")]
    CertRenew,
    /// A certificate was revoked.
    #[serde(rename = "cert.revoke")]
    CertRevoke,
    /// An enrolment token was created.
    #[serde(rename = "token.create")]
    TokenCreate,
    /// An enrolment token was traded for a certificate (`berth join`).
    #[serde(rename = "token.use")]
    TokenUse,
    /// An enrolment token was revoked.
    #[serde(rename = "token.revoke")]
    TokenRevoke,
    /// Client files were installed into certs.d.
    #[serde(rename = "certs.install")]
    CertsInstall,
    /// Client files were removed from certs.d.
    #[serde(rename = "certs.remove")]
    CertsRemove,
    /// A manifest was stored (with its tag, when pushed by tag).
    #[serde(rename = "manifest.put")]
    ManifestPut,
    /// A manifest (and the tags on it) was deleted.
    #[serde(rename = "manifest.delete")]
    ManifestDelete,
    /// A tag was deleted.
    #[serde(rename = "tag.delete")]
    TagDelete,
    /// An upload was started (audited when denied).
    #[serde(rename = "blob.upload")]
    BlobUpload,
    /// An upload finished and its blob was committed.
    #[serde(rename = "blob.commit")]
    BlobCommit,
    /// A blob was mounted from another repository.
    #[serde(rename = "blob.mount")]
    BlobMount,
    /// A blob link was deleted.
    #[serde(rename = "blob.delete")]
    BlobDelete,
    /// An image was deleted through the control API.
    #[serde(rename = "image.delete")]
    ImageDelete,
    /// Content was read (audited when denied).
    #[serde(rename = "registry.pull")]
    Pull,
    /// A catalog or tag list was read (audited when denied).
    #[serde(rename = "registry.list")]
    List,
    /// Garbage collection ran.
    #[serde(rename = "gc")]
    Gc,
    /// fsck repaired what it found.
    #[serde(rename = "fsck.repair")]
    FsckRepair,
    /// The registry policy was reloaded (or a reload was refused).
    #[serde(rename = "policy.reload")]
    PolicyReload,
    /// A control-API call outside the caller's role (audited when denied).
    #[serde(rename = "control.call")]
    ControlCall,
}

impl Action {
    /// The action's name in records and filters.
    pub fn name(self) -> &'static str {
        match self {
            Action::CertIssue => "cert.issue",
            Action::CertSign => "cert.sign",
            Action::CertRenew => "cert.renew",
            Action::CertRevoke => "cert.revoke",
            Action::TokenCreate => "token.create",
            Action::TokenUse => "token.use",
            Action::TokenRevoke => "token.revoke",
            Action::CertsInstall => "certs.install",
            Action::CertsRemove => "certs.remove",
            Action::ManifestPut => "manifest.put",
            Action::ManifestDelete => "manifest.delete",
            Action::TagDelete => "tag.delete",
            Action::BlobUpload => "blob.upload",
            Action::BlobCommit => "blob.commit",
            Action::BlobMount => "blob.mount",
            Action::BlobDelete => "blob.delete",
            Action::ImageDelete => "image.delete",
            Action::Pull => "registry.pull",
            Action::List => "registry.list",
            Action::Gc => "gc",
            Action::FsckRepair => "fsck.repair",
            Action::PolicyReload => "policy.reload",
            Action::ControlCall => "control.call",
        }
    }
}

/// Who, as the record names them: enough to find the certificate or the local user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `cert`, `unix`, `anonymous` or `berthd`.
    pub kind: String,
    /// Certificate subject (RFC 4514 style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Certificate serial (lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Unix uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Unix gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl Actor {
    fn of(who: &Identity, peer: Option<SocketAddr>) -> Actor {
        let mut a = Actor {
            peer: peer.map(|p| p.to_string()),
            ..Actor::default()
        };
        match who {
            Identity::Unix { uid, gid, .. } => {
                a.kind = "unix".into();
                a.uid = Some(*uid);
                a.gid = Some(*gid);
            }
            Identity::Cert(c) => {
                a.kind = "cert".into();
                a.subject = Some(c.subject.clone());
                a.serial = Some(c.serial.clone());
            }
            Identity::Anonymous => a.kind = "anonymous".into(),
            Identity::Daemon => a.kind = "berthd".into(),
        }
        a
    }

    /// True when `needle` is this actor's subject, CN, serial or uid, or appears in the
    /// subject (`--actor ci-bot`, `--actor O=builders`, `--actor 1000`).
    pub fn matches(&self, needle: &str) -> bool {
        self.subject.as_deref().is_some_and(|s| s.contains(needle))
            || self.serial.as_deref() == Some(needle)
            || self.uid.is_some_and(|u| u.to_string() == needle)
            || self.kind == needle
    }
}

/// To what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Certificate serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A name: a certificate's CN, a token's name or id, a registry host, an RPC method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The source repository of a mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The caller was entitled to it.
    Allow,
    /// It was refused before anything happened.
    Deny,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The request's id, when it came over a listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: Action,
    /// To what.
    pub target: Target,
    /// Allowed or denied.
    pub decision: Decision,
    /// The rule or role that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `ok`, or what went wrong.
    pub result: String,
    /// The registry replica that served the request (its certificate's CN and serial),
    /// set by the primary on the records a replica sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl Record {
    /// A record of `who` doing `action`, allowed and successful until said otherwise,
    /// with the request id and peer of the request this task serves.
    pub fn new(who: &Identity, action: Action) -> Record {
        let ctx = Context::current();
        Record {
            time: OffsetDateTime::now_utc(),
            request_id: ctx.as_ref().map(|c| c.request_id.clone()),
            actor: Actor::of(who, ctx.and_then(|c| c.peer)),
            action,
            target: Target::default(),
            decision: Decision::Allow,
            rule: None,
            result: "ok".into(),
            via: None,
        }
    }

    /// Sets the repository.
    pub fn repository(mut self, r: impl Into<String>) -> Record {
        self.target.repository = Some(r.into());
        self
    }

    /// Sets the digest.
    pub fn digest(mut self, d: impl ToString) -> Record {
        self.target.digest = Some(d.to_string());
        self
    }

    /// Sets the tag, if any.
    pub fn tag(mut self, t: Option<String>) -> Record {
        self.target.tag = t;
        self
    }

    /// Sets the certificate serial.
    pub fn serial(mut self, s: impl Into<String>) -> Record {
        self.target.serial = Some(s.into());
        self
    }

    /// Sets the name.
    pub fn name(mut self, n: impl Into<String>) -> Record {
        self.target.name = Some(n.into());
        self
    }

    /// Sets the mount source.
    pub fn from(mut self, r: impl Into<String>) -> Record {
        self.target.from = Some(r.into());
        self
    }

    /// Sets the rule that allowed it.
    pub fn rule(mut self, r: impl Into<String>) -> Record {
        self.rule = Some(r.into());
        self
    }

    /// Marks it denied by `rule`.
    pub fn denied(mut self, rule: impl Into<String>) -> Record {
        self.decision = Decision::Deny;
        self.rule = Some(rule.into());
        self.result = "denied".into();
        self
    }

    /// Sets the result from an outcome.
    pub fn outcome<T, E: std::fmt::Display>(mut self, r: &Result<T, E>) -> Record {
        if let Err(e) = r {
            self.result = format!("error: {e}");
        }
        self
    }
}
