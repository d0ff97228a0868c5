//! The `berth` and `berthd` binaries as a user runs them: the issue's walk-through, errors
//! and hints, and authorisation of another uid on the socket (the CLI is spawned as that uid).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestDaemon, fixture, openssl_verify};
use serde_json::Value;

const NOBODY: u32 = 65534;

fn berth(socket: &Path, cwd: &Path, args: &[&str]) -> Output {
    common::run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_SOCKET", socket)
            .env_remove("BERTH_HOST")
            .current_dir(cwd)
            .stdin(Stdio::null()),
    )
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stderr).is_empty());
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_walkthrough_works_through_the_cli() {
    let d = TestDaemon::start();
    let cwd = common::temp_dir();
    let w = cwd.path();
    let run = |args: &[&str]| berth(&d.socket, w, args);

    let info = ok(&run(&["system", "info"]));
    assert!(info.contains(&d.socket.display().to_string()), "{info}");
    assert!(info.contains("CA fingerprint"), "{info}");
    let info = json(&run(&["system", "info", "--json"]));
    assert_eq!(info["state_dir"], d.config.state_dir.display().to_string());
    let fp = info["ca_fingerprint_sha256"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 95, "{fp}");
    assert_eq!(ok(&run(&["system", "health"])).trim(), "serving");
    assert!(ok(&run(&["system", "version"])).contains(env!("CARGO_PKG_VERSION")));

    let ca = ok(&run(&["ca", "show"]));
    assert!(
        ca.contains("-----BEGIN CERTIFICATE-----") && ca.contains(&fp),
        "{ca}"
    );
    let ca_pem = ok(&run(&["ca", "show", "--pem"]));
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));

    // Server: written to ./<name> by default, key 0600; a second run refuses to overwrite.
    let out = ok(&run(&[
        "cert",
        "issue",
        "server",
        "--dns",
        "registry.example.internal",
        "--ip",
        "10.0.0.5",
    ]));
    assert!(out.contains("registry.example.internal"), "{out}");
    let sdir = w.join("registry.example.internal");
    assert_eq!(mode(&sdir.join("key.pem")), 0o600);
    assert_eq!(mode(&sdir.join("cert.pem")), 0o644);
    openssl_verify(&sdir.join("ca.pem"), &sdir.join("cert.pem"));
    let text = common::openssl_text(&sdir.join("cert.pem"));
    assert!(
        text.contains("IP Address:10.0.0.5") && text.contains("TLS Web Server Authentication"),
        "{text}"
    );
    let key_before = std::fs::read(sdir.join("key.pem")).unwrap();
    let err = failed(&run(&[
        "cert",
        "issue",
        "server",
        "--dns",
        "registry.example.internal",
    ]));
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(sdir.join("key.pem")).unwrap(),
        key_before,
        "the key survives a refused overwrite"
    );

    // Client in certs.d naming, admin in docker --tlsverify naming.
    ok(&run(&[
        "cert", "issue", "client", "--name", "ci-bot", "--org", "builders", "--out", "./ci-bot",
    ]));
    let cdir = w.join("ci-bot");
    assert_eq!(mode(&cdir.join("client.key")), 0o600);
    openssl_verify(&cdir.join("ca.crt"), &cdir.join("client.cert"));
    assert!(common::openssl_text(&cdir.join("client.cert")).contains("O = builders"));
    ok(&run(&[
        "cert", "issue", "admin", "--name", "ops", "--out", "./ops",
    ]));
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(w.join("ops").join(f).exists(), "{f}");
    }

    // CSR signing: the key never leaves this folder.
    let o = common::run(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-subj",
                "/CN=csr-bot",
                "-keyout",
                "req.key",
                "-out",
                "req.pem",
            ])
            .current_dir(w),
    );
    assert!(o.status.success());
    ok(&run(&[
        "cert",
        "sign",
        "--csr",
        "req.pem",
        "--profile",
        "client",
        "--out",
        "signed.pem",
    ]));
    openssl_verify(&cdir.join("ca.crt"), &w.join("signed.pem"));

    let ls = json(&run(&["cert", "ls", "--json"]));
    let ls = ls.as_array().unwrap();
    assert_eq!(ls.len(), 4, "{ls:?}");
    let kinds: Vec<&str> = ls.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["server", "client", "admin", "client"]);
    let table = ok(&run(&["cert", "ls"]));
    for h in ["SERIAL", "KIND", "SUBJECT", "SANS", "NOT AFTER", "STATUS"] {
        assert!(table.contains(h), "{table}");
    }
    assert!(
        table.contains("DNS:registry.example.internal,IP:10.0.0.5"),
        "{table}"
    );

    // Inspect: a certificate berth did not make, and one it did.
    let foreign = ok(&run(&[
        "cert",
        "inspect",
        fixture("rsa-leaf.der").to_str().unwrap(),
    ]));
    assert!(
        foreign.contains("CN=fixture.example") && foreign.contains("RSA 2048"),
        "{foreign}"
    );
    assert!(foreign.contains("berth CA       no"), "{foreign}");
    let mine = json(&run(&["cert", "inspect", "--json", "signed.pem"]));
    assert_eq!(mine[0]["certificates"][0]["chains_to_berth_ca"], true);
    let expired = json(&run(&[
        "cert",
        "inspect",
        "--json",
        fixture("expired.crt").to_str().unwrap(),
    ]));
    assert_eq!(expired[0]["certificates"][0]["status"], "expired");

    // Renew the admin certificate into a new folder.
    let admin_serial = ls[2]["serial"].as_str().unwrap().to_string();
    let out = ok(&run(&["cert", "renew", &admin_serial, "--out", "./ops2"]));
    assert!(
        out.contains("renewed") && out.contains("stays valid"),
        "{out}"
    );
    openssl_verify(&w.join("ops2/ca.pem"), &w.join("ops2/cert.pem"));
    assert_eq!(mode(&w.join("ops2/key.pem")), 0o600);
    let err = failed(&run(&["cert", "renew", &admin_serial, "--out", "./ops2"]));
    assert!(err.contains("already exists"), "{err}");
    let ls = json(&run(&["cert", "ls", "--json"]));
    let ls = ls.as_array().unwrap();

    // Revoke by the serial `cert ls` shows.
    let serial = ls[3]["serial"].as_str().unwrap();
    ok(&run(&["cert", "revoke", serial]));
    let ls = json(&run(&["cert", "ls", "--json", "--kind", "client"]));
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|r| r["revoked_at"].is_string()),
        "{ls}"
    );
    assert!(ok(&run(&["cert", "ls"])).contains("revoked"));

    // certs.d: dry run, install, list, verify, remove.
    let host = "registry.example.internal:5443";
    let plan = ok(&run(&[
        "certs",
        "install",
        host,
        "--client",
        "ci-bot",
        "--containers",
        "--dry-run",
    ]));
    assert!(
        plan.contains("would create") && plan.contains("client.key"),
        "{plan}"
    );
    assert!(!d.docker_root().join(host).exists());
    ok(&run(&[
        "certs",
        "install",
        host,
        "--client",
        "ci-bot",
        "--containers",
    ]));
    for root in [d.docker_root(), d.containers_root()] {
        assert_eq!(mode(&root.join(host).join("client.key")), 0o600);
        assert_eq!(mode(&root.join(host).join("ca.crt")), 0o644);
    }
    // The installed pair is the ci-bot certificate issued earlier, not a new one.
    assert_eq!(
        std::fs::read(d.docker_root().join(host).join("client.cert")).unwrap(),
        std::fs::read(cdir.join("client.cert")).unwrap()
    );
    let entries = json(&run(&["certs", "ls", "--json"]));
    assert_eq!(entries.as_array().unwrap().len(), 2, "{entries}");
    let table = ok(&run(&["certs", "ls"]));
    assert!(
        table.contains(host) && table.contains("CN=ci-bot"),
        "{table}"
    );
    ok(&run(&["certs", "verify", host]));
    std::fs::write(d.docker_root().join(host).join("stray.key"), "x").unwrap();
    let out = run(&["certs", "verify", host]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stray.key"));
    std::fs::remove_file(d.docker_root().join(host).join("stray.key")).unwrap();
    ok(&run(&["certs", "remove", host, "--containers"]));
    assert!(!d.docker_root().join(host).exists());
    assert!(!d.containers_root().join(host).exists());

    // A loopback registry: the files are written (podman and skopeo use them), but berth
    // says plainly that docker will not, and verify does not call it set up for docker.
    let out = run(&[
        "certs",
        "install",
        "localhost:5443",
        "--client",
        "ci-bot",
        "--containers",
    ]);
    let (stdout, stderr) = (ok(&out), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(stdout.contains("not docker"), "{stdout}");
    assert!(
        stderr.contains("warning: docker will not use these files for localhost:5443")
            && stderr.contains("non-loopback address"),
        "{stderr}"
    );
    let out = run(&["certs", "verify", "localhost:5443"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("insecure") && !text.contains("ok:"), "{text}");
    ok(&run(&["certs", "remove", "localhost:5443", "--containers"]));

    let comp = ok(&run(&["completions", "bash"]));
    assert!(
        comp.contains("berth") && comp.contains("certs"),
        "{}",
        &comp[..200.min(comp.len())]
    );
}

#[test]
fn errors_say_what_to_do() {
    let d = TestDaemon::start();
    let cwd = common::temp_dir();
    let run = |args: &[&str]| berth(&d.socket, cwd.path(), args);

    let err = failed(&run(&[
        "certs",
        "install",
        "https://registry.example.internal/v2",
    ]));
    assert!(err.contains("host[:port]"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    let err = failed(&run(&["cert", "issue", "client", "--name", ""]));
    assert!(err.contains("--name"), "{err}");
    let err = failed(&run(&["cert", "issue", "server", "--dns", "bad name"]));
    assert!(err.contains("bad name"), "{err}");
    let err = failed(&run(&["cert", "issue", "server"]));
    assert!(err.contains("--dns"), "{err}");
    std::fs::write(cwd.path().join("junk.pem"), "junk").unwrap();
    let err = failed(&run(&[
        "cert",
        "sign",
        "--csr",
        "junk.pem",
        "--profile",
        "client",
    ]));
    assert!(err.contains("CSR"), "{err}");
    let err = failed(&run(&["cert", "revoke", "00ff"]));
    assert!(
        err.contains("00ff") && err.contains("berth cert ls"),
        "{err}"
    );
    let err = failed(&run(&["cert", "inspect", "junk.pem"]));
    assert!(err.contains("junk.pem"), "{err}");
    assert!(
        cwd.path().read_dir().unwrap().count() == 1,
        "nothing but junk.pem was written"
    );

    // Nobody home: the message names the socket and says how to start berthd.
    let gone = cwd.path().join("no-such.sock");
    let err = failed(&berth(&gone, cwd.path(), &["system", "info"]));
    assert!(
        err.contains(&format!(
            "cannot reach berthd at {}: is it running? start it with `berthd`",
            gone.display()
        )),
        "{err}"
    );
    // Inspect still works without a daemon, and says so.
    let out = berth(
        &gone,
        cwd.path(),
        &["cert", "inspect", fixture("chain.pem").to_str().unwrap()],
    );
    let text = ok(&out);
    assert!(
        text.contains("[1]") && text.contains("Fixture Intermediate"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("decoding locally"));
    let err = failed(&common::run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["--host", "tcp://127.0.0.1:1", "--tls-dir"])
            .arg(cwd.path().join("none"))
            .args(["system", "info"]),
    ));
    assert!(
        err.contains("ca.pem") && err.contains("berth cert issue admin"),
        "{err}"
    );
}

/// The CLI binary where another uid can execute it.
fn binary_for_others(dir: &Path) -> PathBuf {
    let bin = dir.join("berth");
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn as_nobody(bin: &Path, socket: &Path, cwd: &Path, gid: u32) -> Output {
    nobody(bin, socket, cwd, gid, &["system", "info", "--json"])
}

#[test]
fn other_users_are_refused_unless_in_the_control_group() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test spawns the CLI as uid {NOBODY} and must run as root (CI does)");
    }
    let cwd = common::temp_dir();
    let bin = binary_for_others(cwd.path());

    // A world-writable socket, so the daemon's own check is what refuses.
    let d = TestDaemon::start_with(|cfg| {
        cfg.control.socket = cfg.state_dir.parent().unwrap().join("run/berthd.sock");
        cfg.control.socket_mode = 0o666;
    });
    let out = as_nobody(&bin, &d.socket, cwd.path(), NOBODY);
    let err = failed(&out);
    assert!(
        err.contains("permission denied") && err.contains(&format!("uid {NOBODY}")),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    drop(d);

    // The default 0660 socket: the kernel refuses, and the CLI says why.
    let d = TestDaemon::start_with(|cfg| {
        cfg.control.socket = cfg.state_dir.parent().unwrap().join("run/berthd.sock");
    });
    assert_eq!(mode(&d.socket), 0o660);
    let err = failed(&as_nobody(&bin, &d.socket, cwd.path(), NOBODY));
    assert!(
        err.contains("permission denied on") && err.contains("control.group"),
        "{err}"
    );
    drop(d);

    // Members of the configured group get in: the socket is chowned to it.
    let d = TestDaemon::start_with(|cfg| {
        cfg.control.socket = cfg.state_dir.parent().unwrap().join("run/berthd.sock");
        cfg.control.group = Some(NOBODY.to_string());
    });
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&d.socket).unwrap().gid(), NOBODY);
    let out = as_nobody(&bin, &d.socket, cwd.path(), NOBODY);
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(
        v["caller"]
            .as_str()
            .unwrap()
            .contains(&format!("uid {NOBODY}")),
        "{v}"
    );
}

/// The CLI run as uid nobody with primary group `gid` (std drops root's supplementary
/// groups when it sets the uid).
fn nobody(bin: &Path, socket: &Path, cwd: &Path, gid: u32, args: &[&str]) -> Output {
    common::run(
        Command::new(bin)
            .args(args)
            .env("BERTH_SOCKET", socket)
            .env_remove("BERTH_HOST")
            .env("HOME", cwd)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .uid(NOBODY)
            .gid(gid),
    )
}

/// The socket group's configurable role: a viewer (another uid) may read, is refused a
/// change with the role it needs, asks the daemon's live policy, and finds its denial in
/// `berth audit`, recorded with its uid.
#[test]
fn the_socket_group_gets_its_configured_role_and_denials_are_audited() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test spawns the CLI as uid {NOBODY} and must run as root (CI does)");
    }
    let cwd = common::temp_dir();
    std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = binary_for_others(cwd.path());
    let pol = cwd.path().join("policy.toml");
    std::fs::write(
        &pol,
        "version = 1\n[[rules]]\nname = \"builders delete\"\neffect = \"allow\"\nsubjects = [{ o = \"builders\" }]\nactions = [\"delete\"]\nrepositories = [\"team-a/**\"]\n",
    )
    .unwrap();
    let p = pol.clone();
    let d = TestDaemon::start_with(move |cfg| {
        cfg.control.socket = cfg.state_dir.parent().unwrap().join("run/berthd.sock");
        cfg.control.group = Some(NOBODY.to_string());
        cfg.control.group_role = berth::config::Role::Viewer;
        cfg.registry.policy = Some(p);
    });
    let run = |args: &[&str]| nobody(&bin, &d.socket, cwd.path(), NOBODY, args);
    ok(&run(&["cert", "ls"]));
    let err = failed(&run(&["cert", "issue", "client", "--name", "sneaky"]));
    assert!(
        err.contains("permission denied")
            && err.contains("role viewer (group 65534)")
            && err.contains("needs the issuer role"),
        "{err}"
    );
    let err = failed(&run(&["registry", "gc"]));
    assert!(err.contains("needs the admin role"), "{err}");
    let err = failed(&run(&["registry", "fsck", "--repair"]));
    assert!(err.contains("needs the admin role"), "{err}");
    // fsck without --repair only reads.
    ok(&run(&["registry", "fsck"]));
    // The live policy check: the daemon's loaded file decides.
    let out = run(&[
        "policy",
        "check",
        "--subject",
        "CN=ci,O=builders",
        "delete",
        "team-a/app",
    ]);
    let text = ok(&out);
    assert!(
        text.starts_with("allowed")
            && text.contains("builders delete")
            && text.contains("policy.toml"),
        "{text}"
    );
    let out = run(&[
        "policy",
        "check",
        "--subject",
        "CN=x",
        "delete",
        "team-a/app",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"default\""));
    // The viewer may read the audit log: its own denials are there, with its uid.
    let out = run(&["audit", "--json", "--denied", "--action", "control"]);
    let lines: Vec<Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["actor"]["uid"] == NOBODY && l["decision"] == "deny")
    );
    assert!(
        lines[0]["target"]["name"]
            .as_str()
            .unwrap()
            .contains("IssueCertificate"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l["request_id"].as_str().unwrap_or_default().is_empty())
    );
    // root is an admin, and sees the same in a table.
    let table = ok(&berth(
        &d.socket,
        cwd.path(),
        &["audit", "--actor", "65534"],
    ));
    assert!(
        table.contains("control.call") && table.contains("DENY"),
        "{table}"
    );
    // Nothing the viewer tried happened.
    assert!(!ok(&berth(&d.socket, cwd.path(), &["cert", "ls"])).contains("sneaky"));
}

/// A berthd process that is killed if the test ends (or panics) without stopping it.
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// berthd as a process with its state in `dir/root` and certs.d trees in `dir`, quiet.
fn berthd_in(dir: &Path, extra: &[&str]) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--certs-d")
        .arg(dir.join("docker"))
        .arg("--containers-certs-d")
        .arg(dir.join("containers"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

/// Stops berthd with SIGTERM; it must exit cleanly.
fn sigterm(mut daemon: impl std::ops::DerefMut<Target = std::process::Child>) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
}

/// A free loopback port for a berthd process's registry.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for a condition with a deadline instead of sleeping a fixed time.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// berthd restarts itself in place with a glibc malloc arena per core (the arenas decide
/// its peak memory) unless the environment already chooses; it keeps its pid and name.
/// Started through a symlink of another name, or through the dynamic loader (which would
/// take berthd's flags for its own), it runs on as it is.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[test]
fn berthd_runs_with_an_arena_per_core_unless_the_environment_chooses() {
    let cores = std::thread::available_parallelism()
        .unwrap()
        .get()
        .max(2)
        .to_string();
    let links = common::temp_dir();
    let link = links.path().join("registry-daemon");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_berthd"), &link).unwrap();
    #[cfg(target_arch = "x86_64")]
    let loader = "/lib64/ld-linux-x86-64.so.2";
    #[cfg(target_arch = "aarch64")]
    let loader = "/lib/ld-linux-aarch64.so.1";
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_berthd"));
    // How berthd is run, MALLOC_ARENA_MAX given and then seen, and the process's name.
    type Case<'a> = (Vec<&'a std::ffi::OsStr>, Option<&'a str>, Option<&'a str>);
    let cases: [(Case, Option<&str>); 4] = [
        ((vec![exe.as_os_str()], None, Some(&cores)), Some("berthd")),
        (
            (vec![exe.as_os_str()], Some("7"), Some("7")),
            Some("berthd"),
        ),
        (
            (vec![link.as_os_str()], None, None),
            Some("registry-daemon"),
        ),
        (
            (
                vec![std::ffi::OsStr::new(loader), exe.as_os_str()],
                None,
                None,
            ),
            None,
        ),
    ];
    for ((run, given, want), name) in cases {
        let dir = common::temp_dir();
        let mut cmd = Command::new(run[0]);
        cmd.args(&run[1..])
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--certs-d")
            .arg(dir.path().join("docker"))
            .arg("--containers-certs-d")
            .arg(dir.path().join("containers"))
            .arg("--no-registry")
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("GLIBC_TUNABLES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(v) = given {
            cmd.env("MALLOC_ARENA_MAX", v);
        }
        let daemon = Running(cmd.spawn().unwrap());
        let socket = dir.path().join("root/berthd.sock");
        wait_for(&format!("berthd run as {run:?} to serve"), || {
            berth(&socket, dir.path(), &["system", "health"])
                .status
                .success()
        });
        let pid = daemon.id();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let set: Vec<String> = environ
            .split(|b| *b == 0)
            .filter(|v| v.starts_with(b"MALLOC_ARENA_MAX="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let want: Vec<String> = want
            .iter()
            .map(|w| format!("MALLOC_ARENA_MAX={w}"))
            .collect();
        assert_eq!(set, want, "run as {run:?}, given {given:?}");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        if let Some(name) = name {
            assert_eq!(comm.trim(), name, "run as {run:?}");
        }
        sigterm(daemon);
    }
}

#[test]
fn berthd_starts_with_flags_refuses_a_second_copy_and_stops_on_sigterm() {
    let dir = common::temp_dir();
    let root = dir.path().join("root");
    let berthd = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("--root")
            .arg(&root)
            .arg("--certs-d")
            .arg(dir.path().join("docker"))
            .arg("--containers-certs-d")
            .arg(dir.path().join("containers"))
            .args(["--registry-listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = berthd(&["--registry-name", "registry.example.internal"]);
    let socket = root.join("berthd.sock");
    wait_for("berthd to serve", || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    });
    let info = json(&berth(&socket, dir.path(), &["system", "info", "--json"]));
    assert_eq!(
        info["docker_certs_root"],
        dir.path().join("docker").display().to_string()
    );
    assert_eq!(mode(&root.join("pki/ca.key")), 0o600);
    assert_eq!(mode(&socket), 0o660);
    // --registry-name reaches the registry's certificate.
    let status = json(&berth(
        &socket,
        dir.path(),
        &["registry", "status", "--json"],
    ));
    let sans = status["certificate_sans"].to_string();
    assert!(sans.contains("DNS:registry.example.internal"), "{sans}");

    let second = berthd(&[]).wait_with_output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another berthd") && err.contains(&first.id().to_string()),
        "{err}"
    );

    assert!(
        common::run(Command::new("kill").args(["-TERM", &first.id().to_string()]))
            .status
            .success()
    );
    let status = first.wait().unwrap();
    assert!(status.success(), "berthd exits 0 on SIGTERM: {status:?}");
    assert!(!socket.exists(), "the socket is removed on shutdown");

    // A config file with an unknown key: refused, the key named.
    let cfg = dir.path().join("berthd.toml");
    std::fs::write(&cfg, "version = 1\n[pki]\nca_validty_days = 10\n").unwrap();
    let out = berthd(&["--config", cfg.to_str().unwrap()])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca_validty_days"), "{err}");

    // An invalid policy file: berthd refuses to start and names the file, line and key.
    let pol = dir.path().join("policy.toml");
    std::fs::write(&pol, "version = 1\n[defaults]\nalow = [\"pull\"]\n").unwrap();
    std::fs::write(
        &cfg,
        format!("version = 1\n[registry]\npolicy = \"{}\"\n", pol.display()),
    )
    .unwrap();
    let out = berthd(&["--config", cfg.to_str().unwrap()])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.toml") && err.contains("alow") && err.contains("line 3"),
        "{err}"
    );
    // A valid one is read at start and again on SIGHUP; a broken edit keeps the running one.
    std::fs::write(&pol, "version = 1\n[defaults]\nallow = [\"pull\"]\n").unwrap();
    let mut third = berthd(&["--config", cfg.to_str().unwrap()]);
    wait_for("berthd to serve with a policy", || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    });
    let hup = |pid: u32| {
        assert!(
            common::run(Command::new("kill").args(["-HUP", &pid.to_string()]))
                .status
                .success()
        )
    };
    let mut log = std::io::BufReader::new(third.stderr.take().unwrap());
    let mut wait_line = |needle: &str| {
        use std::io::BufRead;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                log.read_line(&mut line).unwrap() > 0,
                "berthd's log ended before {needle:?}"
            );
            if line.contains(needle) {
                return line.clone();
            }
        }
    };
    wait_line("registry policy in force");
    hup(third.id());
    wait_line("policy reloaded on SIGHUP");
    std::fs::write(&pol, "version = 1\n[defaults]\nallow = [\"pul\"]\n").unwrap();
    hup(third.id());
    let refused = wait_line("policy reload refused");
    assert!(refused.contains("pul"), "{refused}");
    let _ = common::run(Command::new("kill").args(["-TERM", &third.id().to_string()]));
    assert!(third.wait().unwrap().success());

    // A file where the state folder should be.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("--root")
        .arg(blocked.join("sub"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocked/sub"), "{err}");
}

/// Pushes bytes as a blob over the registry's mutual TLS, as a client would.
async fn push_blob(
    addr: std::net::SocketAddr,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    repo: &str,
    data: &[u8],
) -> String {
    let d = berth::registry::Digest::sha256_of(data).to_string();
    let (s, body) = common::tls_request(
        addr,
        tls.clone(),
        axum::http::Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        data.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 201, "{}", String::from_utf8_lossy(&body));
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_operations_through_the_cli() {
    use std::io::{BufRead, Write};
    let d = TestDaemon::with_registry();
    let addr = d.registry[0];
    let cwd = common::temp_dir();
    let sock = d.socket.clone();
    let dir = cwd.path().to_path_buf();
    let run = move |args: &[&str]| berth(&sock, &dir, args);
    let c = d.client().await;
    let me = c
        .issue(berth::client::IssueRequest {
            kind: berth::pki::CertKind::Client,
            names: berth::pki::Names {
                common_name: "cli-pusher".into(),
                ..Default::default()
            },
            validity_days: None,
            key_algorithm: berth::pki::KeyAlgorithm::EcdsaP256,
            return_key: true,
        })
        .await
        .unwrap();
    let tls = common::client_config(
        &me.ca_pem,
        Some((
            &me.record.certificate_pem,
            me.key.as_ref().unwrap().secret_pem(),
        )),
        b"http/1.1",
    );

    // A live event stream, read line by line.
    let mut events = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["events", "--json"])
        .env("BERTH_SOCKET", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    // Subscribed once a probe push shows up (a condition, not a sleep).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        push_blob(addr, &tls, "probe", b"probe").await;
        if lines.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "berth events never reported anything"
        );
    }
    while lines.try_recv().is_ok() {}

    // An image: gzip layer + config + manifest, pushed over mTLS.
    let raw = b"uncompressed layer content ".repeat(2000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let layer = gz.finish().unwrap();
    let diff_id = berth::registry::Digest::sha256_of(&raw).to_string();
    let config = serde_json::to_vec(&serde_json::json!({"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [diff_id]}})).unwrap();
    let cd = push_blob(addr, &tls, "team/app", &config).await;
    let ld = push_blob(addr, &tls, "team/app", &layer).await;
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}]}))
    .unwrap();
    let (s, _) = common::tls_request(
        addr,
        tls.clone(),
        axum::http::Method::PUT,
        "/v2/team/app/manifests/1.0",
        manifest.clone(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 201);
    let md = berth::registry::Digest::sha256_of(&manifest).to_string();

    let mut got = Vec::new();
    while got.len() < 3 {
        let l = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("events for the push");
        got.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    assert_eq!(got[2]["action"], "push");
    assert_eq!(got[2]["target"], "manifest");
    assert_eq!(got[2]["repository"], "team/app");
    assert_eq!(got[2]["tag"], "1.0");
    assert_eq!(got[2]["digest"], md);
    assert!(
        got[2]["actor"]
            .as_str()
            .unwrap()
            .starts_with("cli-pusher (serial "),
        "{}",
        got[2]
    );

    let status = json(&run(&["registry", "status", "--json"]));
    assert_eq!(status["listeners"][0], addr.to_string());
    assert_eq!(status["blobs"], 4, "{status}");
    assert!(ok(&run(&["registry", "status"])).contains("DNS:localhost"));
    let repos = json(&run(&["registry", "repos", "--json"]));
    let app = repos
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "team/app")
        .unwrap()
        .clone();
    assert_eq!(
        (app["tags"].as_u64(), app["manifests"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(ok(&run(&["registry", "repos"])).contains("team/app"));
    assert_eq!(ok(&run(&["registry", "tags", "team/app"])).trim(), "1.0");

    let inspect = json(&run(&["image", "inspect", "team/app:1.0", "--json"]));
    assert_eq!(inspect["digest"], md);
    assert_eq!(inspect["config_digest"], cd);
    assert_eq!(inspect["layers"][0]["diff_id"], diff_id);
    assert_eq!(inspect["layers"][0]["chain_id"], diff_id);
    assert_eq!(inspect["layers"][0]["compression"], "gzip");
    assert_eq!(inspect["layers"][0]["diff_id_matches"], true);
    let table = ok(&run(&["image", "inspect", &format!("team/app@{md}")]));
    assert!(
        table.contains("matches") && table.contains(&diff_id),
        "{table}"
    );
    let err = failed(&run(&["image", "inspect", "team/app:nope"]));
    assert!(err.contains("nope"), "{err}");

    // Uploads: one left open.
    let (s, _) = common::tls_request(
        addr,
        tls.clone(),
        axum::http::Method::POST,
        "/v2/team/app/blobs/uploads/",
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202);
    let list = json(&run(&["registry", "uploads", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        json(&run(&[
            "registry",
            "uploads",
            "--purge",
            "--older-than",
            "1h",
            "--json"
        ]))
        .as_array()
        .unwrap()
        .len(),
        0
    );
    assert!(ok(&run(&["registry", "uploads", "--purge", "--dry-run"])).contains("would purge 1"));
    assert_eq!(
        json(&run(&["registry", "uploads", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(ok(&run(&["registry", "uploads", "--purge"])).contains("purged 1"));
    assert!(
        json(&run(&["registry", "uploads", "--json"]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(failed(&run(&["registry", "uploads", "--dry-run"])).contains("--purge"));

    ok(&run(&["registry", "fsck"]));

    // Untag, then collect with no grace: the image and its blobs go.
    assert!(ok(&run(&["image", "rm", "team/app:1.0"])).contains("untagged"));
    let dry = json(&run(&[
        "registry",
        "gc",
        "--dry-run",
        "--delete-untagged",
        "--grace",
        "0s",
        "--json",
    ]));
    assert_eq!(dry["manifests_deleted"].as_array().unwrap().len(), 1);
    assert_eq!(
        json(&run(&["registry", "status", "--json"]))["blobs"],
        4,
        "a dry run deletes nothing"
    );
    let done = ok(&run(&[
        "registry",
        "gc",
        "--delete-untagged",
        "--grace",
        "0s",
    ]));
    assert!(done.contains("deleted 4 blobs and 1 manifests"), "{done}");
    assert_eq!(json(&run(&["registry", "status", "--json"]))["blobs"], 0);
    // A default-grace collection right after a push keeps the fresh content.
    push_blob(addr, &tls, "team/app", b"fresh").await;
    let kept = json(&run(&["registry", "gc", "--json"]));
    assert_eq!(
        (
            kept["blobs_deleted"].as_array().unwrap().len(),
            kept["blobs_young"].as_u64()
        ),
        (0, Some(1))
    );

    // fsck finds a blob corrupted on disk, and says so with a non-zero exit.
    let fresh = berth::registry::Digest::sha256_of(b"fresh");
    let path = common::blob_path(&d.config.registry_root(), &fresh);
    std::fs::write(&path, b"FRESH").unwrap();
    let out = run(&["registry", "fsck"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("corrupt-blob"));

    let err = failed(&run(&["image", "rm", "Bad/Name:1"]));
    assert!(err.contains("invalid repository name"), "{err}");
    let _ = events.kill();
    let _ = events.wait();
}

/// The systemd units in contrib/systemd are accepted by `systemd-analyze verify` without a
/// single warning (unknown keys are only warnings there, so stderr must be empty), with
/// ExecStart pointing at the binaries this build made.
#[test]
fn systemd_units_verify() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let dir = common::temp_dir();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/local/bin/berthd", env!("CARGO_BIN_EXE_berthd"))
            .replace(
                "/usr/local/bin/berth ",
                &format!("{} ", env!("CARGO_BIN_EXE_berth")),
            );
        let to = dir.path().join(p.file_name().unwrap());
        std::fs::write(&to, text).unwrap();
        units.push(to);
    }
    units.sort();
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "berth-agent.service",
            "berth-renew.service",
            "berth-renew.timer",
            "berthd.service"
        ]
    );
    let out = common::run(Command::new("systemd-analyze").arg("verify").args(&units));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// `berth policy check` explains a decision offline: allowed or denied, and by which rule.
#[test]
fn policy_check_explains_decisions() {
    let dir = common::temp_dir();
    let pol = dir.path().join("p.toml");
    std::fs::write(
        &pol,
        "version = 1\n[groups]\nci = [{ uri_prefix = \"spiffe://example.org/ns/ci/\" }]\n[[rules]]\nname = \"builders push team-a\"\neffect = \"allow\"\nsubjects = [{ o = \"builders\" }, { group = \"ci\" }]\nactions = [\"push\"]\nrepositories = [\"team-a/**\"]\n",
    )
    .unwrap();
    let check = |args: &[&str]| {
        common::run(
            Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["policy", "check", "--file"])
                .arg(&pol)
                .args(args),
        )
    };
    let out = check(&["--subject", "CN=ci-bot,O=builders", "push", "team-a/app"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.starts_with("allowed")
            && text.contains("builders push team-a"),
        "{text}"
    );
    let out = check(&[
        "--subject",
        "CN=x",
        "--san",
        "URI:spiffe://example.org/ns/ci/r1",
        "push",
        "team-a/app",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = check(&["--subject", "CN=x", "delete", "team-a/app"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.starts_with("denied") && text.contains("\"default\""),
        "{text}"
    );
    let out = check(&["--subject", "CN=x", "pusj", "team-a/app"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pull, push, delete or list"));
}

/// `kill -9` mid-burst: every mutation berthd acknowledged is in the audit log, every
/// complete line is one JSON record, and after a restart the log holds no torn line.
#[test]
fn audit_records_survive_kill_9_mid_burst() {
    let dir = common::temp_dir();
    let root = dir.path().join("root");
    let spawn = || berthd_in(dir.path(), &["--no-registry"]);
    let socket = root.join("berthd.sock");
    let healthy = || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    };
    let acked = acknowledged_before_kill_9(dir.path(), 200, |c, i, n| async move {
        c.token_create(&format!("burst-{i}-{n}"), None, None)
            .await
            .ok()
            .map(|t| t.record.id)
    });
    let log = root.join("audit/audit.log");
    let recorded = |text: &str| -> Vec<serde_json::Value> {
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = recorded(&text);
    let ids: std::collections::HashSet<String> = lines
        .iter()
        .filter(|l| l["action"] == "token.create")
        .filter_map(|l| l["target"]["serial"].as_str())
        .map(|s| s.trim_start_matches("token ").to_string())
        .collect();
    for id in &acked {
        assert!(
            ids.contains(id),
            "token {id} was acknowledged but not audited"
        );
    }
    // The restart cuts off a record the kill may have torn; then every line is whole.
    let daemon = spawn();
    wait_for("berthd to serve again", healthy);
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(after.is_empty() || after.ends_with('\n'));
    assert!(recorded(&after).len() >= acked.len());
    assert!(after.starts_with(&text[..text.rfind('\n').map_or(0, |i| i + 1)]));
    assert_eq!(mode(&log), 0o600);
    sigterm(daemon);
}

/// Every file and folder berthd writes, under umask 000: content 0644, folders 0755 (never
/// group- or world-writable), keys and the audit log 0600.
#[tokio::test(flavor = "multi_thread")]
async fn modes_are_explicit_under_umask_000() {
    let dir = common::temp_dir();
    let root = dir.path().join("root");
    let port = free_port();
    let daemon = Running(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec '{}' --root '{}' --certs-d '{}' --containers-certs-d '{}' --registry-listen 127.0.0.1:{port}",
            env!("CARGO_BIN_EXE_berthd"),
            root.display(),
            dir.path().join("docker").display(),
            dir.path().join("containers").display(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let socket = root.join("berthd.sock");
    wait_for("berthd to serve", || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    });
    let c = berth::client::Client::connect(&berth::client::Target::Unix(socket.clone()))
        .await
        .unwrap();
    let me = common::client_cert(&c, "umask").await;
    let tls = common::presenting(&me, b"http/1.1");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    push_blob(addr, &tls, "team/app", b"monolithic").await;
    // A chunked upload left open, and one finished.
    for finish in [false, true] {
        let (s, _) = common::tls_request(
            addr,
            tls.clone(),
            axum::http::Method::POST,
            "/v2/team/app/blobs/uploads/",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(s.as_u16(), 202);
        if finish {
            push_blob(addr, &tls, "team/app", b"second").await;
        }
    }
    ok(&berth(
        &socket,
        dir.path(),
        &[
            "certs",
            "install",
            "registry.example.internal:5443",
            "--client",
            "umask",
            "--containers",
        ],
    ));
    let mut bad = Vec::new();
    let mut walk = vec![
        root.clone(),
        dir.path().join("docker"),
        dir.path().join("containers"),
    ];
    while let Some(p) = walk.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.permissions().mode() & 0o777;
        if m.is_dir() {
            walk.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            if mode & 0o022 != 0 {
                bad.push(format!("{} {mode:o}", p.display()));
            }
        } else if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) {
            continue;
        } else {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let secret = name.ends_with(".key")
                || name.contains("audit.log")
                || p.to_string_lossy().contains("/keys/");
            if mode & 0o022 != 0 || (secret && mode & 0o077 != 0) {
                bad.push(format!("{} {mode:o}", p.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "modes left to the umask:\n{}",
        bad.join("\n")
    );
    sigterm(daemon);
}

/// Lifetimes and SAN counts out of range are refused with the allowed range, the daemon
/// stays up, long SAN lists stay readable in `cert ls`, and a closed pipe ends the CLI
/// quietly with the SIGPIPE status instead of a panic.
#[test]
fn limits_are_enforced_and_output_survives_a_closed_pipe() {
    let d = TestDaemon::start();
    let cwd = common::temp_dir();
    let run = |args: &[&str]| berth(&d.socket, cwd.path(), args);
    for days in ["0", "100000000"] {
        let err = failed(&run(&[
            "cert", "issue", "client", "--name", "x", "--days", days,
        ]));
        assert!(err.contains("1..=36500"), "{days}: {err}");
    }
    let err = failed(&run(&["cert", "issue", "server", "--dns", ""]));
    assert!(err.contains("a value is required for '--dns"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(d.client());
    let req = |names: berth::pki::Names, days| berth::client::IssueRequest {
        kind: berth::pki::CertKind::Server,
        names,
        validity_days: days,
        key_algorithm: berth::pki::KeyAlgorithm::EcdsaP256,
        return_key: true,
    };
    let many = |n: usize| berth::pki::Names {
        dns_names: (0..n).map(|i| format!("h{i}.example.internal")).collect(),
        ..Default::default()
    };
    // The API checks too: a daemon task never panics on a date past year 9999.
    let e = rt
        .block_on(c.issue(req(many(1), Some(100_000_000))))
        .unwrap_err();
    assert!(e.to_string().contains("1 to 36500 days"), "{e}");
    let e = rt.block_on(c.issue(req(many(101), None))).unwrap_err();
    assert!(e.to_string().contains("at most 100"), "{e}");
    // A CSR with too many names is refused the same way.
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(
        (0..150)
            .map(|i| format!("c{i}.example.internal"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let e = rt
        .block_on(c.sign_csr(csr.into_bytes(), berth::pki::CertKind::Server, None))
        .unwrap_err();
    assert!(e.to_string().contains("at most 100"), "{e}");
    assert!(rt.block_on(c.health()).unwrap());
    // The most allowed is issued and listed readably.
    rt.block_on(c.issue(req(many(100), None))).unwrap();
    let table = ok(&run(&["cert", "ls"]));
    assert!(table.contains("(+92 more)"), "{table}");
    // A closed pipe.
    for args in [&["completions", "zsh"][..], &["cert", "ls"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_SOCKET", &d.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(141),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A full disk (a 4 MiB tmpfs as the registry root, in a mount namespace of berthd's
/// own): a push that does not fit gets 507 and an OCI error saying the storage is full,
/// its upload's data is purged, pulls go on, and a push that fits works afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_pushes_clearly_and_keeps_serving_pulls() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test mounts a tmpfs in a mount namespace and must run as root (CI does)");
    }
    let dir = common::temp_dir();
    let (root, store) = (dir.path().join("root"), dir.path().join("store"));
    std::fs::create_dir_all(&store).unwrap();
    let port = free_port();
    let daemon = Running(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=4m tmpfs '{}' && exec '{}' --root '{}' --certs-d '{}' --containers-certs-d '{}' --registry-root '{}' --registry-listen 127.0.0.1:{port}",
            store.display(),
            env!("CARGO_BIN_EXE_berthd"),
            root.display(),
            dir.path().join("docker").display(),
            dir.path().join("containers").display(),
            store.display(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let socket = root.join("berthd.sock");
    wait_for("berthd to serve", || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    });
    let c = berth::client::Client::connect(&berth::client::Target::Unix(socket.clone()))
        .await
        .unwrap();
    let me = common::client_cert(&c, "filler").await;
    let tls = common::presenting(&me, b"http/1.1");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let small = push_blob(addr, &tls, "team/app", &[7u8; 100_000]).await;
    let big = vec![9u8; 6 * 1024 * 1024];
    let full = |s: axum::http::StatusCode, body: &[u8]| {
        assert_eq!(s.as_u16(), 507, "{}", String::from_utf8_lossy(body));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNKNOWN");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("storage is full"),
            "{v}"
        );
    };
    // Monolithic.
    let d = berth::registry::Digest::sha256_of(&big);
    let (s, body) = common::tls_request(
        addr,
        tls.clone(),
        axum::http::Method::POST,
        &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        big.clone(),
    )
    .await
    .unwrap();
    full(s, &body);
    // Chunked: the session's data is purged.
    let (s, _) = common::tls_request(
        addr,
        tls.clone(),
        axum::http::Method::POST,
        "/v2/team/app/blobs/uploads/",
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 202);
    let id = c.registry_uploads(false, None, false).await.unwrap()[0]
        .id
        .clone();
    let (s, body) = common::tls_request(
        addr,
        tls.clone(),
        axum::http::Method::PATCH,
        &format!("/v2/team/app/blobs/uploads/{id}"),
        big,
    )
    .await
    .unwrap();
    full(s, &body);
    assert!(
        c.registry_uploads(false, None, false)
            .await
            .unwrap()
            .is_empty()
    );
    // Pulls go on, and what fits is stored.
    let (s, body) = common::tls_get(addr, tls.clone(), &format!("/v2/team/app/blobs/{small}"))
        .await
        .unwrap();
    assert_eq!((s.as_u16(), body.len()), (200, 100_000));
    push_blob(addr, &tls, "team/app", &[8u8; 100_000]).await;
    sigterm(daemon);
}

/// One acknowledged push: repository, tag, manifest digest, and its blobs.
type Pushed = (String, String, String, Vec<(String, Vec<u8>)>);

/// Pushes `data` as a blob to `repo` by one of the three upload styles; true on 201.
async fn crash_push_blob(
    addr: std::net::SocketAddr,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    repo: &str,
    data: &[u8],
    style: usize,
) -> bool {
    use axum::http::Method;
    let d = berth::registry::Digest::sha256_of(data).to_string();
    let x = |m, path: String, h: Vec<(&'static str, String)>, body: Vec<u8>| {
        let tls = tls.clone();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            common::tls_exchange(addr, tls, m, &path, &h, body)
                .await
                .ok()
        }
    };
    if style == 0 {
        let r = x(
            Method::POST,
            format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            vec![],
            data.to_vec(),
        )
        .await;
        return r.is_some_and(|r| r.0.as_u16() == 201);
    }
    let Some((s, h, _)) = x(
        Method::POST,
        format!("/v2/{repo}/blobs/uploads/"),
        vec![],
        vec![],
    )
    .await
    else {
        return false;
    };
    let Some(loc) = h
        .get("location")
        .and_then(|l| l.to_str().ok())
        .filter(|_| s.as_u16() == 202)
    else {
        return false;
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    if style == 1 {
        let r = x(
            Method::PUT,
            format!("{loc}{sep}digest={d}"),
            vec![],
            data.to_vec(),
        )
        .await;
        return r.is_some_and(|r| r.0.as_u16() == 201);
    }
    let mid = data.len() / 2;
    let mut loc = loc.to_string();
    for (a, part) in [(0, &data[..mid]), (mid, &data[mid..])] {
        let range = format!("{a}-{}", a + part.len() - 1);
        let Some((s, h, _)) = x(
            Method::PATCH,
            loc.clone(),
            vec![("content-range", range)],
            part.to_vec(),
        )
        .await
        else {
            return false;
        };
        if s.as_u16() != 202 {
            return false;
        }
        if let Some(l) = h.get("location").and_then(|l| l.to_str().ok()) {
            loc = l.to_string();
        }
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = x(Method::PUT, format!("{loc}{sep}digest={d}"), vec![], vec![]).await;
    r.is_some_and(|r| r.0.as_u16() == 201)
}

/// The crash test: concurrent pushes (monolithic, POST+PUT and chunked uploads, then a
/// manifest by tag) with berthd killed by SIGKILL three times; after each restart every
/// acknowledged blob and manifest is served intact, and after `fsck --repair` the store
/// is clean: no tag points at anything missing and no temp file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_pushes_survive_kill_9() {
    let dir = common::temp_dir();
    crash_test(&dir, &[]).await;
}

/// The crash test with the content in an S3 bucket (moto): an object the store
/// acknowledged is whole, and one it did not is absent, so nothing is left to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_pushes_to_s3_survive_kill_9() {
    let dir = common::temp_dir();
    let moto = common::moto::shared();
    let bucket = common::moto::unique_bucket();
    moto.create_bucket(&bucket);
    let config = dir.path().join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\n[registry.s3]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath_style = true\ncredentials_file = \"{}\"\n",
            moto.url(),
            moto.credentials_file(dir.path()).display()
        ),
    )
    .unwrap();
    let problems = crash_test(&dir, &["--config", config.to_str().unwrap()]).await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// Runs the crash test on a berthd started with `extra` flags; returns what the first
/// `fsck --repair` found.
async fn crash_test(dir: &tempfile::TempDir, extra: &[&str]) -> Vec<berth::registry::FsckProblem> {
    let root = dir.path().join("root");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--registry-listen", &listen];
    args.extend_from_slice(extra);
    let spawn = || berthd_in(dir.path(), &args);
    let socket = root.join("berthd.sock");
    let healthy = || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = spawn();
    wait_for("berthd to serve", healthy);
    let c = berth::client::Client::connect(&berth::client::Target::Unix(socket.clone()))
        .await
        .unwrap();
    let me = common::client_cert(&c, "crasher").await;
    drop(c);
    let tls = common::presenting(&me, b"http/1.1");
    let journal = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Pushed>::new()));
    let check = |journal: &[Pushed]| {
        let (tls, journal) = (tls.clone(), journal.to_vec());
        async move {
            for (repo, tag, digest, blobs) in &journal {
                for (d, data) in blobs {
                    let (s, body) =
                        common::tls_get(addr, tls.clone(), &format!("/v2/{repo}/blobs/{d}"))
                            .await
                            .unwrap();
                    assert!(
                        s.as_u16() == 200 && body == *data,
                        "blob {d} of {repo}: {s}"
                    );
                }
                let (s, h, _) = common::tls_exchange(
                    addr,
                    tls.clone(),
                    axum::http::Method::GET,
                    &format!("/v2/{repo}/manifests/{tag}"),
                    &[("accept", "application/vnd.oci.image.manifest.v1+json")],
                    vec![],
                )
                .await
                .unwrap();
                assert_eq!(s.as_u16(), 200, "{repo}:{tag}");
                assert_eq!(h["docker-content-digest"], digest.as_str(), "{repo}:{tag}");
            }
        }
    };
    for round in 0..3 {
        let before = journal.lock().unwrap().len();
        let mut workers = Vec::new();
        for w in 0..6usize {
            let (tls, journal) = (tls.clone(), journal.clone());
            workers.push(tokio::spawn(async move {
                for n in 0usize.. {
                    let repo = format!("crash/w{w}");
                    let layer = format!("layer {round} {w} {n} ").repeat(100 + n % 5 * 2000).into_bytes();
                    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":\"{round}-{w}-{n}\"}}").into_bytes();
                    let mut blobs = Vec::new();
                    for (i, data) in [layer, config].into_iter().enumerate() {
                        if !crash_push_blob(addr, &tls, &repo, &data, (n + i + w) % 3).await {
                            return;
                        }
                        blobs.push((berth::registry::Digest::sha256_of(&data).to_string(), data));
                    }
                    let m = serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[1].0, "size": blobs[1].1.len()},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[0].0, "size": blobs[0].1.len()}],
                    });
                    let body = serde_json::to_vec(&m).unwrap();
                    let tag = format!("r{round}-{n}");
                    let Ok((s, h, _)) = common::tls_exchange(addr, tls.clone(), axum::http::Method::PUT, &format!("/v2/{repo}/manifests/{tag}"), &[("content-type", "application/vnd.oci.image.manifest.v1+json")], body).await else {
                        return;
                    };
                    if s.as_u16() != 201 {
                        return;
                    }
                    let digest = h["docker-content-digest"].to_str().unwrap().to_string();
                    journal.lock().unwrap().push((repo, tag, digest, blobs));
                }
            }));
        }
        // Kill while every worker is mid-push, once this round has acknowledged some.
        wait_for("acknowledged pushes", || {
            journal.lock().unwrap().len() >= before + 12
        });
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        for wk in workers {
            wk.await.unwrap();
        }
        daemon = spawn();
        wait_for("berthd to serve again", healthy);
        let j = journal.lock().unwrap().clone();
        check(&j).await;
    }
    // fsck: after --repair (temp files of cut-short writes), clean.
    let c = berth::client::Client::connect(&berth::client::Target::Unix(socket.clone()))
        .await
        .unwrap();
    let repaired = c.registry_fsck(true).await.unwrap();
    for p in &repaired.problems {
        assert_eq!(p.kind, "temp-leftover", "{p:?}");
    }
    let r = c.registry_fsck(false).await.unwrap();
    assert!(
        r.problems
            .iter()
            .all(|p| p.kind == "temp-leftover" && p.detail.contains("s old")),
        "{:?}",
        r.problems
    );
    let j = journal.lock().unwrap().clone();
    check(&j).await;
    sigterm(daemon);
    repaired.problems
}

/// Starts berthd (no registry) in `dir`, lets 8 writers call `write(client, writer, n)`
/// until at least `min` writes are acknowledged (`Some(id)`), kills berthd with SIGKILL
/// mid-burst and returns the ids acknowledged before it died.
fn acknowledged_before_kill_9<F, Fut>(dir: &Path, min: usize, write: F) -> Vec<String>
where
    F: Fn(berth::client::Client, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let socket = dir.join("root").join("berthd.sock");
    let mut daemon = berthd_in(dir, &["--no-registry"]);
    wait_for("berthd to serve", || {
        berth(&socket, dir, &["system", "health"]).status.success()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (acked, socket, write) = (acked.clone(), socket.clone(), write.clone());
            rt.spawn(async move {
                let c = berth::client::Client::connect(&berth::client::Target::Unix(socket))
                    .await
                    .unwrap();
                for n in 0.. {
                    match write(c.clone(), i, n).await {
                        Some(id) => acked.lock().unwrap().push(id),
                        None => return,
                    }
                }
            })
        })
        .collect();
    wait_for("a burst of acknowledged writes", || {
        acked.lock().unwrap().len() >= min
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    acked.lock().unwrap().clone()
}

/// berthd in `dir` with its registry on a free loopback port, once it serves: the process,
/// a control client and the registry's address.
async fn serving_registry(
    dir: &std::path::Path,
) -> (Running, berth::client::Client, std::net::SocketAddr) {
    let port = free_port();
    let daemon = berthd_in(dir, &["--registry-listen", &format!("127.0.0.1:{port}")]);
    let socket = dir.join("root").join("berthd.sock");
    wait_for("berthd to serve", || {
        berth(&socket, dir, &["system", "health"]).status.success()
    });
    let c = berth::client::Client::connect(&berth::client::Target::Unix(socket))
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    (daemon, c, addr)
}

/// A `/proc/PID/status` figure in kB (`VmRSS:`, `VmHWM:`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A 100 MB manifest is refused (413, or the connection closed once the limit is
/// passed) without berthd's memory growing by anything like it, and berthd keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_manifest_does_not_grow_memory() {
    let dir = common::temp_dir();
    let (daemon, c, addr) = serving_registry(dir.path()).await;
    let rss = || proc_kb(daemon.id(), "VmRSS:");
    let me = common::client_cert(&c, "huge").await;
    let tls = common::presenting(&me, b"http/1.1");
    let before = rss();
    let body = vec![b' '; 100 * 1024 * 1024];
    match common::tls_exchange(
        addr,
        tls.clone(),
        axum::http::Method::PUT,
        "/v2/team/app/manifests/huge",
        &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
        body,
    )
    .await
    {
        Ok((s, _, _)) => assert_eq!(s.as_u16(), 413),
        Err(e) => assert!(!e.is_empty()),
    }
    let after = rss();
    assert!(
        after < before + 32 * 1024,
        "berthd's RSS went from {before} kB to {after} kB"
    );
    assert!(c.health().await.unwrap());
    let (s, _) = common::tls_get(addr, tls, "/v2/").await.unwrap();
    assert_eq!(s.as_u16(), 200);
    sigterm(daemon);
}

/// Pushing and then pulling a 192 MiB blob raises berthd's peak memory (VmHWM) by a few
/// MiB at most: uploads stream through two fixed buffers and downloads through a short
/// queue, so no request's memory grows with the blob.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_blob_streams_through_fixed_memory() {
    let dir = common::temp_dir();
    let (daemon, c, addr) = serving_registry(dir.path()).await;
    let peak = || proc_kb(daemon.id(), "VmHWM:");
    let me = common::client_cert(&c, "large").await;
    let tls = common::presenting(&me, b"http/1.1");
    // Warm up the paths once with a small blob, so the figure is the large blob's alone.
    let small = vec![1u8; 64 * 1024];
    common::push_blob(addr, tls.clone(), "team/app", &small).await;
    let before = peak();
    let mut blob = vec![0u8; 192 * 1024 * 1024];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in blob.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let d = common::push_blob(addr, tls.clone(), "team/app", &blob).await;
    let after_push = peak();
    let (s, _, body) = common::tls_exchange(
        addr,
        tls.clone(),
        axum::http::Method::GET,
        &format!("/v2/team/app/blobs/{d}"),
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 200);
    assert!(body == blob, "the pulled blob differs from the pushed one");
    let after_pull = peak();
    assert!(
        after_push < before + 16 * 1024 && after_pull < before + 16 * 1024,
        "berthd's peak memory went from {before} kB to {after_push} kB (push) and {after_pull} kB (pull) for a 192 MiB blob"
    );
    sigterm(daemon);
}

/// A read-only state folder (a read-only bind mount in berthd's own mount namespace):
/// berthd refuses to start, naming the folder and why, and writes nothing.
#[test]
fn a_read_only_state_dir_is_refused_by_name() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test bind-mounts in a mount namespace and must run as root (CI does)");
    }
    let dir = common::temp_dir();
    let root = dir.path().join("root");
    // A state folder from an earlier run.
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind '{0}' '{0}' && mount -o remount,ro,bind '{0}' && exec '{1}' --root '{0}' --certs-d '{2}' --containers-certs-d '{3}' --no-registry",
            root.display(),
            env!("CARGO_BIN_EXE_berthd"),
            dir.path().join("docker").display(),
            dir.path().join("containers").display(),
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&root.display().to_string()) && err.to_lowercase().contains("read-only"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "berthd wrote into a read-only state folder"
    );
}

/// `kill -9` while 8 callers issue client certificates: after a restart every
/// acknowledged certificate is in the index (journal replayed), with its held key, and
/// the journal was folded into the snapshot.
#[test]
fn issued_certificates_survive_kill_9_mid_burst() {
    let dir = common::temp_dir();
    let root = dir.path().join("root");
    let spawn = || berthd_in(dir.path(), &["--no-registry"]);
    let socket = root.join("berthd.sock");
    let healthy = || {
        berth(&socket, dir.path(), &["system", "health"])
            .status
            .success()
    };
    let acked = acknowledged_before_kill_9(dir.path(), 100, |c, i, n| async move {
        let req = berth::client::IssueRequest {
            kind: berth::pki::CertKind::Client,
            names: common::names(&format!("burst-{i}-{n}")),
            validity_days: None,
            key_algorithm: berth::pki::KeyAlgorithm::EcdsaP256,
            return_key: false,
        };
        c.issue(req).await.ok().map(|r| r.record.serial)
    });
    let daemon = spawn();
    wait_for("berthd to serve again", healthy);
    let ls = json(&berth(&socket, dir.path(), &["cert", "ls", "--json"]));
    let listed: std::collections::HashSet<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap().to_string())
        .collect();
    for s in &acked {
        assert!(
            listed.contains(s),
            "certificate {s} was acknowledged but is gone"
        );
        assert!(common::holds_key(&root, s), "the held key of {s} is gone");
    }
    // Folded at start: what is left are the changes since (the start's CRL number).
    let journal = std::fs::read_to_string(root.join("pki/index.log")).unwrap();
    assert!(
        journal.lines().count() < 5,
        "the journal was not folded at start:\n{journal}"
    );
    sigterm(daemon);
}

/// `berth replica status` on a replica's socket: the primary's socket rules apply (root,
/// and control.group; another uid outside it is refused), and the answer says whom the
/// replica hears and until when it serves.
#[tokio::test(flavor = "multi_thread")]
async fn replica_status_follows_the_socket_rules() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test runs the CLI as uid {NOBODY} and must run as root (CI does)");
    }
    let cwd = common::temp_dir();
    let bin = binary_for_others(cwd.path());
    let shared = cwd.path().join("shared");
    let s = shared.clone();
    let primary = TestDaemon::start_with(move |cfg| {
        cfg.control.listen = vec!["tcp://127.0.0.1:0".parse().unwrap()];
        cfg.registry.root = Some(s);
    });
    let c = primary.client().await;
    let token = c
        .token_create("registry", None, Some(&["localhost".to_string()]))
        .await
        .unwrap()
        .secret;
    let mut cfg = common::config(&cwd.path().join("replica"));
    cfg.registry.enabled = true;
    cfg.registry.root = Some(shared);
    cfg.control.socket = cwd.path().join("run/replica.sock");
    cfg.control.group = Some(NOBODY.to_string());
    // Anyone may connect, so the replica's own check is what refuses outsiders.
    cfg.control.socket_mode = 0o666;
    cfg.replica = Some(berth::config::ReplicaConfig {
        primary: format!("127.0.0.1:{}", primary.tcp[0].port()),
        ca_fingerprint: c.info().await.unwrap().ca_fingerprint_sha256,
        token_file: None,
        crl_grace: std::time::Duration::from_secs(60),
    });
    let replica = common::TestReplica::start(cfg, &token).unwrap();
    let socket = replica.socket.clone();
    let out = ok(&common::run(
        Command::new(&bin)
            .args([
                "--socket",
                &socket.display().to_string(),
                "replica",
                "status",
            ])
            .stdin(Stdio::null()),
    ));
    assert!(
        out.contains("connected since") && out.contains("serving until"),
        "{out}"
    );
    let member = nobody(
        &bin,
        &socket,
        cwd.path(),
        NOBODY,
        &["replica", "status", "--json"],
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&member)).unwrap();
    assert_eq!(json["connected"], true, "{json}");
    let outsider = nobody(&bin, &socket, cwd.path(), 1, &["replica", "status"]);
    let err = failed(&outsider);
    assert!(err.contains("control.group may ask"), "{err}");
}

/// `berth agent` stops cleanly on SIGTERM even in the middle of its first pass, here while
/// the berthd it renews with accepts the connection and never answers: the signal handler
/// must be in place before that pass (it was installed only after it, and SIGTERM killed
/// the agent), and the stop must not wait for the server.
#[test]
fn the_agent_stops_on_sigterm_in_the_middle_of_a_renewal() {
    let dir = common::temp_dir();
    let state = dir.path().join("state");
    let docker = dir.path().join("docker");
    let registry = "registry.example:5000";
    let certs = docker.join(registry);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["host".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(certs.join("client.cert"), cert.pem()).unwrap();
    std::fs::write(certs.join("client.key"), key.serialize_pem()).unwrap();
    // A "berthd" that accepts and then says nothing, holding every connection.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let record = serde_json::json!([{
        "registry": registry,
        "server_host": "127.0.0.1",
        "server_port": port,
        "ca_fingerprint": format!("sha256:{}", "ab".repeat(32)),
        "serial": "01",
        "not_before": "2020-01-01T00:00:00Z",
        "not_after": "2020-04-01T00:00:00Z",
        "roots": {
            "docker_root": docker,
            "containers_root": dir.path().join("containers"),
            "containerd_root": dir.path().join("containerd"),
        },
        "containers": false,
        "containerd": false,
    }]);
    std::fs::write(
        state.join("enrolments.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let agent = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--state-dir"])
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The pass has begun once the agent is connected.
    let (held, _) = hung.accept().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = agent.wait_with_output().unwrap();
    drop(held);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    // Stopped, not run to its end: the hung renewal never failed by timing out.
    assert!(!stderr.contains("renewal failed"), "{stderr}");
    let kept: Value =
        serde_json::from_slice(&std::fs::read(state.join("enrolments.json")).unwrap()).unwrap();
    assert_eq!(kept[0]["serial"], "01", "nothing was renewed");
}
