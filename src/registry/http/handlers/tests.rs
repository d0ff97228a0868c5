//! Unit tests of the parent module.
use super::*;

#[test]
fn ranges() {
    assert_eq!(byte_range(None, 10), Ok(None));
    assert_eq!(byte_range(Some("bytes=0-4"), 10), Ok(Some((0, 4))));
    assert_eq!(byte_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
    assert_eq!(byte_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
    assert_eq!(byte_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
    assert_eq!(byte_range(Some("bytes=10-"), 10), Err(()));
    assert_eq!(byte_range(Some("bytes=5-2"), 10), Err(()));
    assert_eq!(byte_range(Some("bytes=x-2"), 10), Err(()));
    assert_eq!(byte_range(Some("bytes=0-1,3-4"), 10), Ok(None));
}
