//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

fn cert(cn: &str, o: &[&str], uris: &[&str]) -> CertIdentity {
    CertIdentity {
        subject: format!("CN={cn}"),
        common_name: cn.into(),
        organizations: o.iter().map(|s| s.to_string()).collect(),
        organizational_units: vec![],
        dns_names: vec![],
        ip_addresses: vec![],
        uris: uris.iter().map(|s| s.to_string()).collect(),
        emails: vec![],
        serial: "ab12".into(),
        not_after: time::OffsetDateTime::now_utc(),
        issuer: "CN=berth CA".into(),
    }
}

const FILE: &str = r#"
version = 1
[defaults]
allow = ["pull"]

[groups]
builders = [{ o = "builders" }, { uri_prefix = "spiffe://example.org/ns/ci/" }]

[[rules]]
name = "builders push team-a"
effect = "allow"
subjects = [{ group = "builders" }]
actions = ["push", "delete"]
repositories = ["team-a/**"]

[[rules]]
name = "nobody touches team-a/secret"
effect = "deny"
subjects = [{ cn_prefix = "" }]
actions = ["pull", "push", "delete", "list"]
repositories = ["team-a/secret"]

[[rules]]
name = "caches"
effect = "allow"
subjects = [{ cn = "cache-bot", o = "infra" }]
actions = ["push"]
repositories = ["*/cache"]
"#;

#[test]
fn patterns() {
    assert!(pattern_matches("team-a/**", "team-a/app"));
    assert!(pattern_matches("team-a/**", "team-a/x/y"));
    assert!(!pattern_matches("team-a/**", "team-a"));
    assert!(!pattern_matches("team-a/**", "team-ab/app"));
    assert!(pattern_matches("*/cache", "x/cache"));
    assert!(!pattern_matches("*/cache", "x/y/cache"));
    assert!(pattern_matches("library/*", "library/alpine"));
    assert!(!pattern_matches("library/*", "library/a/b"));
    assert!(pattern_matches("**", "anything/at/all"));
    assert!(pattern_matches("app-*", "app-1"));
    assert!(pattern_matches("**/cache", "a/b/cache"));
    assert!(!pattern_matches("**/cache", "cache"));
}

#[test]
fn rules_groups_deny_and_defaults() {
    let p = Policy::parse(FILE, Path::new("p.toml")).unwrap();
    let builder = cert("ci-bot", &["builders"], &[]);
    let spiffe = cert("x", &[], &["spiffe://example.org/ns/ci/runner-7"]);
    let stranger = cert("someone", &[], &["spiffe://example.org/ns/prod/x"]);
    let d = p.decide_cert(&builder, Action::Push, "team-a/app");
    assert_eq!((d.allowed, d.rule.as_str()), (true, "builders push team-a"));
    assert!(p.decide_cert(&spiffe, Action::Delete, "team-a/x/y").allowed);
    // Nothing matches: the defaults (pull only, here).
    let d = p.decide_cert(&stranger, Action::Push, "team-a/app");
    assert_eq!((d.allowed, d.rule.as_str()), (false, "default"));
    assert!(p.decide_cert(&stranger, Action::Pull, "team-a/app").allowed);
    // Deny wins over allow.
    let d = p.decide_cert(&builder, Action::Push, "team-a/secret");
    assert_eq!(
        (d.allowed, d.rule.as_str()),
        (false, "nobody touches team-a/secret")
    );
    // Every field of a matcher must match.
    assert!(
        p.decide_cert(&cert("cache-bot", &["infra"], &[]), Action::Push, "x/cache")
            .allowed
    );
    assert!(
        !p.decide_cert(&cert("cache-bot", &["other"], &[]), Action::Push, "x/cache")
            .allowed
    );
}

#[test]
fn built_in_defaults_let_clients_pull_push_list_but_not_delete() {
    let p = Policy::default();
    let c = cert("any", &[], &[]);
    for a in [Action::Pull, Action::Push, Action::List] {
        assert!(p.decide_cert(&c, a, "x/y").allowed, "{a:?}");
    }
    assert!(!p.decide_cert(&c, Action::Delete, "x/y").allowed);
    assert!(p.decide(&Identity::Daemon, Action::Delete, "x").allowed);
    assert!(!p.decide(&Identity::Anonymous, Action::Pull, "x").allowed);
}

#[test]
fn bad_files_say_what_is_wrong() {
    let e = Policy::parse("version = 1\n[[rules]]\nname = \"r\"\neffect = \"allow\"\nsubjects = [{ cm = \"x\" }]\nactions = [\"pull\"]\nrepositories = [\"**\"]\n", Path::new("p.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("p.toml") && e.contains("cm") && e.contains("line 5"),
        "{e}"
    );
    let e = Policy::parse("version = 2\n", Path::new("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("version"), "{e}");
    let e = Policy::parse("version = 1\n[[rules]]\nname = \"r\"\neffect = \"allow\"\nsubjects = [{ group = \"nope\" }]\nactions = [\"pull\"]\nrepositories = [\"**\"]\n", Path::new("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown group"), "{e}");
    let e = Policy::parse("version = 1\n[[rules]]\nname = \"r\"\neffect = \"allow\"\nsubjects = [{}]\nactions = [\"pull\"]\nrepositories = [\"**\"]\n", Path::new("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches everyone"), "{e}");
    let e = Policy::parse("version = 1\n[[rules]]\nname = \"r\"\neffect = \"allow\"\nsubjects = [{ cn = \"x\" }]\nactions = [\"pul\"]\nrepositories = [\"**\"]\n", Path::new("p"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pul"), "{e}");
}
