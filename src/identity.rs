//! Who is asking: one type for every caller of every door, so authorisation, audit and
//! events see the same thing whether a request came over the unix socket, the TCP control
//! listener or the registry. The edges build it (peer credentials, the verified client
//! certificate); the cores only read it.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

/// The caller of a core operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// A local process on the control socket, as the kernel reports it (SO_PEERCRED).
    Unix {
        /// Peer uid.
        uid: u32,
        /// Peer primary gid.
        gid: u32,
        /// Peer pid, when the kernel reports it.
        pid: Option<i32>,
    },
    /// A TLS client whose certificate the handshake verified against the berth CA (shared:
    /// every request of the connection carries it).
    Cert(Arc<CertIdentity>),
    /// A TLS peer that presented no certificate. Only enrolment (a one-time token traded
    /// for a certificate) accepts it; every other door refuses it.
    Anonymous,
    /// berthd itself: scheduled work such as purging stale uploads.
    Daemon,
}

/// What a verified client certificate says about its holder. Kept whole (not just the CN)
/// because per-repository policy matches on any of these, and revocation on the serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject, RFC 4514 style (`CN=ci-bot, O=builders`).
    pub subject: String,
    /// Subject CN (empty when it has none).
    pub common_name: String,
    /// Subject O values.
    pub organizations: Vec<String>,
    /// Subject OU values.
    pub organizational_units: Vec<String>,
    /// SAN DNS names.
    pub dns_names: Vec<String>,
    /// SAN IP addresses, as text.
    pub ip_addresses: Vec<String>,
    /// SAN URIs (e.g. SPIFFE IDs).
    pub uris: Vec<String>,
    /// SAN email addresses.
    pub emails: Vec<String>,
    /// Serial, lowercase hex without colons: the key revocation is checked by.
    pub serial: String,
    /// End of validity: a request after it is refused even on an open connection.
    pub not_after: OffsetDateTime,
    /// Issuer, RFC 4514 style.
    pub issuer: String,
}

impl CertIdentity {
    /// SANs in `TYPE:value` form (`DNS:x`, `IP:x`, `URI:x`, `email:x`), for logs and listings.
    pub fn sans(&self) -> Vec<String> {
        let mut out: Vec<String> = self.dns_names.iter().map(|x| format!("DNS:{x}")).collect();
        out.extend(self.ip_addresses.iter().map(|x| format!("IP:{x}")));
        out.extend(self.uris.iter().map(|x| format!("URI:{x}")));
        out.extend(self.emails.iter().map(|x| format!("email:{x}")));
        out
    }
}

impl CertIdentity {
    /// A certificate identity as a person describes one (`CN=ci-bot,O=builders`, SANs as
    /// `DNS:x`, `URI:x`, `email:x`), for explaining policy decisions without a certificate.
    pub fn described(subject: &str, sans: &[String], serial: &str) -> Result<CertIdentity, String> {
        let mut c = CertIdentity {
            subject: subject.to_string(),
            common_name: String::new(),
            organizations: Vec::new(),
            organizational_units: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            serial: serial.to_ascii_lowercase(),
            not_after: OffsetDateTime::now_utc(),
            issuer: String::new(),
        };
        for part in subject.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid subject part {part:?}: expected KEY=VALUE"))?;
            match k.trim().to_ascii_uppercase().as_str() {
                "CN" => c.common_name = v.trim().to_string(),
                "O" => c.organizations.push(v.trim().to_string()),
                "OU" => c.organizational_units.push(v.trim().to_string()),
                other => return Err(format!("a subject here has CN, O and OU, not {other}")),
            }
        }
        for san in sans {
            let (k, v) = san
                .split_once(':')
                .ok_or_else(|| format!("invalid SAN {san:?}: expected DNS:x, URI:x or email:x"))?;
            match k.to_ascii_lowercase().as_str() {
                "dns" => c.dns_names.push(v.to_string()),
                "uri" => c.uris.push(v.to_string()),
                "email" => c.emails.push(v.to_string()),
                other => return Err(format!("a SAN here is DNS, URI or email, not {other}")),
            }
        }
        Ok(c)
    }
}

impl Identity {
    /// The certificate behind this identity, if it came over TLS.
    pub fn certificate(&self) -> Option<&CertIdentity> {
        match self {
            Identity::Cert(c) => Some(c),
            Identity::Unix { .. } | Identity::Anonymous | Identity::Daemon => None,
        }
    }
}

impl fmt::Display for Identity {
    /// The actor as events and logs name it: never a secret, always enough to find the
    /// certificate (`berth cert inspect` by serial) or the local user.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Unix { uid, .. } => write!(f, "uid {uid}"),
            Identity::Cert(c) if c.common_name.is_empty() => write!(f, "serial {}", c.serial),
            Identity::Cert(c) => write!(f, "{} (serial {})", c.common_name, c.serial),
            Identity::Anonymous => f.write_str("anonymous"),
            Identity::Daemon => f.write_str("berthd"),
        }
    }
}
