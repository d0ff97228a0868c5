//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]
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

/// A download whose client reads nothing holds no blocking thread: with a pool of two,
/// four stalled downloads leave it to the other storage calls, and each download, read
/// at last, still yields its whole blob.
#[test]
fn stalled_downloads_leave_the_blocking_pool_free() {
    use std::time::Duration;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = Storage::new(Arc::new(MemoryDriver::new()), "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let data: Vec<u8> = (0..8 * 256 * 1024 + 99).map(|i| (i % 251) as u8).collect();
    let d = Digest::sha256_of(&data);
    let readers = rt.block_on(async {
        let up = s.start_upload(&name).await.unwrap();
        let mut body = data.as_slice();
        s.append(&name, &up.id, Some(0), &mut body, None)
            .await
            .unwrap();
        s.finish_upload(&name, &up.id, &d).await.unwrap();
        // Bounded, not a sleep: a pool the stalled downloads hold never answers.
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut readers = Vec::new();
            for _ in 0..4 {
                let r = s.open_blob(&name, &d, |size| Ok::<_, Error>((0, size)));
                readers.push(r.await.unwrap());
            }
            for _ in 0..20 {
                assert_eq!(
                    s.blob_size(&name, &d).await.unwrap(),
                    Some(data.len() as u64)
                );
            }
            readers
        })
        .await
    });
    let whole = readers.map(|readers| {
        rt.block_on(async {
            let mut all = true;
            for mut r in readers {
                let mut got = Vec::new();
                while let Some(chunk) = r.chunks.recv().await {
                    got.extend(chunk.unwrap());
                }
                all &= got == data;
            }
            all
        })
    });
    // Not a plain drop: that would wait for any blocking thread still parked.
    rt.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(
        whole,
        Ok(true),
        "stalled downloads took the blocking pool (Err), or a download lost bytes (false)"
    );
}
