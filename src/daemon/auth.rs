//! Who may call berthd: on the unix socket by the peer's credentials (SO_PEERCRED), on TCP
//! by the client certificate the TLS handshake verified against the berth CA. `net::serve`
//! puts the caller's [`Identity`] on every request and has already refused revoked and
//! expired certificates; this gives each identity a role (admin, issuer, viewer) and
//! refuses, with the role it needs, a call outside it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::{Request, Status};
use tower::ServiceExt;

use super::State;
use crate::audit;
use crate::config::Role;
use crate::identity::Identity;
use crate::pki::{CertKind, CertStatus};
use crate::registry::policy::pattern_matches;

/// The local rules: who besides root may use the socket.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The daemon's own uid: a rootless berthd serves its own user.
    pub own_uid: u32,
    /// Members of this group may use the socket.
    pub group: Option<u32>,
}

/// What the caller was granted, put on every authorised request for the handlers that
/// decide by subject (an issuer's names) or by argument (fsck --repair).
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The caller's role.
    pub role: Role,
    /// For an issuer: the common-name patterns it may act on.
    pub names: Vec<String>,
    /// Why: `root`, `group berth`, `admin certificate`, `control.roles[1]`.
    pub basis: String,
}

impl Grant {
    /// The grant on `req`; `Guard` put one on every request it let through.
    pub(crate) fn of<T>(req: &Request<T>) -> Result<Grant, Status> {
        req.extensions()
            .get::<Grant>()
            .cloned()
            .ok_or_else(|| Status::internal("request was not authorised by the guard"))
    }

    /// Refuses unless the role is at least `need` (for a call whose arguments decide).
    pub(crate) fn require(
        &self,
        state: &State,
        who: &Identity,
        need: Role,
        what: &str,
    ) -> Result<(), Status> {
        if self.role >= need {
            return Ok(());
        }
        let (status, rec) = deny(
            who,
            what,
            &format!("role {} ({})", self.role.name(), self.basis),
            need,
        );
        state.audit.note(&rec);
        Err(status)
    }

    /// Refuses an issuer acting on a certificate or token outside its names, or on an
    /// admin certificate (that would be a way to admin).
    pub(crate) fn may_act_on(
        &self,
        state: &State,
        who: &Identity,
        kind: Option<CertKind>,
        common_name: &str,
        what: &str,
    ) -> Result<(), Status> {
        if self.role == Role::Admin {
            return Ok(());
        }
        let in_scope = kind != Some(CertKind::Admin)
            && self.names.iter().any(|p| pattern_matches(p, common_name));
        if self.role == Role::Issuer && in_scope {
            return Ok(());
        }
        let rule = format!(
            "role {} ({}) for names {:?}",
            self.role.name(),
            self.basis,
            self.names
        );
        state.audit.note(
            &audit::Record::new(who, audit::Action::ControlCall)
                .name(format!("{what} {common_name}"))
                .denied(rule.clone()),
        );
        let kind_note = if kind == Some(CertKind::Admin) {
            " (admin certificates need the admin role)"
        } else {
            ""
        };
        Err(Status::permission_denied(format!(
            "{who} may not {what} CN={common_name}{kind_note}: its role {} covers only {:?}; an admin can widen `names` in control.roles",
            self.role.name(),
            self.names
        )))
    }
}

/// The refusal of a call outside the caller's role, and its audit record.
fn deny(who: &Identity, what: &str, rule: &str, need: Role) -> (Status, audit::Record) {
    tracing::warn!(caller = %who, call = what, rule, "denied control request outside the caller's role");
    let rec = audit::Record::new(who, audit::Action::ControlCall)
        .name(what)
        .denied(rule);
    let status = Status::permission_denied(format!(
        "{who} has {rule}; {what} needs the {} role",
        need.name()
    ));
    (status, rec)
}

/// The role a control method needs. A method not in [`placed`] (a client's made-up path)
/// needs admin: the guard fails closed.
pub(crate) fn needed(path: &str) -> Role {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    placed(service, method).unwrap_or(Role::Admin)
}

/// The role of every method berth serves, or `None` for a path it does not. A test walks
/// the compiled protos and requires every RPC here, so a new one forces a decision.
pub(super) fn placed(service: &str, method: &str) -> Option<Role> {
    let role = match (service, method) {
        ("berth.v1.SystemService", _)
        | ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _)
        | ("berth.v1.PkiService", "GetCa" | "ListCertificates" | "InspectCertificate" | "GetCrl")
        | ("berth.v1.CertsService", "ListCerts" | "VerifyCerts")
        | ("berth.v1.TokenService", "ListTokens")
        | ("berth.v1.AuditService", "Query")
        | ("berth.v1.ReplicaService", "Status")
        | (
            "berth.v1.RegistryService",
            "Status" | "ListRepositories" | "ListTags" | "InspectImage" | "ListUploads"
            | "WatchEvents" | "CheckPolicy" | "Fsck",
        ) => Role::Viewer,
        (
            "berth.v1.PkiService",
            "IssueCertificate" | "SignCsr" | "RenewCertificate" | "RevokeCertificate",
        )
        | ("berth.v1.TokenService", "CreateToken" | "RevokeToken") => Role::Issuer,
        ("berth.v1.ReplicaService", "Watch" | "ReportAudit") => Role::Replica,
        ("berth.v1.CertsService", "InstallCerts" | "RemoveCerts")
        | (
            "berth.v1.RegistryService",
            "DeleteImage" | "GarbageCollect" | "ReloadPolicy",
        )
        // Enrolment has its own gate (a token) and never reaches the guard; placed as
        // admin so nothing else could reach it through a certificate either.
        | ("berth.v1.EnrolService", "Enrol" | "Renew") => Role::Admin,
        // The path is the client's text, so this cannot be exhaustive.
        _ => return None,
    };
    Some(role)
}

/// Authorises every control request (but enrolment, which has its own gate) before any
/// handler runs: it sees the method, which a tonic interceptor does not.
#[derive(Clone)]
pub(crate) struct Guard<S> {
    pub inner: S,
    pub state: Arc<State>,
}

type Resp = hyper::Response<tonic::body::Body>;

impl<S> tower::Service<hyper::Request<hyper::body::Incoming>> for Guard<S>
where
    S: tower::Service<hyper::Request<hyper::body::Incoming>, Response = Resp, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let (inner, state) = (self.inner.clone(), self.state.clone());
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if !path.starts_with("/berth.v1.EnrolService/") {
                let who = req.extensions().get::<Identity>().cloned();
                match authorize(&state, who.as_ref(), &path) {
                    Ok(g) => {
                        req.extensions_mut().insert(g);
                    }
                    Err(refusal) => {
                        let (status, rec) = *refusal;
                        // Recorded without blocking a runtime thread: a caller may
                        // repeat refused calls as fast as it likes.
                        if let Some(rec) = rec {
                            state.audit.note_async(&rec).await;
                        }
                        let (parts, ()) = status.into_http::<()>().into_parts();
                        return Ok(hyper::Response::from_parts(
                            parts,
                            tonic::body::Body::empty(),
                        ));
                    }
                }
            }
            inner.oneshot(req).await
        })
    }
}

/// The caller's grant for `path`, or why not.
fn authorize(
    state: &State,
    who: Option<&Identity>,
    path: &str,
) -> Result<Grant, Box<(Status, Option<audit::Record>)>> {
    let who = who.ok_or_else(|| {
        Box::new((
            Status::unauthenticated(
                "no caller identity on this request (not through berthd's listeners)",
            ),
            None,
        ))
    })?;
    let grant = role_of(who, state).map_err(|s| {
        let rec = audit::Record::new(who, audit::Action::ControlCall)
            .name(path.trim_start_matches('/'))
            .denied("no role");
        Box::new((s, Some(rec)))
    })?;
    let need = needed(path);
    if grant.role < need {
        let rule = format!("role {} ({})", grant.role.name(), grant.basis);
        let (status, rec) = deny(who, path.trim_start_matches('/'), &rule, need);
        return Err(Box::new((status, Some(rec))));
    }
    Ok(grant)
}

fn role_of(who: &Identity, state: &State) -> Result<Grant, Status> {
    let grant = |role, basis: String| Grant {
        role,
        names: Vec::new(),
        basis,
    };
    match who {
        Identity::Unix { uid, gid, pid } => {
            let (uid, gid, pid) = (*uid, *gid, *pid);
            let p = &state.policy;
            if uid == 0 {
                return Ok(grant(Role::Admin, "root".into()));
            }
            if uid == p.own_uid {
                return Ok(grant(Role::Admin, "berthd's own user".into()));
            }
            let in_group = p.group.is_some_and(|g| {
                g == gid || pid.is_some_and(|pid| supplementary_groups(pid).contains(&g))
            });
            if in_group {
                let name = state.config.control.group.clone().unwrap_or_default();
                return Ok(grant(
                    state.config.control.group_role,
                    format!("group {name}"),
                ));
            }
            tracing::warn!(uid, gid, pid = ?pid, "denied control request from a local user outside the allowed set");
            let hint = match (&state.config.control.group, p.group) {
                (Some(name), Some(_)) => format!("add the user to group {name:?} or run as root"),
                (None, _) | (Some(_), None) => {
                    "run as root or as berthd's own user, or configure control.group".to_string()
                }
            };
            Err(Status::permission_denied(format!(
                "uid {uid} may not use berthd: {hint}"
            )))
        }
        Identity::Cert(c) => {
            let admin_cert = state
                .pki
                .get(&c.serial)
                .is_ok_and(|r| r.kind == CertKind::Admin && r.status() == CertStatus::Valid);
            if admin_cert {
                return Ok(grant(Role::Admin, "admin certificate".into()));
            }
            let replica_cert = state
                .pki
                .get(&c.serial)
                .is_ok_and(|r| r.kind == CertKind::Replica && r.status() == CertStatus::Valid);
            if replica_cert {
                return Ok(grant(Role::Replica, "replica certificate".into()));
            }
            // `control.admins` names CNs; the gate has already refused revoked and expired
            // certificates, so a revoked one gets nothing from being listed there.
            if state.config.control.admins.contains(&c.common_name) {
                return Ok(grant(Role::Admin, "control.admins".into()));
            }
            let mut best: Option<Grant> = None;
            for (i, g) in state.config.control.roles.iter().enumerate() {
                if !g.subjects.iter().any(|m| m.matches_with(c, &|_| false)) {
                    continue;
                }
                let b = best.get_or_insert_with(|| grant(g.role, format!("control.roles[{i}]")));
                if g.role > b.role {
                    *b = grant(g.role, format!("control.roles[{i}]"));
                }
                if g.role == Role::Issuer {
                    b.names.extend(g.names.iter().cloned());
                }
            }
            if let Some(b) = best {
                return Ok(b);
            }
            tracing::warn!(cn = %c.common_name, serial = %c.serial, "denied control request from a certificate with no role");
            Err(Status::permission_denied(format!(
                "certificate CN={} (serial {}) has no role on berthd: use one from `berth cert issue admin`, add the CN to control.admins, or grant a role in control.roles",
                c.common_name, c.serial
            )))
        }
        Identity::Anonymous => Err(Status::unauthenticated(
            "a client certificate from the berth CA is required (without one, only enrolment with a token is possible: berth join)",
        )),
        Identity::Daemon => Err(Status::unauthenticated("unknown caller")),
    }
}

/// Checks `control.roles` at start: a grant that can never apply is a mistake.
pub(crate) fn check_roles(roles: &[crate::config::RoleGrant]) -> Result<(), String> {
    for (i, g) in roles.iter().enumerate() {
        if g.subjects.is_empty() {
            return Err(format!("control.roles[{i}] has no subjects"));
        }
        for m in &g.subjects {
            if *m == crate::registry::policy::Matcher::default() {
                return Err(format!(
                    "control.roles[{i}] has an empty matcher {{}}, which would match every certificate"
                ));
            }
            if m.group.is_some() {
                return Err(format!(
                    "control.roles[{i}]: groups belong to the registry policy; list the matchers here"
                ));
            }
        }
        match g.role {
            Role::Issuer if g.names.is_empty() => {
                return Err(format!(
                    "control.roles[{i}] is an issuer without names: say which common names it may act on, e.g. names = [\"ci-*\"]"
                ));
            }
            Role::Replica | Role::Viewer | Role::Admin if !g.names.is_empty() => {
                return Err(format!(
                    "control.roles[{i}]: names only apply to the issuer role"
                ));
            }
            Role::Replica | Role::Viewer | Role::Issuer | Role::Admin => {}
        }
    }
    Ok(())
}

/// Supplementary groups of a live process, from /proc; empty when unreadable.
pub(super) fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The interceptor of the enrolment service: any caller may present a token (that is the
/// point of enrolment), but no more than a few failures a minute per peer address.
#[derive(Clone)]
pub(crate) struct EnrolGate {
    pub state: Arc<State>,
}

impl tonic::service::Interceptor for EnrolGate {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let peer = req.extensions().get::<crate::net::Peer>().and_then(|p| p.0);
        if let Some(ip) = peer.map(|p| p.ip())
            && self.state.enrol_failures.blocked(ip)
        {
            tracing::warn!(%ip, "enrolment attempts rate-limited");
            return Err(Status::resource_exhausted(
                "too many failed enrolment attempts from this address; wait a minute",
            ));
        }
        Ok(req)
    }
}

/// Failed enrolments per peer address in the current minute.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    by_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

/// Failed attempts one address may make per minute.
const MAX_FAILURES: u32 = 10;

impl Failures {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<std::net::IpAddr, (std::time::Instant, u32)>,
    > {
        self.by_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while `ip` has used up its failures for this minute.
    pub(crate) fn blocked(&self, ip: std::net::IpAddr) -> bool {
        let mut m = self.lock();
        match m.get(&ip) {
            Some((since, _)) if since.elapsed() > std::time::Duration::from_secs(60) => {
                m.remove(&ip);
                false
            }
            Some((_, n)) => *n >= MAX_FAILURES,
            None => false,
        }
    }

    /// Counts a failure of `ip`.
    pub(crate) fn failed(&self, ip: std::net::IpAddr) {
        let mut m = self.lock();
        if m.len() > 65_536 {
            m.clear();
        }
        let e = m.entry(ip).or_insert((std::time::Instant::now(), 0));
        e.1 += 1;
    }
}
