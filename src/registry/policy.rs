//! Who may do what in the registry: a policy file (TOML, `version = 1`, unknown keys
//! rejected) of rules that grant or deny `pull`, `push`, `delete` and `list` on repository
//! patterns to subjects matched on the verified client certificate. Decided in the door,
//! once, for every route. An explicit deny wins over an allow; when no rule matches, the
//! file's defaults decide (secure defaults: any berth client may pull, push and list;
//! delete needs a grant, as registry:2 ships with delete off).
//!
//! ```toml
//! version = 1
//! [defaults]
//! allow = ["pull", "push", "list"]
//!
//! [groups]
//! builders = [{ o = "builders" }, { uri_prefix = "spiffe://example.org/ns/ci/" }]
//!
//! [[rules]]
//! name = "builders own team-a"
//! effect = "allow"
//! subjects = [{ group = "builders" }]
//! actions = ["push", "pull", "delete"]
//! repositories = ["team-a/**"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity::{CertIdentity, Identity};

/// Why a policy file was refused (the running policy stays).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse, or names an unknown key (the message says line and key).
    #[error("invalid policy file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words: line, column, key.
        message: String,
    },
    /// The file parses but says something impossible.
    #[error("invalid policy file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What a request wants to do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, referrers.
    Pull,
    /// Upload blobs, put manifests, mount into it.
    Push,
    /// Delete manifests, tags, blobs.
    Delete,
    /// See it in the catalog and list its tags.
    List,
}

impl Action {
    /// The action's name in policy files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::List => "list",
        }
    }
}

/// One way to recognise a certificate; every field given must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// Subject CN, exactly.
    pub cn: Option<String>,
    /// Subject CN prefix.
    pub cn_prefix: Option<String>,
    /// One of the subject's O values.
    pub o: Option<String>,
    /// One of the subject's OU values.
    pub ou: Option<String>,
    /// Serial, lowercase hex.
    pub serial: Option<String>,
    /// A SAN DNS name.
    pub dns: Option<String>,
    /// A SAN DNS name prefix.
    pub dns_prefix: Option<String>,
    /// A SAN email.
    pub email: Option<String>,
    /// A SAN URI.
    pub uri: Option<String>,
    /// A SAN URI prefix (e.g. a SPIFFE trust domain and path).
    pub uri_prefix: Option<String>,
    /// A named group of matchers.
    pub group: Option<String>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Grant.
    Allow,
    /// Refuse; wins over any allow.
    Deny,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its name, shown in decisions.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Who it applies to (any of them).
    pub subjects: Vec<Matcher>,
    /// What it allows or denies.
    pub actions: Vec<Action>,
    /// Where: `team-a/**`, `*/cache`, `library/*`, `**`.
    pub repositories: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    allow: Vec<Action>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            allow: vec![Action::Pull, Action::Push, Action::List],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    groups: BTreeMap<String, Vec<Matcher>>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// A loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    defaults: Defaults,
    groups: BTreeMap<String, Vec<Matcher>>,
    rules: Vec<Rule>,
    /// Where it came from, for messages (`built-in` for the defaults).
    pub source: String,
    /// The text it was parsed from (empty for the defaults), which the primary sends to
    /// its registry replicas so they enforce exactly this policy.
    pub text: String,
}

impl Default for Policy {
    /// The secure defaults: every berth client may pull, push and list; nobody may delete.
    fn default() -> Self {
        Policy {
            defaults: Defaults::default(),
            groups: BTreeMap::new(),
            rules: Vec::new(),
            source: "built-in defaults".into(),
            text: String::new(),
        }
    }
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The rule that decided, or `default`.
    pub rule: String,
}

/// Whether `pattern` matches a repository name: `*` is any run of characters within one
/// path segment, `**` any number of whole segments (at least one).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    fn segs(p: &[&str], n: &[&str]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(&"**"), _) => (1..=n.len()).any(|k| segs(&p[1..], &n[k..])),
            (Some(ps), Some(ns)) => glob(ps, ns) && segs(&p[1..], &n[1..]),
            _ => false,
        }
    }
    fn glob(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, rest)) => {
                let Some(s) = s.strip_prefix(head) else {
                    return false;
                };
                (0..=s.len()).any(|i| s.is_char_boundary(i) && glob(rest, &s[i..]))
            }
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    segs(&p, &n)
}

fn field_matches(want: Option<&String>, have: &str) -> bool {
    want.is_none_or(|w| w == have)
}

impl Matcher {
    /// Whether `c` matches every field given; `in_group` says whether it matches a named
    /// group (the control API's roles have none: pass `|_| false`).
    pub fn matches_with(&self, c: &CertIdentity, in_group: &dyn Fn(&str) -> bool) -> bool {
        let m = self;
        let prefix = |p: Option<&String>, vals: &[String]| {
            p.is_none_or(|p| vals.iter().any(|v| v.starts_with(p.as_str())))
        };
        let any = |w: Option<&String>, vals: &[String]| w.is_none_or(|w| vals.contains(w));
        field_matches(m.cn.as_ref(), &c.common_name)
            && m.cn_prefix
                .as_ref()
                .is_none_or(|p| c.common_name.starts_with(p.as_str()))
            && any(m.o.as_ref(), &c.organizations)
            && any(m.ou.as_ref(), &c.organizational_units)
            && field_matches(m.serial.as_ref(), &c.serial)
            && any(m.dns.as_ref(), &c.dns_names)
            && prefix(m.dns_prefix.as_ref(), &c.dns_names)
            && any(m.email.as_ref(), &c.emails)
            && any(m.uri.as_ref(), &c.uris)
            && prefix(m.uri_prefix.as_ref(), &c.uris)
            && m.group.as_deref().is_none_or(in_group)
    }
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, path)
    }

    /// Parses policy text; `path` only names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, Error> {
        // One line: the message goes into logs and gRPC statuses.
        let f: File = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: e
                .to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != "|")
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if f.version != 1 {
            return Err(invalid(format!(
                "version = {}; this berthd reads version = 1",
                f.version
            )));
        }
        let check = |m: &Matcher, inside_group: bool| -> Result<(), Error> {
            if *m == Matcher::default() {
                return Err(invalid("an empty subject matcher {} matches everyone: say cn, o, ou, serial, dns, email, uri (or a _prefix) or group".into()));
            }
            if let Some(g) = &m.group {
                if inside_group {
                    return Err(invalid(format!(
                        "groups cannot contain groups (group {g:?})"
                    )));
                }
                if !f.groups.contains_key(g) {
                    return Err(invalid(format!("unknown group {g:?}")));
                }
            }
            Ok(())
        };
        for (name, ms) in &f.groups {
            if ms.is_empty() {
                return Err(invalid(format!("group {name:?} is empty")));
            }
            for m in ms {
                check(m, true)?;
            }
        }
        for r in &f.rules {
            if r.subjects.is_empty() || r.actions.is_empty() || r.repositories.is_empty() {
                return Err(invalid(format!(
                    "rule {:?} needs subjects, actions and repositories",
                    r.name
                )));
            }
            for m in &r.subjects {
                check(m, false)?;
            }
        }
        Ok(Policy {
            defaults: f.defaults,
            groups: f.groups,
            rules: f.rules,
            source: path.display().to_string(),
            text: text.to_string(),
        })
    }

    fn matches(&self, m: &Matcher, c: &CertIdentity) -> bool {
        m.matches_with(c, &|g| {
            self.groups
                .get(g)
                .is_some_and(|ms| ms.iter().any(|gm| self.matches(gm, c)))
        })
    }

    /// Decides `action` on `repository` for a certificate.
    pub fn decide_cert(&self, c: &CertIdentity, action: Action, repository: &str) -> Decision {
        let applies = |r: &&Rule| {
            r.actions.contains(&action)
                && r.repositories
                    .iter()
                    .any(|p| pattern_matches(p, repository))
                && r.subjects.iter().any(|m| self.matches(m, c))
        };
        let hits: Vec<&Rule> = self.rules.iter().filter(applies).collect();
        if let Some(r) = hits.iter().find(|r| r.effect == Effect::Deny) {
            return Decision {
                allowed: false,
                rule: r.name.clone(),
            };
        }
        if let Some(r) = hits.first() {
            return Decision {
                allowed: true,
                rule: r.name.clone(),
            };
        }
        Decision {
            allowed: self.defaults.allow.contains(&action),
            rule: "default".into(),
        }
    }

    /// Decides for any caller: certificates by the rules; the control API's callers (unix
    /// socket, berthd itself) are governed by the control API's own checks, not this file.
    pub fn decide(&self, who: &Identity, action: Action, repository: &str) -> Decision {
        match who {
            Identity::Cert(c) => self.decide_cert(c, action, repository),
            Identity::Unix { .. } | Identity::Daemon => Decision {
                allowed: true,
                rule: "control API".into(),
            },
            Identity::Anonymous => Decision {
                allowed: false,
                rule: "no certificate".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
