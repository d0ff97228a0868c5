//! Unit tests of the parent module.
use super::*;

#[test]
fn pagination_follows_n_and_last() {
    let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let p = paginate(all.clone(), Some(2), None);
    assert_eq!(p.items, ["a", "b"]);
    assert_eq!(p.next_after.as_deref(), Some("b"));
    let p = paginate(all.clone(), Some(2), Some("b"));
    assert_eq!(p.items, ["c", "d"]);
    assert_eq!(p.next_after, None);
    let p = paginate(all.clone(), None, Some("bb"));
    assert_eq!(p.items, ["c", "d"]);
    assert!(paginate(all.clone(), Some(0), None).items.is_empty());
    assert!(paginate(all, Some(5), Some("z")).items.is_empty());
}
