//! The PKI door: what an issue whose index sync fails answers and records.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::audit::{self, Audit};

/// The audit record of an issue is written while the index syncs. When the sync then
/// fails, the issue is refused and the failure is recorded after the success it follows.
#[test]
fn an_issue_whose_sync_fails_is_refused_and_recorded_as_failed() {
    let (_dirs, pki, audit, spec) = setup();
    let first = pki.issue(&Identity::Daemon, &spec).unwrap();
    fail_syncs(&pki);
    let e = pki.issue(&Identity::Daemon, &spec).unwrap_err();
    assert_recorded_as_failed(&audit, &first, &e);
}

/// The same on a runtime thread, as the control API issues.
#[tokio::test]
async fn an_async_issue_whose_sync_fails_is_refused_and_recorded_as_failed() {
    let (_dirs, pki, audit, spec) = setup();
    let first = pki.issue_async(&Identity::Daemon, &spec).await.unwrap();
    fail_syncs(&pki);
    let e = pki.issue_async(&Identity::Daemon, &spec).await.unwrap_err();
    assert_recorded_as_failed(&audit, &first, &e);
}

fn setup() -> ([tempfile::TempDir; 2], Pki, Audit, IssueSpec) {
    let d = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let mut pki = Pki::open(d.path(), &Settings::default()).unwrap();
    let audit = Audit::open(a.path(), &audit::Settings::default()).unwrap();
    pki.set_audit(audit.clone());
    let spec = IssueSpec {
        kind: CertKind::Client,
        names: Names {
            common_name: "disk-test".into(),
            ..Names::default()
        },
        validity_days: None,
        key_algorithm: KeyAlgorithm::EcdsaP256,
        hold_key: true,
    };
    ([d, a], pki, audit, spec)
}

fn fail_syncs(pki: &Pki) {
    pki.lock()
        .syncer()
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
}

fn assert_recorded_as_failed(audit: &Audit, first: &Issued, e: &Error) {
    assert!(e.to_string().contains("fsync"), "{e}");
    let issues: Vec<audit::Record> = audit
        .query(&audit::Filter {
            action: Some("cert.issue".into()),
            ..audit::Filter::default()
        })
        .unwrap();
    let results: Vec<&str> = issues.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[..2], ["ok", "ok"]);
    assert!(
        results[2].starts_with("error:") && results[2].contains("fsync"),
        "{results:?}"
    );
    // The failed one names its serial in both records, and it is not the first's.
    assert_eq!(issues[1].target.serial, issues[2].target.serial);
    assert_ne!(
        issues[1].target.serial.as_deref(),
        Some(first.record.serial.as_str())
    );
}
