//! Structure that must not drift: dependencies point inward (ARCHITECTURE.md), so the core
//! modules never name a transport or the layers above them; and the README's config example
//! stays a valid config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Core modules, as ARCHITECTURE.md lists them; entries not written yet are skipped.
const CORE: &[&str] = &[
    "src/pki",
    "src/certsd.rs",
    "src/fsutil.rs",
    "src/config.rs",
    "src/identity.rs",
    "src/events.rs",
    "src/registry",
    "src/audit",
    "src/metrics.rs",
    "src/doctor",
];

/// Crates and modules a core module must not name.
const FORBIDDEN: &[&str] = &[
    "tonic",
    "prost",
    "axum",
    "hyper",
    "tower",
    "http",
    "crate::proto",
    "crate::daemon",
    "crate::client",
    "crate::oci",
    "crate::net",
    "crate::web",
];

/// Edges: they may name transports, but reach the registry only through its door.
const EDGES: &[&str] = &[
    "src/oci",
    "src/daemon",
    "src/net",
    "src/client.rs",
    "src/client",
];

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

/// True when `line` names `name` as a path root (`name::`, `use name;`, `name {`).
fn names(line: &str, name: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    // Declaring a child module (`pub mod http;`) is how the edge hangs off its core.
    if code
        .trim_start()
        .trim_start_matches("pub ")
        .starts_with("mod ")
    {
        return false;
    }
    code.match_indices(name).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = &code[i + name.len()..];
        let starts = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
            || name.starts_with("crate::");
        starts && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" {"))
    })
}

#[test]
fn core_modules_do_not_name_transports_or_upper_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for c in CORE {
        let p = root.join(c);
        if p.exists() {
            rust_files(&p, &mut files);
        }
    }
    assert!(files.len() >= 5, "core modules not found: {files:?}");
    let mut leaks = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for name in FORBIDDEN {
                if names(line, name) {
                    leaks.push(format!(
                        "{}:{}: {}",
                        f.strip_prefix(root).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "core modules name outer layers:\n{}",
        leaks.join("\n")
    );
}

/// `config` composes settings but is read only by the daemon, the binaries and tests;
/// a core that reads it would close an import loop (config -> pki -> config).
#[test]
fn cores_do_not_read_the_config_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for c in CORE.iter().filter(|c| **c != "src/config.rs") {
        let p = root.join(c);
        if p.exists() {
            rust_files(&p, &mut files);
        }
    }
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .any(|l| names(l, "crate::config"))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "cores reading config: {offenders:?}");
}

/// No edge reaches registry storage: every operation goes through `Registry`, where policy
/// and audit live. (Storage is private to `registry`, so this mostly guards the text.)
#[test]
fn edges_reach_the_registry_only_through_its_door() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for e in EDGES {
        let p = root.join(e);
        if p.exists() {
            rust_files(&p, &mut files);
        }
    }
    assert!(files.len() >= 5, "edges not found: {files:?}");
    let mut bypass = Vec::new();
    for f in &files {
        for (n, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            if line.contains(".storage()") || line.contains("registry::storage") {
                bypass.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        bypass.is_empty(),
        "edges bypass the registry door:\n{}",
        bypass.join("\n")
    );
}

#[test]
fn the_checker_catches_what_it_should() {
    assert!(names("use tonic::Status;", "tonic"));
    assert!(names(
        "    let s = crate::daemon::State::new();",
        "crate::daemon"
    ));
    assert!(names("use http;", "http"));
    assert!(!names("// see https://example", "http"));
    assert!(!names("let httpish = 1; // tonic::x", "http"));
    assert!(!names("let x = my_http::y;", "http"));
    assert!(!names("pub mod http;", "http"));
    assert!(names("    http::Request::new(())", "http"));
}

#[test]
fn the_readme_config_example_parses() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    // The berthd config reference is the toml block that starts with `version = 1` (others
    // show files for other programs, e.g. containerd's hosts.toml).
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    let example = blocks
        .iter()
        .find(|b| b.starts_with("version = 1") && b.contains("[control]"))
        .expect("README has the berthd config reference");
    // The policy example is a valid policy too.
    let policy = blocks
        .iter()
        .find(|b| b.starts_with("version = 1") && b.contains("[[rules]]"))
        .expect("README has a policy example");
    berth::registry::policy::Policy::parse(policy, Path::new("README.md")).unwrap();
    let cfg = berth::config::Config::from_toml(example, Path::new("README.md")).unwrap();
    assert_eq!(cfg.control.socket_mode, 0o660);
    assert_eq!(cfg.control.listen.len(), 1);
    assert_eq!(cfg.pki.default_validity_days, 90);
    // Every [net] key is documented with its default.
    assert_eq!(cfg.net, berth::net::Settings::default());
    assert_eq!(
        cfg.certsd.containerd_root,
        Path::new("/etc/containerd/certs.d")
    );
}
