//! Who may call berthd: on the unix socket by the peer's credentials (SO_PEERCRED), on TCP
//! by the client certificate the TLS handshake already verified against the berth CA.

use std::sync::Arc;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::State;
use crate::pki::{CertKind, CertStatus};

/// The identity a request was authorised as; handlers find it in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process on the unix socket.
    Unix {
        /// Peer uid.
        uid: u32,
        /// Peer primary gid.
        gid: u32,
        /// Peer pid, when the kernel reports it.
        pid: Option<i32>,
    },
    /// A remote administrator over mutual TLS.
    Tls {
        /// Client certificate subject CN.
        common_name: String,
        /// Client certificate serial, lowercase hex.
        serial: String,
    },
}

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
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = authorize(&req, &self.state)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

fn authorize(req: &Request<()>, state: &State) -> Result<Caller, Status> {
    if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
        let cred = info.peer_cred.ok_or_else(|| {
            Status::unauthenticated("berthd could not read the peer credentials of this connection")
        })?;
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        let p = &state.policy;
        let in_group = p.group.is_some_and(|g| {
            g == gid || pid.is_some_and(|pid| supplementary_groups(pid).contains(&g))
        });
        if uid == 0 || uid == p.own_uid || in_group {
            return Ok(Caller::Unix { uid, gid, pid });
        }
        tracing::warn!(uid, gid, pid = ?pid, "denied control request from a local user outside the allowed set");
        let hint = match (&state.config.control.group, p.group) {
            (Some(name), Some(_)) => format!("add the user to group {name:?} or run as root"),
            (None, _) | (Some(_), None) => {
                "run as root or as berthd's own user, or configure control.group".to_string()
            }
        };
        return Err(Status::permission_denied(format!(
            "uid {uid} may not use berthd: {hint}"
        )));
    }
    if let Some(info) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
        let remote = info.get_ref().remote_addr();
        let certs = info.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate from the berth CA is required")
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("a client certificate from the berth CA is required")
        })?;
        let (_, x) = X509Certificate::from_der(leaf)
            .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
        let serial = hex::encode(x.raw_serial());
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let admin_cert = state
            .pki
            .get(&serial)
            .is_ok_and(|r| r.kind == CertKind::Admin && r.status() == CertStatus::Valid);
        if admin_cert || state.config.control.admins.contains(&cn) {
            return Ok(Caller::Tls {
                common_name: cn,
                serial,
            });
        }
        tracing::warn!(cn = %cn, serial = %serial, remote = ?remote, "denied control request from a certificate outside the admin set");
        return Err(Status::permission_denied(format!(
            "certificate CN={cn} (serial {serial}) is not an admin of berthd: use one from `berth cert issue admin`, or add the CN to control.admins"
        )));
    }
    Err(Status::unauthenticated("unknown transport"))
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
