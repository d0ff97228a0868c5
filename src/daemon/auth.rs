//! Who may call berthd: on the unix socket by the peer's credentials (SO_PEERCRED), on TCP
//! by the client certificate the TLS handshake verified against the berth CA. `net::serve`
//! puts the caller's [`Identity`] on every request and has already refused revoked and
//! expired certificates; this decides which identities are admins.

use std::sync::Arc;

use tonic::{Request, Status};

use super::State;
use crate::identity::Identity;
use crate::pki::{CertKind, CertStatus};

/// The local rules: who besides root may use the socket.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The daemon's own uid: a rootless berthd serves its own user.
    pub own_uid: u32,
    /// Members of this group may use the socket.
    pub group: Option<u32>,
}

/// A tonic interceptor that authorises every request before any handler runs.
#[derive(Clone)]
pub(crate) struct Authorizer {
    pub state: Arc<State>,
}

impl tonic::service::Interceptor for Authorizer {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        authorize(&req, &self.state)?;
        Ok(req)
    }
}

fn authorize(req: &Request<()>, state: &State) -> Result<(), Status> {
    let who = req.extensions().get::<Identity>().ok_or_else(|| {
        Status::unauthenticated(
            "no caller identity on this request (not through berthd's listeners)",
        )
    })?;
    match who {
        Identity::Unix { uid, gid, pid } => {
            let (uid, gid, pid) = (*uid, *gid, *pid);
            let p = &state.policy;
            let in_group = p.group.is_some_and(|g| {
                g == gid || pid.is_some_and(|pid| supplementary_groups(pid).contains(&g))
            });
            if uid == 0 || uid == p.own_uid || in_group {
                return Ok(());
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
            // `control.admins` names CNs; the gate has already refused revoked and expired
            // certificates, so a revoked one gets nothing from being listed there.
            if admin_cert || state.config.control.admins.contains(&c.common_name) {
                return Ok(());
            }
            tracing::warn!(cn = %c.common_name, serial = %c.serial, "denied control request from a certificate outside the admin set");
            Err(Status::permission_denied(format!(
                "certificate CN={} (serial {}) is not an admin of berthd: use one from `berth cert issue admin`, or add the CN to control.admins",
                c.common_name, c.serial
            )))
        }
        Identity::Anonymous => Err(Status::unauthenticated(
            "a client certificate from the berth CA is required (without one, only enrolment with a token is possible: berth join)",
        )),
        Identity::Daemon => Err(Status::unauthenticated("unknown caller")),
    }
}

/// Supplementary groups of a live process, from /proc; empty when unreadable.
fn supplementary_groups(pid: i32) -> Vec<u32> {
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
