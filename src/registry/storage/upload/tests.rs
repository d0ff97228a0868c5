//! An upload's sink keeps the upload locked until its last chunk has landed, even when the
//! request that fed it is gone: the next request on the upload sees every byte that
//! reached the store counted, and the hash state still matches the data.
#![allow(clippy::unwrap_used)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::super::driver::MemoryDriver;
use super::super::driver::spy::{Gate, Spy};
use super::super::{CHUNK, Storage};
use crate::registry::reference::{Digest, RepoName};

/// Opens the gate when dropped: a failed assertion must not leave a write waiting forever
/// (the runtime waits for its blocking threads).
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_mid_chunk_keeps_the_upload_until_its_write_lands() {
    let gate = Arc::new(Gate::default());
    let _open = OpenOnDrop(gate.clone());
    let drv = Arc::new(Spy {
        gate: Some(gate.clone()),
        ..Spy::over(Box::new(MemoryDriver::new()))
    });
    let s = Storage::new(drv, "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let up = s.start_upload(&name).await.unwrap();

    // A client sends one full chunk and then nothing (it is gone, or a layer above gave
    // up on the request): the chunk is at the store, its write held at the gate.
    let first: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
    let sent = first.clone();
    let feeder = tokio::spawn(async move {
        tx.write_all(&sent).await.unwrap();
        std::future::pending::<()>().await;
    });
    let (s2, name2, id2) = (s.clone(), name.clone(), up.id.clone());
    let request =
        tokio::spawn(async move { s2.append(&name2, &id2, Some(0), &mut rx, None).await });
    until("the chunk's write waits at the gate", || {
        gate.waiting() == 1
    })
    .await;
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    feeder.abort();

    // The request is gone but its write is not done: the upload stays locked, so nobody
    // can read a size the store is about to change.
    let state = s.inner.local.uploads().get(&up.id).cloned().unwrap();
    assert!(
        state.try_lock().is_err(),
        "the upload was unlocked while a chunk of it was still being written"
    );
    gate.open();
    // The next request on the upload waits for it, then sees the chunk counted and hashed.
    let tail = b"and the rest of the layer".to_vec();
    let status = s
        .append(
            &name,
            &up.id,
            Some(CHUNK as u64),
            &mut tail.as_slice(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status.size, (CHUNK + tail.len()) as u64);
    assert_eq!(
        s.upload_status(&name, &up.id).await.unwrap().size,
        status.size
    );
    let mut whole = first;
    whole.extend_from_slice(&tail);
    let d = Digest::sha256_of(&whole);
    let st = state.lock().await;
    let kept = st.hasher.clone().map(|h| h.finish());
    drop(st);
    assert_eq!(
        kept,
        Some(d.clone()),
        "the hash state lost track of the data"
    );
    assert_eq!(
        s.finish_upload(&name, &up.id, &d).await.unwrap(),
        whole.len() as u64
    );
}

/// An upload waiting for its client holds no blocking thread: with a pool of two, four
/// uploads that each sent a chunk and went quiet all get it stored, and other storage
/// calls still run.
#[test]
fn quiet_uploads_leave_the_blocking_pool_free() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = Storage::new(Arc::new(MemoryDriver::new()), "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let mut tasks = Vec::new();
    let stored = rt.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..4 {
            let up = s.start_upload(&name).await.unwrap();
            let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
            tasks.push(tokio::spawn(async move {
                tx.write_all(&vec![7u8; CHUNK]).await.unwrap();
                std::future::pending::<()>().await;
            }));
            let (s2, name2, id) = (s.clone(), name.clone(), up.id.clone());
            tasks.push(tokio::spawn(async move {
                let _ = s2.append(&name2, &id, Some(0), &mut rx, None).await;
            }));
            ids.push(up.id);
        }
        // Bounded, not a sleep: a pool taken by quiet uploads never answers.
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let mut all = true;
                for id in &ids {
                    all &= s.upload_status(&name, id).await.unwrap().size == CHUNK as u64;
                }
                if all {
                    return s.start_upload(&name).await.is_ok();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
    });
    for t in &tasks {
        t.abort();
    }
    // Not a plain drop: that would wait for any blocking thread still parked.
    rt.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(
        stored,
        Ok(true),
        "quiet uploads took the blocking pool: their chunks or other calls never ran"
    );
}

/// A body that arrives in odd-sized pieces is stored and hashed exactly, across chunk
/// boundaries and in the buffers reused from one chunk to the next (they are filled
/// from their spare capacity, never zeroed); so is a body smaller than one chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_odd_pieces_is_stored_exactly() {
    let s = Storage::new(Arc::new(MemoryDriver::new()), "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    for len in [2 * CHUNK + 12_345, 200, 3 * CHUNK] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let up = s.start_upload(&name).await.unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let sent = data.clone();
        let feeder = tokio::spawn(async move {
            for piece in sent.chunks(7_777) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let status = s
            .append(&name, &up.id, Some(0), &mut rx, None)
            .await
            .unwrap();
        feeder.await.unwrap();
        assert_eq!(status.size, len as u64);
        let d = Digest::sha256_of(&data);
        let state = s.inner.local.uploads().get(&up.id).cloned().unwrap();
        let kept = state.lock().await.hasher.clone().map(|h| h.finish());
        assert_eq!(kept, Some(d.clone()), "{len} bytes: the hash state differs");
        assert_eq!(
            s.finish_upload(&name, &up.id, &d).await.unwrap(),
            len as u64
        );
        let stored = s
            .driver()
            .get(&super::super::paths::Paths.blob_data(&d))
            .unwrap();
        assert!(stored == Some(data), "{len} bytes: the stored blob differs");
    }
}

/// An upload this process knows, whose data is gone from the store (another berthd on
/// the same bucket finished or purged it), is unknown to the next chunk and to the
/// commit: neither starts it again from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_upload_gone_from_the_store_is_unknown() {
    use super::super::paths::Paths;
    use crate::registry::Error;
    let s = Storage::new(Arc::new(MemoryDriver::new()), "test".into());
    let name: RepoName = "team/app".parse().unwrap();
    let up = s.start_upload(&name).await.unwrap();
    let first = b"the first chunk".to_vec();
    s.append(&name, &up.id, Some(0), &mut first.as_slice(), None)
        .await
        .unwrap();
    assert!(s.inner.local.uploads().contains_key(&up.id));
    assert!(s.driver().delete(&Paths.upload_dir(&name, &up.id)).unwrap());

    let more = b"and more".to_vec();
    let r = s
        .append(&name, &up.id, None, &mut more.as_slice(), None)
        .await;
    assert!(matches!(r, Err(Error::UploadUnknown(_))), "{r:?}");
    let d = Digest::sha256_of(&first);
    let r = s.finish_upload(&name, &up.id, &d).await;
    assert!(matches!(r, Err(Error::UploadUnknown(_))), "{r:?}");
    assert_eq!(
        s.driver().stat(&Paths.upload_data(&name, &up.id)).unwrap(),
        None,
        "a chunk brought the upload back"
    );
}
