//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn matches_registry_2() {
    let p = Paths;
    let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        .parse()
        .unwrap();
    let n: RepoName = "team/app".parse().unwrap();
    let t: Tag = "1.0".parse().unwrap();
    let h = d.hex();
    let k = |k: Key| k.as_str().to_string();
    assert_eq!(
        k(p.blob_data(&d)),
        format!("docker/registry/v2/blobs/sha256/e3/{h}/data")
    );
    assert_eq!(
        k(p.layer_link(&n, &d)),
        format!("docker/registry/v2/repositories/team/app/_layers/sha256/{h}/link")
    );
    assert_eq!(
        k(p.revision_link(&n, &d)),
        format!("docker/registry/v2/repositories/team/app/_manifests/revisions/sha256/{h}/link")
    );
    assert_eq!(
        k(p.tag_current(&n, &t)),
        "docker/registry/v2/repositories/team/app/_manifests/tags/1.0/current/link"
    );
    assert_eq!(
        k(p.tag_index(&n, &t, &d)),
        format!(
            "docker/registry/v2/repositories/team/app/_manifests/tags/1.0/index/sha256/{h}/link"
        )
    );
    assert_eq!(
        k(p.upload_data(&n, "u")),
        "docker/registry/v2/repositories/team/app/_uploads/u/data"
    );
    assert_eq!(
        k(p.media_type(&d)),
        format!("docker/registry/v2/_berth/mediatypes/sha256/{h}")
    );
}
