//! berth: the command line for berthd. It talks to the daemon over its unix socket (or a
//! remote daemon over mutual TLS) and prints tables, or JSON with `--json`.

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use berth::client::{Client, Target};
use clap::{Args, CommandFactory, Parser, Subcommand};

/// berth manages a private registry's CA, certificates and docker certs.d folders through
/// berthd.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command shares.
#[derive(Debug, Args)]
struct Global {
    /// berthd's unix socket.
    #[arg(long, global = true, env = "BERTH_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// A remote berthd, e.g. tcp://host:2376 (mutual TLS with --tls-dir), or unix:///path.
    #[arg(
        id = "daemon_host",
        long = "host",
        short = 'H',
        global = true,
        env = "BERTH_HOST",
        value_name = "URL"
    )]
    daemon_host: Option<String>,
    /// Folder with ca.pem, cert.pem and key.pem for --host tcp://… [default: ~/.berth]
    #[arg(long, global = true, env = "BERTH_CERT_PATH", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon: version, health, where things are.
    #[command(subcommand)]
    System(cmd::system::SystemCmd),
    /// The certificate authority.
    #[command(subcommand)]
    Ca(cmd::ca::CaCmd),
    /// Issue, sign, list, inspect and revoke certificates.
    #[command(subcommand)]
    Cert(cmd::cert::CertCmd),
    /// docker and containers certs.d folders.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCmd),
    /// The embedded registry: status, repositories, tags, gc, uploads, fsck.
    #[command(subcommand)]
    Registry(cmd::registry::RegistryCmd),
    /// One image in the embedded registry: inspect, rm.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Live registry events (push, pull, delete), like `docker events`.
    Events(cmd::events::EventsCmd),
    /// Why docker, podman or containerd will refuse a registry (files and a live probe).
    Doctor(cmd::doctor::DoctorCmd),
    /// Who did what: the audit log of every change and every denial.
    Audit(cmd::audit::AuditCmd),
    /// The registry's policy: reload it, explain a decision.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    /// A registry replica's link to its primary.
    #[command(subcommand)]
    Replica(cmd::replica::ReplicaCmd),
    /// One-time enrolment tokens for `berth join`.
    #[command(subcommand)]
    Token(cmd::token::TokenCmd),
    /// Enrol this host with a token and install its certificate for every runtime.
    Join(cmd::join::JoinCmd),
    /// Renew this host's certificates that are due (2/3 of their life, with jitter).
    Renew(cmd::host::RenewCmd),
    /// What this host has joined, expiry and next renewal.
    Status(cmd::host::StatusCmd),
    /// Renew on time, until stopped (run it as a service; logs to stderr).
    Agent(cmd::host::AgentCmd),
    /// Print shell completions, e.g. `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Global {
    fn target(&self) -> Result<Target, berth::client::Error> {
        let tls_dir = self.tls_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".berth")
        });
        match (&self.daemon_host, &self.socket) {
            (Some(h), _) => Target::parse(h, &tls_dir),
            (None, Some(s)) => Ok(Target::Unix(s.clone())),
            (None, None) => Ok(Target::Unix(berth::config::default_socket_path())),
        }
    }

    /// Connects to berthd, with the client's hint when it is not there.
    async fn connect(&self) -> Result<Client, berth::client::Error> {
        Client::connect(&self.target()?).await
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::System(c) => cmd::system::run(g, c).await,
        Command::Ca(c) => cmd::ca::run(g, c).await,
        Command::Cert(c) => cmd::cert::run(g, c).await,
        Command::Certs(c) => cmd::certs::run(g, c).await,
        Command::Registry(c) => cmd::registry::run(g, c).await,
        Command::Image(c) => cmd::image::run(g, c).await,
        Command::Events(c) => cmd::events::run(g, c).await,
        Command::Token(c) => cmd::token::run(g, c).await,
        Command::Replica(c) => cmd::replica::run(g, c).await,
        Command::Policy(c) => cmd::policy::run(g, c).await,
        Command::Audit(c) => cmd::audit::run(g, c).await,
        Command::Doctor(c) => cmd::doctor::run(g, c).await,
        Command::Join(c) => cmd::join::run(g, c).await,
        Command::Renew(c) => cmd::host::renew(g, c).await,
        Command::Status(c) => cmd::host::status(g, c).await,
        Command::Agent(c) => cmd::host::agent(c).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Exit status of a process killed by SIGPIPE, as a shell reports it.
const SIGPIPE_STATUS: i32 = 128 + 13;

/// `berth ... | head` closes our stdout early. Rust ignores SIGPIPE, so the next write
/// fails and `println!` panics (exit 101, with a backtrace hint). Exit the way `cat` or
/// `yes` does instead: quietly, with the SIGPIPE status. Resetting SIGPIPE itself would
/// need `unsafe`, which this crate forbids.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") || msg.contains("failed printing to stdout") {
            std::process::exit(SIGPIPE_STATUS);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                // A daemon answer is already spelled out in the message above.
                let text = s.to_string();
                if !e.to_string().contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                source = s.source();
            }
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to try next after berthd refused a request, by the class of refusal.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    use berth::client::ErrorKind as Kind;
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<berth::client::Error>())?
        .kind()?;
    match kind {
        Kind::InvalidArgument => Some(
            "fix the value named above; `berth <command> --help` lists what each option accepts",
        ),
        Kind::NotFound => Some("`berth cert ls` and `berth certs ls` show what exists"),
        Kind::AlreadyExists => {
            Some("pass --force to replace files berth did not write, after checking them")
        }
        Kind::PermissionDenied => Some(
            "run as root, as berthd's user or as a member of its control group; remote callers need an admin certificate (`berth cert issue admin`)",
        ),
        _ => None,
    }
}
