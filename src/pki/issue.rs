//! Leaf certificate profiles and the validation of the names that go into them.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{Ca, CertKind, Error, KeyAlgorithm, Names};

/// Longest common name, O or OU X.520 allows (ub-common-name and friends).
const MAX_DN_VALUE: usize = 64;

/// The longest validity berth signs, in days (100 years; a leaf is also cut at the CA's
/// own expiry). Longer lifetimes overflow dates and mean nothing for a leaf.
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

/// Most subject alternative names one certificate may carry. Clients and servers slow
/// down on huge SAN lists, and listings become unreadable; no registry needs more.
pub const MAX_SANS: usize = 100;

/// Longest URI SAN, and longest email SAN (RFC 5321's path limit).
const MAX_URI: usize = 2048;
const MAX_EMAIL: usize = 254;

/// Builds the parameters of a leaf certificate for `kind`. Everything security-relevant is
/// set here, never left to rcgen's defaults: serial, validity, CA:FALSE, key usages, EKU.
pub(super) fn leaf_params(
    kind: CertKind,
    names: &Names,
    alg: KeyAlgorithm,
    serial: &[u8],
    days: u32,
    ca: &Ca,
) -> Result<CertificateParams, Error> {
    let names = validate(kind, names)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = distinguished_name(&names)?;
    p.subject_alt_names = sans(&names)?;
    apply_profile(&mut p, kind, alg.is_rsa(), serial, days, ca)?;
    Ok(p)
}

/// Sets the parts of a leaf that come from the profile alone; shared with CSR signing so a
/// CSR can never ask for more than an issued certificate gets.
pub(super) fn apply_profile(
    p: &mut CertificateParams,
    kind: CertKind,
    rsa: bool,
    serial: &[u8],
    days: u32,
    ca: &Ca,
) -> Result<(), Error> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(Error::InvalidRequest(format!(
            "validity of {days} days is out of range: give 1 to {MAX_VALIDITY_DAYS} days (a certificate never outlives the CA)"
        )));
    }
    if p.subject_alt_names.len() > MAX_SANS {
        return Err(Error::InvalidRequest(format!(
            "{} subject alternative names is too many: at most {MAX_SANS}",
            p.subject_alt_names.len()
        )));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa {
        // TLS 1.2 RSA key exchange encrypts to the key.
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = vec![match kind {
        CertKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
        CertKind::Client | CertKind::Admin => ExtendedKeyUsagePurpose::ClientAuth,
        // A replica serves the registry and calls the primary with one certificate.
        CertKind::Replica => ExtendedKeyUsagePurpose::ServerAuth,
    }];
    if kind == CertKind::Replica {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.name_constraints = None;
    p.crl_distribution_points = Vec::new();
    p.custom_extensions = Vec::new();
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(SerialNumber::from_slice(serial));
    let now = OffsetDateTime::now_utc();
    // A little slack for clients whose clock is behind.
    p.not_before = now - Duration::minutes(5);
    // A leaf never outlives its CA: clients would reject the chain at the CA's expiry anyway.
    let ca_end = ca.not_after()?;
    p.not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .map_or(ca_end, |t| t.min(ca_end));
    Ok(())
}

/// Checks and normalises the names for a profile.
pub(super) fn validate(kind: CertKind, names: &Names) -> Result<Names, Error> {
    let sans =
        names.dns_names.len() + names.ip_addresses.len() + names.uris.len() + names.emails.len();
    if sans > MAX_SANS {
        return Err(Error::InvalidRequest(format!(
            "{sans} subject alternative names is too many: at most {MAX_SANS}"
        )));
    }
    let mut n = names.clone();
    n.common_name = n.common_name.trim().to_string();
    n.dns_names = n
        .dns_names
        .iter()
        .map(|d| {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            check_dns(&d, kind.serves())?;
            Ok(d)
        })
        .collect::<Result<_, Error>>()?;
    match kind {
        CertKind::Server | CertKind::Replica => {
            if n.dns_names.is_empty() && n.ip_addresses.is_empty() {
                return Err(Error::MissingName(
                    "a server certificate needs at least one DNS name or IP address (--dns/--ip): clients match the host they dial against the SANs, not the common name",
                ));
            }
            if n.common_name.is_empty() {
                n.common_name = n
                    .dns_names
                    .first()
                    .cloned()
                    .or_else(|| n.ip_addresses.first().map(|ip| ip.to_string()))
                    .unwrap_or_default();
            }
        }
        CertKind::Client | CertKind::Admin => {
            if n.common_name.is_empty() {
                return Err(Error::MissingName(
                    "a client or admin certificate needs a name (--name): it is the identity the registry and berthd see",
                ));
            }
        }
    }
    check_dn_value("common name", &n.common_name)?;
    for o in &n.organizations {
        check_dn_value("organization", o)?;
    }
    for ou in &n.organizational_units {
        check_dn_value("organizational unit", ou)?;
    }
    for u in &n.uris {
        check_uri(u)?;
    }
    for e in &n.emails {
        check_email(e)?;
    }
    Ok(n)
}

fn distinguished_name(n: &Names) -> Result<DistinguishedName, Error> {
    let mut dn = DistinguishedName::new();
    for o in &n.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    for ou in &n.organizational_units {
        dn.push(DnType::OrganizationalUnitName, ou.as_str());
    }
    dn.push(DnType::CommonName, n.common_name.as_str());
    Ok(dn)
}

pub(super) fn sans(n: &Names) -> Result<Vec<SanType>, Error> {
    let mut out = Vec::new();
    for d in &n.dns_names {
        out.push(SanType::DnsName(d.as_str().try_into()?));
    }
    for ip in &n.ip_addresses {
        out.push(SanType::IpAddress(*ip));
    }
    for u in &n.uris {
        out.push(SanType::URI(u.as_str().try_into()?));
    }
    for e in &n.emails {
        out.push(SanType::Rfc822Name(e.as_str().try_into()?));
    }
    Ok(out)
}

fn invalid(field: &'static str, value: &str, reason: &'static str) -> Error {
    Error::InvalidName {
        field,
        value: value.to_string(),
        reason,
    }
}

/// A DNS name as TLS clients match it: LDH labels of 1-63 characters, at most 253 in all;
/// a leading `*.` wildcard is allowed in server certificates only.
pub(super) fn check_dns(d: &str, allow_wildcard: bool) -> Result<(), Error> {
    const F: &str = "DNS name";
    if d.is_empty() {
        return Err(invalid(F, d, "empty"));
    }
    if d.len() > 253 {
        return Err(invalid(F, d, "longer than 253 characters"));
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err(invalid(F, d, "this is an IP address: pass it with --ip"));
    }
    let body = match d.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        Some(_) => {
            return Err(invalid(
                F,
                d,
                "wildcards are only allowed in server certificates",
            ));
        }
        None => d,
    };
    for label in body.split('.') {
        if label.is_empty() {
            return Err(invalid(F, d, "empty label (two dots in a row?)"));
        }
        if label.len() > 63 {
            return Err(invalid(F, d, "a label is longer than 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                F,
                d,
                "only letters, digits, '-' and '_' are allowed (no ports, paths or spaces)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(F, d, "a label cannot start or end with '-'"));
        }
    }
    Ok(())
}

/// A common name berth accepts (enrolment tokens are bound to one).
pub(super) fn check_common_name(cn: &str) -> Result<(), Error> {
    check_dn_value("common name", cn)
}

fn check_dn_value(field: &'static str, v: &str) -> Result<(), Error> {
    if v.trim().is_empty() {
        return Err(invalid(field, v, "empty"));
    }
    if v.chars().count() > MAX_DN_VALUE {
        return Err(invalid(field, v, "longer than 64 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, v, "contains control characters"));
    }
    Ok(())
}

fn check_uri(u: &str) -> Result<(), Error> {
    let Some((scheme, rest)) = u.split_once(':') else {
        return Err(invalid(
            "URI",
            u,
            "missing scheme, e.g. spiffe://example.org/ci",
        ));
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if u.len() > MAX_URI {
        return Err(invalid("URI", u, "longer than 2048 characters"));
    }
    if !scheme_ok || rest.is_empty() {
        return Err(invalid("URI", u, "not of the form scheme:rest"));
    }
    if !u.is_ascii()
        || u.chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err(invalid("URI", u, "must be ASCII without spaces"));
    }
    Ok(())
}

fn check_email(e: &str) -> Result<(), Error> {
    if e.len() > MAX_EMAIL {
        return Err(invalid("email", e, "longer than 254 characters"));
    }
    match e.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty() && e.is_ascii() && !e.contains(char::is_whitespace) =>
        {
            check_dns(domain, false)
                .map_err(|_| invalid("email", e, "the domain is not a valid DNS name"))
        }
        _ => Err(invalid("email", e, "expected local@domain")),
    }
}

#[cfg(test)]
mod tests;
