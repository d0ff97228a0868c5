//! berthd: the berth control daemon. Flags -> Config, tracing, `daemon::run`.

use std::path::PathBuf;

use anyhow::Context;
use berth::config::{Config, ListenAddr};
use berth::daemon::{Daemon, Replica};
use clap::Parser;

/// berthd runs berth's CA, certs.d installer and control API. With no flags it uses the
/// embedded defaults: state in /var/lib/berth (root) or $XDG_STATE_HOME/berth, the socket
/// in /run/berth (root) or $XDG_RUNTIME_DIR/berth, and a CA created on first start.
#[derive(Debug, Parser)]
#[command(name = "berthd", version, about)]
struct Flags {
    /// TOML config file (`version = 1`); flags override it.
    #[arg(long, short = 'c', env = "BERTHD_CONFIG")]
    config: Option<PathBuf>,
    /// Put all state and the socket under this folder.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Unix socket path.
    #[arg(long, env = "BERTH_SOCKET")]
    socket: Option<PathBuf>,
    /// Also serve the control API on TCP with mutual TLS, e.g. tcp://0.0.0.0:2376 (repeatable).
    #[arg(long, value_name = "tcp://IP:PORT")]
    listen: Vec<ListenAddr>,
    /// Group (name or gid) that owns the socket and may use the API.
    #[arg(long)]
    group: Option<String>,
    /// docker's certs.d root.
    #[arg(long, value_name = "DIR")]
    certs_d: Option<PathBuf>,
    /// containers' (podman, skopeo) certs.d root.
    #[arg(long, value_name = "DIR")]
    containers_certs_d: Option<PathBuf>,
    /// containerd's hosts root (hosts.toml folders).
    #[arg(long, value_name = "DIR")]
    containerd_certs_d: Option<PathBuf>,
    /// Registry address (repeatable); default: `127.0.0.1:5443` and `[::1]:5443`.
    #[arg(long, value_name = "IP:PORT")]
    registry_listen: Vec<std::net::SocketAddr>,
    /// Extra DNS name or IP for the registry's certificate (repeatable; `registry.names`).
    /// docker needs one that is not loopback.
    #[arg(long, value_name = "NAME")]
    registry_name: Vec<String>,
    /// Registry storage root (registry:2 layout); default: `<state>/registry`.
    #[arg(long, value_name = "DIR")]
    registry_root: Option<PathBuf>,
    /// Do not serve the embedded registry.
    #[arg(long)]
    no_registry: bool,
    /// Make a new CA although the index lists certificates of a CA whose files are gone.
    #[arg(long)]
    new_ca: bool,
    /// What this berthd is: `all` (CA, control API, registry) or `registry`, a stateless
    /// registry replica of a primary on shared storage (`[replica]` in the config).
    #[arg(long, value_enum, default_value = "all")]
    role: RoleFlag,
    /// The primary's TCP control listener, HOST:PORT (`replica.primary`; role registry).
    #[arg(long, value_name = "HOST:PORT")]
    primary: Option<String>,
    /// SHA-256 fingerprint of the primary's CA (`replica.ca_fingerprint`).
    #[arg(long, value_name = "SHA256")]
    ca_fingerprint: Option<String>,
    /// File holding the replica token (`replica.token_file`); `BERTH_JOIN_TOKEN` also works.
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// Log filter, e.g. info or berth=debug (also RUST_LOG).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleFlag {
    /// The whole berthd.
    All,
    /// A registry replica.
    Registry,
}

fn config(flags: &Flags) -> anyhow::Result<Config> {
    let mut cfg = match &flags.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(root) = &flags.root {
        cfg.set_root(root);
    }
    if let Some(s) = &flags.socket {
        cfg.control.socket = s.clone();
    }
    if !flags.listen.is_empty() {
        cfg.control.listen = flags.listen.clone();
    }
    if let Some(g) = &flags.group {
        cfg.control.group = Some(g.clone());
    }
    if let Some(d) = &flags.certs_d {
        cfg.certsd.docker_root = d.clone();
    }
    if let Some(d) = &flags.containers_certs_d {
        cfg.certsd.containers_root = d.clone();
    }
    if let Some(d) = &flags.containerd_certs_d {
        cfg.certsd.containerd_root = d.clone();
    }
    if !flags.registry_listen.is_empty() {
        cfg.registry.listen = flags.registry_listen.clone();
    }
    if !flags.registry_name.is_empty() {
        cfg.registry.names = flags.registry_name.clone();
    }
    if let Some(d) = &flags.registry_root {
        cfg.registry.root = Some(d.clone());
    }
    cfg.pki.replace_lost_ca = flags.new_ca;
    if flags.primary.is_some() || flags.ca_fingerprint.is_some() || flags.join_token_file.is_some()
    {
        let r = cfg
            .replica
            .get_or_insert_with(|| berth::config::ReplicaConfig {
                primary: String::new(),
                ca_fingerprint: String::new(),
                token_file: None,
                crl_grace: std::time::Duration::from_secs(3600),
            });
        if let Some(p) = &flags.primary {
            r.primary = p.clone();
        }
        if let Some(f) = &flags.ca_fingerprint {
            r.ca_fingerprint = f.clone();
        }
        if let Some(t) = &flags.join_token_file {
            r.token_file = Some(t.clone());
        }
    }
    if flags.no_registry {
        cfg.registry.enabled = false;
    }
    Ok(cfg)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

/// "tcp://a, tcp://b", or `none` when the list is empty.
fn addrs(list: &[std::net::SocketAddr], scheme: &str, none: &str) -> String {
    if list.is_empty() {
        return none.to_string();
    }
    list.iter()
        .map(|a| format!("{scheme}{a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The glibc malloc arenas berthd runs with when the environment names none: one per
/// core, as tokio runs one worker per core, so the workers need not contend for one.
fn malloc_arenas() -> String {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get().max(2))
        .to_string()
}

/// Starts berthd again, in place (same pid, arguments, open descriptors), with
/// `MALLOC_ARENA_MAX` set, unless the environment already chooses the arenas. glibc gives
/// every thread that allocates an arena of its own, up to 8 per core, and each keeps the
/// memory freed in it: the blocking pool's threads come and go, and the buffers and
/// paths they allocated stranded about 7 MiB of berthd's 28-31 MiB peak in the registry
/// bench on 2 cores. With an arena per core the peak is 22-24 MiB and throughput is
/// unchanged (see the README). The variable is the only way in: `mallopt` needs the
/// `unsafe` this crate forbids, and glibc reads its tunables once, at start. Returns
/// only when the exec failed (berthd then runs on with glibc's defaults) or was not
/// needed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn with_few_malloc_arenas() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("malloc.arena_max"));
    if chosen {
        return None;
    }
    // The binary's own path, not /proc/self/exe: the kernel names the process after
    // what was executed, and `pgrep berthd` must still find it.
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    let mut args = std::env::args_os();
    let arg0 = args.next()?;
    // Only when the kernel ran this binary under its own name: started through the
    // dynamic loader (`ld.so ./berthd`) the executable is the loader, which would take
    // berthd's flags for its own, and through a symlink the process's name would change.
    if std::path::Path::new(&arg0).file_name() != exe.file_name() {
        return None;
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0(arg0);
    Some(
        cmd.args(args)
            .env("MALLOC_ARENA_MAX", malloc_arenas())
            .exec(),
    )
}

fn main() -> anyhow::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let arenas = with_few_malloc_arenas();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let arenas: Option<std::io::Error> = None;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("berthd cannot start its runtime")?
        .block_on(run(arenas))
}

async fn run(arenas: Option<std::io::Error>) -> anyhow::Result<()> {
    let flags = Flags::parse();
    let (filter, bad_filter) = berth::config::log_filter(&flags.log);
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(filter)
            .init();
    }
    if let Some(why) = bad_filter {
        tracing::warn!("{why}");
    }
    if let Some(e) = arenas {
        tracing::warn!(error = %e, "cannot restart with MALLOC_ARENA_MAX set; running with glibc's default malloc arenas, which use more memory");
    }
    // One crypto provider, chosen before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = config(&flags)?;
    let socket = cfg.control.socket.clone();
    if flags.role == RoleFlag::Registry {
        let token = std::env::var("BERTH_JOIN_TOKEN").ok();
        let replica = Replica::open(cfg, token).context("the registry replica cannot start")?;
        let listeners = replica
            .bind()
            .context("the registry replica cannot start")?;
        eprintln!(
            "berthd {} registry replica starting\n  socket:   {}\n  registry: {}",
            env!("CARGO_PKG_VERSION"),
            socket.display(),
            addrs(&listeners.registry_addrs(), "https://", "off"),
        );
        replica
            .serve(listeners, shutdown_signal())
            .await
            .context("the registry replica stopped")?;
        return Ok(());
    }
    if cfg.replica.is_some() {
        anyhow::bail!(
            "the config has a [replica] section (or --primary): start with --role registry, or remove it"
        );
    }
    let daemon = Daemon::open(cfg).context("berthd cannot start")?;
    let listeners = daemon.bind().context("berthd cannot start")?;
    eprintln!(
        "berthd {} ready\n  socket:   {}\n  tcp:      {}\n  registry: {}\n  CA:       SHA256 {}",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
        addrs(
            &listeners.tcp_addrs(),
            "tcp://",
            "off (enable with --listen tcp://IP:PORT)"
        ),
        addrs(&listeners.registry_addrs(), "https://", "off"),
        daemon.ca_fingerprint()
    );
    daemon.serve(listeners, shutdown_signal()).await?;
    Ok(())
}
