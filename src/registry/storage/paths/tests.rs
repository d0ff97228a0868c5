//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn matches_registry_2() {
    let p = Paths::new(Path::new("/r"));
    let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        .parse()
        .unwrap();
    let n: RepoName = "team/app".parse().unwrap();
    let t: Tag = "1.0".parse().unwrap();
    let h = d.hex();
    assert_eq!(
        p.blob_data(&d),
        Path::new(&format!("/r/docker/registry/v2/blobs/sha256/e3/{h}/data"))
    );
    assert_eq!(
        p.layer_link(&n, &d),
        Path::new(&format!(
            "/r/docker/registry/v2/repositories/team/app/_layers/sha256/{h}/link"
        ))
    );
    assert_eq!(
        p.revision_link(&n, &d),
        Path::new(&format!(
            "/r/docker/registry/v2/repositories/team/app/_manifests/revisions/sha256/{h}/link"
        ))
    );
    assert_eq!(
        p.tag_current(&n, &t),
        Path::new("/r/docker/registry/v2/repositories/team/app/_manifests/tags/1.0/current/link")
    );
    assert_eq!(
        p.tag_index(&n, &t, &d),
        Path::new(&format!(
            "/r/docker/registry/v2/repositories/team/app/_manifests/tags/1.0/index/sha256/{h}/link"
        ))
    );
}
