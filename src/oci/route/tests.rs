//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn names_with_slashes_and_keywords() {
    assert_eq!(parse("").unwrap(), Route::Base);
    assert_eq!(parse("_catalog").unwrap(), Route::Catalog);
    assert!(matches!(parse("a/b/c/tags/list").unwrap(), Route::Tags(n) if n.as_str() == "a/b/c"));
    assert!(
        matches!(parse("blobs/manifests/latest").unwrap(), Route::Manifest(n, _) if n.as_str() == "blobs")
    );
    assert!(
        matches!(parse(&format!("team/blobs/blobs/{D}")).unwrap(), Route::Blob(n, _) if n.as_str() == "team/blobs")
    );
    assert!(
        matches!(parse("team/app/blobs/uploads/").unwrap(), Route::UploadStart(n) if n.as_str() == "team/app")
    );
    assert!(matches!(
        parse("team/app/blobs/uploads").unwrap(),
        Route::UploadStart(_)
    ));
    assert!(
        matches!(parse("team/app/blobs/uploads/abc").unwrap(), Route::Upload(_, id) if id == "abc")
    );
    assert!(matches!(
        parse(&format!("x/referrers/{D}")).unwrap(),
        Route::Referrers(..)
    ));
    assert_eq!(
        parse("Team/app/tags/list"),
        Err(RouteError::Invalid(RefError::Name("Team/app".into())))
    );
    assert!(matches!(
        parse("team/manifests/bad:digest"),
        Err(RouteError::ManifestReference(RefError::Digest(_)))
    ));
    assert!(matches!(
        parse("team/manifests/-bad"),
        Err(RouteError::ManifestReference(RefError::Tag(_)))
    ));
    assert_eq!(parse("nothing"), Err(RouteError::NotFound));
    assert_eq!(parse("tags/list"), Err(RouteError::NotFound));
}
