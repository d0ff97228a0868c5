//! Binding the control listeners with care: socket folder, stale socket, mode, group.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Error;
use crate::config::{Config, ControlConfig};
use crate::fsutil;

/// Bound, not yet serving, listeners. Tests bind port 0 and read the address back.
#[derive(Debug)]
pub struct Listeners {
    pub(super) unix: std::os::unix::net::UnixListener,
    pub(super) socket: PathBuf,
    pub(super) tcp: Vec<std::net::TcpListener>,
    pub(super) registry: Vec<std::net::TcpListener>,
    pub(super) metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    /// The unix socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The bound registry addresses (with the real port when 0 was asked for).
    pub fn registry_addrs(&self) -> Vec<SocketAddr> {
        self.registry
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound metrics address, when metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound TCP addresses (with the real port when 0 was asked for).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// Binds everything `cfg` asks for: the control listeners, the registry (when enabled)
/// and the metrics listener (when enabled). On an error nothing stays bound and the socket
/// file is removed.
pub(super) fn bind_all(cfg: &Config, group: Option<u32>) -> Result<Listeners, Error> {
    let mut l = bind(&cfg.control, group)?;
    let rest = (|| {
        if cfg.registry.enabled {
            l.registry = bind_registry(&cfg.registry.listen)?;
        }
        if cfg.metrics.enabled {
            l.metrics = Some(bind_metrics(cfg.metrics.listen)?);
        }
        Ok(())
    })();
    if let Err(e) = rest {
        let _ = std::fs::remove_file(&l.socket);
        return Err(e);
    }
    Ok(l)
}

/// Binds the unix socket (mode and group applied before anyone can connect) and every TCP
/// listener. A socket file left by a dead daemon is removed; one a live daemon answers on
/// is an error, and so is a path that is not a socket.
pub(super) fn bind(cfg: &ControlConfig, group: Option<u32>) -> Result<Listeners, Error> {
    let path = &cfg.socket;
    if let Some(dir) = path.parent() {
        fsutil::create_dir_all(dir, 0o755)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::SocketInUse(path.clone()));
            }
            fsutil::remove_durable(path)?;
        }
        Ok(_) => return Err(Error::NotASocket(path.clone())),
        Err(_) => {}
    }
    let unix = std::os::unix::net::UnixListener::bind(path).map_err(|source| Error::Bind {
        addr: path.display().to_string(),
        source,
    })?;
    let set_up = || -> Result<(), Error> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode)).map_err(
            |source| Error::Bind {
                addr: path.display().to_string(),
                source,
            },
        )?;
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
                Error::Bind {
                    addr: path.display().to_string(),
                    source: std::io::Error::from(e),
                }
            })?;
        }
        unix.set_nonblocking(true).map_err(|source| Error::Bind {
            addr: path.display().to_string(),
            source,
        })
    };
    if let Err(e) = set_up() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let mut tcp = Vec::new();
    for addr in &cfg.listen {
        let l =
            std::net::TcpListener::bind(addr.0).and_then(|l| l.set_nonblocking(true).map(|()| l));
        match l {
            Ok(l) => tcp.push(l),
            Err(source) => {
                let _ = std::fs::remove_file(path);
                return Err(Error::Bind {
                    addr: addr.to_string(),
                    source,
                });
            }
        }
    }
    Ok(Listeners {
        unix,
        socket: path.clone(),
        tcp,
        registry: Vec::new(),
        metrics: None,
    })
}

/// Binds the metrics listener.
pub(super) fn bind_metrics(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| Error::Bind {
            addr: format!("metrics {addr} (set metrics.listen, or stop what holds the port)"),
            source,
        })
}

/// Binds the registry's addresses. An address this host cannot have (no IPv6, say) is
/// skipped with a warning as long as another one binds; an address in use is an error.
pub(super) fn bind_registry(addrs: &[SocketAddr]) -> Result<Vec<std::net::TcpListener>, Error> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for a in addrs {
        match std::net::TcpListener::bind(a).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => out.push(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
            {
                tracing::warn!(addr = %a, error = %e, "registry address unavailable on this host; skipped");
                skipped.push((a, e));
            }
            Err(source) => {
                return Err(Error::Bind {
                    addr: format!(
                        "registry {a} (set registry.listen, or stop what holds the port)"
                    ),
                    source,
                });
            }
        }
    }
    if out.is_empty()
        && let Some((a, source)) = skipped.into_iter().next()
    {
        return Err(Error::Bind {
            addr: format!("registry {a}"),
            source,
        });
    }
    Ok(out)
}

/// Resolves `control.group` (a name or a numeric gid).
pub(super) fn resolve_group(group: Option<&str>) -> Result<Option<u32>, Error> {
    let Some(g) = group else { return Ok(None) };
    if let Ok(n) = g.parse::<u32>() {
        return Ok(Some(n));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(grp)) => Ok(Some(grp.gid.as_raw())),
        Ok(None) | Err(_) => Err(Error::UnknownGroup(g.to_string())),
    }
}
