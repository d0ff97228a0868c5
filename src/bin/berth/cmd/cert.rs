//! `berth cert`: issue, sign, list, inspect and revoke certificates.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use berth::client::{Client, IssueRequest, IssuedCert};
use berth::pki::{CertDetails, CertKind, CertRecord, KeyAlgorithm, Names};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::Global;
use crate::output::{self, Table};

/// `berth cert …`
#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Issue a certificate and its key.
    #[command(subcommand)]
    Issue(IssueCmd),
    /// Sign a certificate signing request: the private key never leaves your machine.
    Sign {
        /// The CSR, PEM or DER ("-" reads stdin).
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// What the certificate may be used for.
        #[arg(long, value_enum)]
        profile: Profile,
        /// Validity in days, 1 to 36500 [default: the daemon's, 90].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: Option<u32>,
        /// Write the certificate here (PEM) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Every certificate berth issued: serial, kind, subject, SANs, expiry, status.
    Ls {
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Only this common name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Decode any certificate (PEM bundle or DER), berth's or not.
    Inspect {
        /// Certificate files ("-" reads stdin).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Decode locally, without asking berthd (no CA relationship or revocation).
        #[arg(long)]
        offline: bool,
    },
    /// Renew a certificate: same kind and names, fresh key, new serial. The old one stays
    /// valid until it expires or is revoked.
    Renew {
        /// Serial number of the certificate to renew.
        serial: String,
        /// Validity in days, 1 to 36500 [default: the daemon's, 90].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: Option<u32>,
        /// Output folder (server and admin: default ./<name>; client: only when given).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Replace existing files in --out.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a certificate: it is added to the CRL and refused by berthd's listeners.
    Revoke {
        /// Serial number (hex, as `berth cert ls` shows it; colons allowed).
        serial: String,
    },
}

/// `berth cert issue …`
#[derive(Debug, Subcommand)]
pub enum IssueCmd {
    /// A TLS server certificate (serverAuth), e.g. for a registry. Writes ca.pem, cert.pem,
    /// key.pem into --out.
    Server {
        /// DNS name (repeatable).
        #[arg(long = "dns", value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        dns: Vec<String>,
        /// IP address (repeatable).
        #[arg(long = "ip", value_name = "ADDR")]
        ip: Vec<IpAddr>,
        /// Subject CN [default: the first DNS name or IP].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        common: Common,
        /// Output folder [default: ./<name>].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// A client certificate (clientAuth) for docker, podman and skopeo. berthd keeps its key
    /// so `berth certs install --client NAME` can install it; with --out it also writes
    /// ca.crt, client.cert and client.key there (certs.d naming).
    Client {
        /// Subject CN: who the client is, e.g. ci-bot.
        #[arg(long)]
        name: String,
        /// Subject O (repeatable).
        #[arg(long = "org", value_name = "ORG")]
        org: Vec<String>,
        /// Subject OU (repeatable).
        #[arg(long = "ou", value_name = "UNIT")]
        ou: Vec<String>,
        /// URI SAN, e.g. spiffe://example/ci (repeatable).
        #[arg(long = "uri", value_name = "URI")]
        uri: Vec<String>,
        /// Email SAN (repeatable).
        #[arg(long = "email", value_name = "ADDR")]
        email: Vec<String>,
        #[command(flatten)]
        common: Common,
        /// Output folder for ca.crt, client.cert, client.key.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// An admin certificate for the remote control API (`berth --host tcp://… --tls-dir DIR`).
    /// Writes ca.pem, cert.pem, key.pem into --out.
    Admin {
        /// Subject CN, e.g. ops.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        common: Common,
        /// Output folder [default: ./<name>].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Options every `issue` shares.
#[derive(Debug, Args)]
pub struct Common {
    /// Validity in days, 1 to 36500 [default: the daemon's, 90].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    days: Option<u32>,
    /// Key algorithm: ecdsa-p256, ecdsa-p384, ed25519, rsa2048, rsa3072, rsa4096.
    #[arg(long, default_value = "ecdsa-p256", value_name = "ALG")]
    key_type: KeyAlgorithm,
    /// Replace existing files in --out.
    #[arg(long)]
    force: bool,
}

/// Signing profiles a CSR can ask for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Profile {
    /// clientAuth.
    Client,
    /// serverAuth.
    Server,
}

/// Certificate kinds, for filters.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Server certificates.
    Server,
    /// Client certificates.
    Client,
    /// Admin certificates.
    Admin,
    /// Registry replicas' certificates (from replica tokens).
    Replica,
}

impl From<Kind> for CertKind {
    fn from(k: Kind) -> CertKind {
        match k {
            Kind::Server => CertKind::Server,
            Kind::Client => CertKind::Client,
            Kind::Admin => CertKind::Admin,
            Kind::Replica => CertKind::Replica,
        }
    }
}

/// The files an issue wrote, for the JSON answer.
#[derive(Serialize)]
struct IssueJson<'a> {
    certificate: &'a CertRecord,
    files: Vec<PathBuf>,
}

/// Runs a `cert` command.
pub async fn run(g: &Global, cmd: CertCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCmd::Issue(i) => issue(g, i).await,
        CertCmd::Sign {
            csr,
            profile,
            days,
            out,
            force,
        } => {
            let data = read_input(&csr)?;
            let client = g.connect().await?;
            let kind = match profile {
                Profile::Client => CertKind::Client,
                Profile::Server => CertKind::Server,
            };
            let (rec, _ca) = client.sign_csr(data, kind, days).await?;
            match &out {
                Some(path) => {
                    output::write_file(path, rec.certificate_pem.as_bytes(), 0o644, force)?;
                    if g.json {
                        output::json(&IssueJson {
                            certificate: &rec,
                            files: vec![path.clone()],
                        })?;
                    } else {
                        eprintln!(
                            "signed {} certificate {} for {:?}: {}",
                            kind.name(),
                            rec.serial,
                            rec.names.common_name,
                            path.display()
                        );
                    }
                }
                None if g.json => output::json(&rec)?,
                None => print!("{}", rec.certificate_pem),
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Ls { kind, name } => {
            let client = g.connect().await?;
            let recs = client.list(kind.map(CertKind::from), name).await?;
            if g.json {
                output::json(&recs)?;
            } else {
                let mut t = Table::new(&[
                    "SERIAL",
                    "KIND",
                    "SUBJECT",
                    "SANS",
                    "NOT AFTER",
                    "STATUS",
                    "KEY",
                ]);
                for r in &recs {
                    t.row(vec![
                        r.serial.clone(),
                        r.kind.name().to_string(),
                        subject(&r.names),
                        output::list(&sans(&r.names)),
                        output::date(r.not_after),
                        r.status().name().to_string(),
                        if r.from_csr {
                            "csr".to_string()
                        } else if r.key_held {
                            "held".to_string()
                        } else {
                            "caller".to_string()
                        },
                    ]);
                }
                t.print();
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Inspect { files, offline } => inspect(g, &files, offline).await,
        CertCmd::Renew {
            serial,
            days,
            out,
            force,
        } => {
            let client = g.connect().await?;
            let old = client
                .list(None, None)
                .await?
                .into_iter()
                .find(|r| berth::pki::normalize_serial(&serial).is_ok_and(|s| s == r.serial))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no certificate with serial {serial}: `berth cert ls` shows them"
                    )
                })?;
            let (out, files) = outputs(old.kind, &old.names.common_name, out)?;
            if !force && let Some(existing) = files.iter().find(|f| f.exists()) {
                anyhow::bail!(
                    "{} already exists: pass --force to replace it, or choose another --out",
                    existing.display()
                );
            }
            let renewed = client.renew(&old.serial, days, out.is_some()).await?;
            let issued = renewed.issued;
            if let Some(dir) = &out {
                write_issued(dir, &files, &issued, force)?;
            }
            if g.json {
                output::json(&IssueJson {
                    certificate: &issued.record,
                    files,
                })?;
            } else {
                println!(
                    "renewed {} as {}, valid until {} (the old one stays valid until {})",
                    old.serial,
                    issued.record.serial,
                    output::date(issued.record.not_after),
                    output::date(old.not_after)
                );
                for f in &files {
                    println!("  wrote {}", f.display());
                }
                for d in &renewed.certs.updated {
                    println!("  updated {} to the new certificate", d.display());
                }
            }
            for p in &renewed.certs.problems {
                eprintln!("warning: certs.d entry still holds the old certificate: {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Revoke { serial } => {
            let client = g.connect().await?;
            let rec = client.revoke(&serial).await?;
            if g.json {
                output::json(&rec)?;
            } else {
                println!(
                    "revoked {} ({} {})",
                    rec.serial,
                    rec.kind.name(),
                    subject(&rec.names)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn issue(g: &Global, cmd: IssueCmd) -> anyhow::Result<ExitCode> {
    let (kind, names, common, out) = match cmd {
        IssueCmd::Server {
            dns,
            ip,
            name,
            common,
            out,
        } => {
            let cn = name
                .or_else(|| dns.first().cloned())
                .or_else(|| ip.first().map(IpAddr::to_string))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "a server certificate needs at least one --dns NAME or --ip ADDR"
                    )
                })?;
            let names = Names {
                common_name: cn,
                dns_names: dns,
                ip_addresses: ip,
                ..Names::default()
            };
            (CertKind::Server, names, common, out)
        }
        IssueCmd::Client {
            name,
            org,
            ou,
            uri,
            email,
            common,
            out,
        } => {
            let names = Names {
                common_name: name,
                organizations: org,
                organizational_units: ou,
                uris: uri,
                emails: email,
                ..Names::default()
            };
            (CertKind::Client, names, common, out)
        }
        IssueCmd::Admin { name, common, out } => {
            let names = Names {
                common_name: name,
                ..Names::default()
            };
            (CertKind::Admin, names, common, out)
        }
    };
    let (out, files) = outputs(kind, &names.common_name, out)?;
    // Refuse before issuing, so a refused write does not leave an unused certificate.
    if !common.force
        && let Some(existing) = files.iter().find(|f| f.exists())
    {
        anyhow::bail!(
            "{} already exists: pass --force to replace it, or choose another --out",
            existing.display()
        );
    }
    let client = g.connect().await?;
    let issued = client
        .issue(IssueRequest {
            kind,
            names,
            validity_days: common.days,
            key_algorithm: common.key_type,
            return_key: out.is_some(),
        })
        .await?;
    if let Some(dir) = &out {
        write_issued(dir, &files, &issued, common.force)?;
    }
    let rec = &issued.record;
    if g.json {
        output::json(&IssueJson {
            certificate: rec,
            files,
        })?;
    } else {
        println!(
            "issued {} certificate {} for {} ({}), valid until {}",
            kind.name(),
            rec.serial,
            subject(&rec.names),
            output::list(&sans(&rec.names)),
            output::date(rec.not_after)
        );
        for f in &files {
            println!("  wrote {}", f.display());
        }
        match kind {
            CertKind::Client => println!(
                "berthd keeps this client's key: `berth certs install HOST:PORT --client {}` installs it for docker",
                rec.names.common_name
            ),
            CertKind::Admin => {
                if let Some(dir) = &out {
                    println!(
                        "use it with: berth --host tcp://HOST:PORT --tls-dir {} system info (the daemon needs --listen tcp://ADDR:PORT)",
                        dir.display()
                    );
                }
            }
            CertKind::Server | CertKind::Replica => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where an issued or renewed certificate goes: server and admin keys are not kept by
/// berthd, so they always go to a folder (`./<name>` by default); a client's only with
/// --out. Client files use certs.d names, the others docker's --tlsverify names.
fn outputs(
    kind: CertKind,
    name: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<(Option<PathBuf>, Vec<PathBuf>)> {
    let out = match (kind, out) {
        (_, Some(o)) => Some(o),
        (CertKind::Client, None) => None,
        (_, None) => Some(default_out(name)?),
    };
    let files = match (kind, &out) {
        (_, None) => Vec::new(),
        (CertKind::Client, Some(dir)) => vec![
            dir.join("ca.crt"),
            dir.join("client.cert"),
            dir.join("client.key"),
        ],
        (_, Some(dir)) => vec![
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        ],
    };
    Ok((out, files))
}

/// `./<name>`, with anything that cannot be in a file name replaced.
fn default_out(name: &str) -> anyhow::Result<PathBuf> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        anyhow::bail!("cannot derive an output folder from the name {name:?}: pass --out DIR");
    }
    Ok(PathBuf::from(safe))
}

/// Writes CA, certificate and key: certificate files 0644, the key 0600, the key last so a
/// key never exists without its certificate.
fn write_issued(
    dir: &Path,
    files: &[PathBuf],
    issued: &IssuedCert,
    force: bool,
) -> anyhow::Result<()> {
    let key = issued.key.as_ref().ok_or_else(|| {
        anyhow::anyhow!("berthd did not return the private key; nothing was written")
    })?;
    let [ca, cert, key_path] = files else {
        anyhow::bail!("internal: expected three output files");
    };
    output::out_dir(dir)?;
    output::write_file(ca, issued.ca_pem.as_bytes(), 0o644, force)?;
    output::write_file(cert, issued.record.certificate_pem.as_bytes(), 0o644, force)?;
    output::write_file(key_path, key.secret_pem().as_bytes(), 0o600, force)?;
    Ok(())
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read stdin")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

#[derive(Serialize)]
struct InspectJson<'a> {
    file: String,
    certificates: &'a [CertDetails],
}

async fn inspect(g: &Global, files: &[PathBuf], offline: bool) -> anyhow::Result<ExitCode> {
    let client: Option<Client> = if offline {
        None
    } else {
        match g.connect().await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!(
                    "note: {e}\nnote: decoding locally; whether these chain to the berth CA is unknown"
                );
                None
            }
        }
    };
    let mut all = Vec::new();
    for f in files {
        let data = read_input(f)?;
        let details = match &client {
            Some(c) => c
                .inspect(data)
                .await
                .with_context(|| format!("cannot inspect {}", f.display()))?,
            None => berth::client::inspect_offline(&data)
                .with_context(|| format!("cannot inspect {}", f.display()))?,
        };
        all.push((f.display().to_string(), details));
    }
    if g.json {
        let v: Vec<InspectJson> = all
            .iter()
            .map(|(f, d)| InspectJson {
                file: f.clone(),
                certificates: d,
            })
            .collect();
        output::json(&v)?;
    } else {
        for (file, details) in &all {
            for (i, d) in details.iter().enumerate() {
                println!("{file} [{i}]");
                print_details(d);
                println!();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one decoded certificate as aligned fields.
pub fn print_details(d: &CertDetails) {
    let rows = [
        ("subject", d.subject.clone()),
        ("issuer", d.issuer.clone()),
        ("serial", d.serial.clone()),
        ("SANs", output::list(&sans(&d.names))),
        ("not before", output::date(d.not_before)),
        (
            "not after",
            format!(
                "{} ({})",
                output::date(d.not_after),
                output::relative(d.not_after)
            ),
        ),
        ("status", d.status.name().to_string()),
        ("CA", if d.is_ca { "yes" } else { "no" }.to_string()),
        ("key", d.key_algorithm.clone()),
        ("signature", d.signature_algorithm.clone()),
        ("key usage", output::list(&d.key_usages)),
        ("ext key usage", output::list(&d.extended_key_usages)),
        ("SHA-256", d.fingerprint_sha256.clone()),
        (
            "berth CA",
            if d.chains_to_berth_ca { "yes" } else { "no" }.to_string(),
        ),
        (
            "self-signed",
            if d.self_signed { "yes" } else { "no" }.to_string(),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<14} {v}");
    }
}

/// "CN=ci-bot,O=builders".
pub fn subject(n: &Names) -> String {
    let mut parts = vec![format!("CN={}", n.common_name)];
    parts.extend(n.organizations.iter().map(|o| format!("O={o}")));
    parts.extend(n.organizational_units.iter().map(|o| format!("OU={o}")));
    parts.join(",")
}

/// Every SAN with its type, like openssl prints them.
pub fn sans(n: &Names) -> Vec<String> {
    let mut v: Vec<String> = n.dns_names.iter().map(|d| format!("DNS:{d}")).collect();
    v.extend(n.ip_addresses.iter().map(|i| format!("IP:{i}")));
    v.extend(n.uris.iter().map(|u| format!("URI:{u}")));
    v.extend(n.emails.iter().map(|e| format!("email:{e}")));
    v
}
