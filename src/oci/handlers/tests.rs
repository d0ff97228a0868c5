//! Unit tests of the parent module.
use super::*;

fn resolved(h: Option<&str>, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    match byte_range(h)? {
        None => Ok(None),
        Some(r) => r
            .resolve(size)
            .map(|(s, len)| Some((s, s + len - 1)))
            .ok_or(()),
    }
}

#[test]
fn ranges() {
    assert_eq!(resolved(None, 10), Ok(None));
    assert_eq!(resolved(Some("bytes=0-4"), 10), Ok(Some((0, 4))));
    assert_eq!(resolved(Some("bytes=5-"), 10), Ok(Some((5, 9))));
    assert_eq!(resolved(Some("bytes=-3"), 10), Ok(Some((7, 9))));
    assert_eq!(resolved(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
    assert_eq!(resolved(Some("bytes=10-"), 10), Err(()));
    assert_eq!(resolved(Some("bytes=5-2"), 10), Err(()));
    assert_eq!(resolved(Some("bytes=x-2"), 10), Err(()));
    assert_eq!(resolved(Some("bytes=-0"), 10), Err(()));
    assert_eq!(resolved(Some("bytes=0-"), 0), Err(()));
    assert_eq!(resolved(Some("bytes=0-1,3-4"), 10), Ok(None));
}
