//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn renewal_is_due_at_two_thirds_of_life_minus_a_stable_jitter() {
    let nb = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let life = time::Duration::days(90);
    let na = nb + life;
    for serial in ["01", "ab12", "ffee99", "7f"] {
        let at = renewal_at(nb, na, serial);
        // Never later than 2/3, never earlier than 2/3 - 1/10 of the life.
        assert!(at <= nb + life * (2.0 / 3.0), "{serial}");
        assert!(at >= nb + life * (2.0 / 3.0 - 0.1), "{serial}");
        // Stable for a serial: the same host decides the same way every run.
        assert_eq!(at, renewal_at(nb, na, serial));
        // The edges.
        assert!(!renewal_due(
            nb,
            na,
            serial,
            at - time::Duration::seconds(1)
        ));
        assert!(renewal_due(nb, na, serial, at));
        assert!(!renewal_due(nb, na, serial, nb));
        assert!(renewal_due(nb, na, serial, na));
    }
    // Different serials spread out.
    let spread: std::collections::HashSet<_> = (0..50)
        .map(|i| renewal_at(nb, na, &format!("{i:x}")))
        .collect();
    assert!(spread.len() > 40);
    // A certificate with no life left is due at once.
    assert!(renewal_due(nb, nb, "01", nb));
}

#[test]
fn the_agent_looks_again_when_the_first_renewal_is_due() {
    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let e = |nb: OffsetDateTime, days: i64, serial: &str| Enrolment {
        registry: "r:1".into(),
        server_host: "h".into(),
        server_port: 1,
        ca_fingerprint: String::new(),
        serial: serial.into(),
        not_before: nb,
        not_after: nb + time::Duration::days(days),
        roots: certsd::Settings {
            docker_root: "/d".into(),
            containers_root: "/c".into(),
            containerd_root: "/k".into(),
        },
        containers: false,
        containerd: false,
    };
    let min = std::time::Duration::from_secs(60);
    let day = std::time::Duration::from_secs(86_400);
    // Nothing joined: once a day.
    assert_eq!(next_pass(&[], now, None), day);
    // Overdue: a minute (then renew_all renews it).
    assert_eq!(
        next_pass(&[e(now - time::Duration::days(89), 90, "01")], now, None),
        min
    );
    // Two: the earlier one decides, capped at a day.
    let soon = e(now - time::Duration::hours(1), 3, "02");
    let wait = next_pass(&[e(now, 90, "03"), soon.clone()], now, None);
    let expected = std::time::Duration::try_from(soon.renewal_at() - now).unwrap();
    assert_eq!(wait, expected.clamp(min, day));
    // A failed pass retries after its backoff when that is sooner.
    assert_eq!(
        next_pass(
            &[e(now, 90, "04")],
            now,
            Some(std::time::Duration::from_secs(120))
        ),
        std::time::Duration::from_secs(120)
    );
}

/// A renewal refused for the certificate says how to join again; one berthd never
/// answered, or a bad request, is passed on as it is (joining again would not help).
#[test]
fn a_failed_renewal_says_join_again_only_when_the_certificate_was_refused() {
    let refused = renewal_failed(
        "0a",
        Error::Refused {
            kind: super::super::ErrorKind::Unauthenticated,
            message: "certificate revoked".into(),
        },
    )
    .to_string();
    assert!(
        refused.contains("0a") && refused.contains("join again"),
        "{refused}"
    );
    let silent = renewal_failed(
        "0a",
        Error::NoAnswer {
            target: "tcp://ca.example:7443".into(),
            what: "the renewal",
            after: std::time::Duration::from_secs(60),
        },
    );
    assert!(matches!(silent, Error::NoAnswer { .. }), "{silent:?}");
    assert!(!silent.to_string().contains("join again"), "{silent}");
}
