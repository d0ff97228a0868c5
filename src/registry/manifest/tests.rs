//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn parses_image_manifests_and_indexes() {
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"l","digest":"{D}","size":0,"urls":["https://x"]}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}}}"#
    );
    let p = Manifest::parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap();
    assert_eq!(p.kind, Kind::Image);
    assert_eq!(p.blobs.len(), 2);
    assert_eq!(p.required_blobs().count(), 1);
    assert_eq!(
        p.artifact_type.as_deref(),
        Some("application/vnd.oci.image.config.v1+json")
    );
    assert!(p.subject.is_some());
    let i = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3}}]}}"#
    );
    let p = Manifest::parse(i.as_bytes(), None).unwrap();
    assert_eq!((p.kind, p.media_type.as_str()), (Kind::Index, OCI_INDEX));
    let p = Manifest::parse(i.as_bytes(), Some(DOCKER_LIST)).unwrap();
    assert_eq!(p.media_type, DOCKER_LIST);
}

#[test]
fn refuses_what_it_cannot_serve() {
    for bad in [
        "not json".to_string(),
        "[]".to_string(),
        r#"{"schemaVersion":1}"#.to_string(),
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"c","digest":"sha256:zz","size":1}},"layers":[]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"c","digest":"{D}","size":-1}},"layers":[]}}"#
        ),
        r#"{"schemaVersion":2,"mediaType":"text/plain"}"#.to_string(),
    ] {
        assert!(Manifest::parse(bad.as_bytes(), None).is_err(), "{bad}");
    }
    let m = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    assert!(Manifest::parse(m.as_bytes(), Some(DOCKER_LIST)).is_err());
}
