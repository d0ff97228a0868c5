//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn diff_ids_of_zstd_gzip_and_plain_layers() {
    use std::io::Write;
    let raw = b"a tar stream, or something standing in for one ".repeat(3000);
    let want = Digest::sha256_of(&raw);
    // Two zstd frames with a skippable frame between them, as zstd:chunked writes.
    let half = raw.len() / 2;
    let mut zst = ruzstd::encoding::compress_to_vec(
        &raw[..half],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    zst.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
    zst.extend(ruzstd::encoding::compress_to_vec(
        &raw[half..],
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    for (name, bytes, kind) in [
        ("z", zst, "zstd"),
        ("g", gz.finish().unwrap(), "gzip"),
        ("p", raw.clone(), "none"),
    ] {
        let _ = name;
        let mut r: &[u8] = &bytes;
        assert_eq!(diff_id_of(&mut r).unwrap(), (want.clone(), kind), "{kind}");
    }
}

#[test]
fn chain_ids_follow_the_image_spec() {
    let a = Digest::sha256_of(b"a");
    let b = Digest::sha256_of(b"b");
    let c = chain_ids(&[a.clone(), b.clone()]);
    assert_eq!(c[0], a);
    assert_eq!(c[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
}
