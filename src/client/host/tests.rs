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
