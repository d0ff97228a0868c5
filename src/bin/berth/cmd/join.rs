//! `berth join`: provisions this host (a CI runner, a build machine, a Kubernetes node) for a
//! registry. The key is made here and never leaves the host; berthd is trusted only through
//! the pinned CA fingerprint; a one-time token buys the certificate; the files land in
//! every runtime's tree, atomically, with the modes docker expects.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth::certsd::{ConfigChange, HostPort};
use berth::client::host::JoinSpec;
use clap::Args;

use crate::Global;
use crate::output;

/// Enrol this host and install its certificate for a registry.
#[derive(Debug, Args)]
pub struct JoinCmd {
    /// The registry as docker names it, e.g. registry.example.internal:5443.
    registry: String,
    /// berthd's control listener, e.g. tcp://registry.example.internal:2376.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    server: String,
    /// The token from `berth token create` on the CA host.
    #[arg(long, env = "BERTH_JOIN_TOKEN")]
    token: String,
    /// The CA's SHA-256 fingerprint (`berth system info` on the CA host); berthd must show
    /// this CA before the token is sent.
    #[arg(long, value_name = "sha256:HEX")]
    ca_fingerprint: String,
    /// Where berth records what it wrote [default: berthd's state folder for this user].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// docker's certs.d root.
    #[arg(long, value_name = "DIR")]
    certs_d: Option<PathBuf>,
    /// containers' (podman, skopeo) certs.d root; written when given or when its parent
    /// folder exists.
    #[arg(long, value_name = "DIR")]
    containers_certs_d: Option<PathBuf>,
    /// containerd's hosts root; written when given or when its parent folder exists.
    #[arg(long, value_name = "DIR")]
    containerd_certs_d: Option<PathBuf>,
    /// Write containers' tree even if its parent folder does not exist.
    #[arg(long)]
    containers: bool,
    /// Write containerd's tree even if its parent folder does not exist.
    #[arg(long)]
    containerd: bool,
    /// Also point buildkitd at the pair: a [registry."HOST"] section in buildkitd.toml
    /// (created, or appended to one that has none for this registry; never rewritten).
    #[arg(long)]
    buildkit: bool,
    /// buildkitd's config file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/buildkit/buildkitd.toml"
    )]
    buildkit_config: PathBuf,
    /// Also point k3s at the pair: registries.yaml (created when there is none; an existing
    /// one is left alone and the entry printed).
    #[arg(long)]
    k3s: bool,
    /// k3s's registries file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/rancher/k3s/registries.yaml"
    )]
    k3s_registries: PathBuf,
}

fn exists_parent(p: &std::path::Path) -> bool {
    p.parent().is_some_and(std::path::Path::is_dir)
}

/// The state folder of this host's berth records.
pub(crate) fn state_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(berth::config::default_state_dir)
}

pub async fn run(g: &Global, cmd: JoinCmd) -> anyhow::Result<ExitCode> {
    let registry: HostPort = cmd.registry.parse()?;
    let (server_host, server_port) = parse_server(&cmd.server)?;
    let mut roots = berth::certsd::Settings::default();
    let containers =
        cmd.containers || cmd.containers_certs_d.is_some() || exists_parent(&roots.containers_root);
    let containerd =
        cmd.containerd || cmd.containerd_certs_d.is_some() || exists_parent(&roots.containerd_root);
    if let Some(d) = cmd.certs_d {
        roots.docker_root = d;
    }
    if let Some(d) = cmd.containers_certs_d {
        roots.containers_root = d;
    }
    if let Some(d) = cmd.containerd_certs_d {
        roots.containerd_root = d;
    }
    let spec = JoinSpec {
        registry,
        server_host,
        server_port,
        token: cmd.token,
        ca_fingerprint: cmd.ca_fingerprint,
        state_dir: state_dir(cmd.state_dir),
        roots,
        containers,
        containerd,
    };
    let docker_dir = spec.roots.docker_root.join(spec.registry.dir_name());
    let (enrolled, out) = berth::client::host::join(&spec).await?;
    let mut extra = Vec::new();
    if cmd.buildkit {
        let file = &cmd.buildkit_config;
        extra.push(
            match berth::certsd::configure_buildkit(file, &spec.registry, &docker_dir)? {
                ConfigChange::Created | ConfigChange::Appended => format!(
                    "{} now points buildkitd at the pair; restart buildkitd to use it",
                    file.display()
                ),
                ConfigChange::Unchanged => {
                    format!("{} already points buildkitd at the pair", file.display())
                }
                ConfigChange::LeftAlone(why) => format!(
                    "{why}: add this to it yourself and restart buildkitd:\n{}",
                    berth::certsd::buildkit_snippet(&spec.registry, &docker_dir)
                ),
            },
        );
    }
    if cmd.k3s {
        let file = &cmd.k3s_registries;
        extra.push(match berth::certsd::configure_k3s(file, &spec.registry, &docker_dir)? {
            ConfigChange::Created | ConfigChange::Appended => format!(
                "{} now points k3s at the pair; k3s reads it only at start: systemctl restart k3s (or k3s-agent)",
                file.display()
            ),
            ConfigChange::Unchanged => format!("{} already points k3s at the pair", file.display()),
            ConfigChange::LeftAlone(why) => format!(
                "{why}: add this under configs: yourself, then restart k3s:\n{}",
                berth::certsd::k3s_snippet(&spec.registry, &docker_dir)
            ),
        });
    }
    if g.json {
        output::json(&serde_json::json!({
            "serial": enrolled.serial,
            "not_after": enrolled.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "install": out,
            "snippets": extra,
        }))?;
    } else {
        super::certs::print_actions(&out.actions, false);
        println!(
            "joined {}: certificate {} valid until {}; `berth renew --all` renews it (at 2/3 of its life)",
            spec.registry,
            enrolled.serial,
            output::date(enrolled.not_after)
        );
        for n in out.notes.iter().chain(extra.iter()) {
            println!("note: {n}");
        }
    }
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_server(s: &str) -> anyhow::Result<(String, u16)> {
    let rest = s.strip_prefix("tcp://").unwrap_or(s);
    let (h, p) = rest
        .rsplit_once(':')
        .with_context(|| format!("invalid --server {s:?}: use tcp://HOST:PORT"))?;
    let port = p
        .parse::<u16>()
        .with_context(|| format!("invalid port in --server {s:?}"))?;
    Ok((
        h.trim_start_matches('[').trim_end_matches(']').to_string(),
        port,
    ))
}
