//! The S3 driver: registry content as objects in an S3-compatible bucket, keyed exactly as
//! registry:2's s3 driver keys them (`<prefix>/docker/registry/v2/...`), so a bucket
//! registry:2 wrote is served in place and the other way round.
//!
//! Built on the Apache Arrow `object_store` crate: its S3 client signs, retries, pages
//! listings and runs multipart uploads, and is kept up by a large project; a hand-written
//! client would repeat all of that.
//!
//! What S3 cannot do and how it is mapped:
//! - There are no folders: a folder is the set of keys that start with `key/`, listed with
//!   the `/` delimiter.
//! - There is no append: [`Driver::append`] writes a new version of the whole object (the
//!   old bytes copied first) and the store makes it visible at once when the writer is
//!   finished. Until then readers see the old object; a writer dropped unfinished leaves it
//!   unchanged. Docker, containerd, podman and skopeo send a blob in one request, so the
//!   copy only happens for chunked uploads, and the upload's state is then the object
//!   itself: any replica can take the next chunk.
//! - Writes are durable when the store answers, so `put` and `put_scratch` are alike.
//! - A rename is a server-side copy and a delete; objects over 5 GiB (CopyObject's limit)
//!   are streamed into a multipart upload instead, a part at a time.
//!
//! The driver trait is blocking; storage calls it from blocking threads. The driver owns a
//! small runtime for its HTTP client and blocks on it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};

use super::{Append, Driver, Entry, Key, Meta, Writer};
use crate::registry::Error;
use crate::registry::settings::S3Settings;

/// Bytes per multipart part: above S3's 5 MiB minimum, small enough that the parts in
/// flight ([`PARTS_IN_FLIGHT`]) keep an upload's memory to a few tens of MiB.
const PART: usize = 8 * 1024 * 1024;

/// Parts one writer uploads at once.
const PARTS_IN_FLIGHT: usize = 2;

/// The largest object CopyObject copies in one request (S3's documented limit).
const COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

/// Objects in one bucket below a prefix.
pub(crate) struct S3Driver {
    store: Arc<AmazonS3>,
    /// The same bucket through a client that never retries and gives up after half the
    /// fence, for GC's deletes (see [`Driver::delete_promptly`]).
    prompt: Arc<AmazonS3>,
    bucket: String,
    /// registry:2's `rootdirectory`, without slashes at either end; may be empty.
    prefix: String,
    /// The runtime the HTTP client runs on; taken out only to shut it down.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for S3Driver {
    // By hand: the store's own Debug would print the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for S3Driver {
    fn drop(&mut self) {
        // A runtime dropped on an async thread panics; this one may be dropped anywhere.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A store error on `path`, in storage's error type.
fn store_error(op: &'static str, path: PathBuf) -> impl FnOnce(object_store::Error) -> Error {
    move |e| Error::Io {
        op,
        path,
        source: std::io::Error::other(e.to_string()),
    }
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// A configuration the store client refused, as storage's error.
fn config_error(what: String) -> Error {
    Error::Io {
        op: "configure the S3 store",
        path: PathBuf::from("[registry.s3]"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
    }
}

impl S3Driver {
    /// A driver for the bucket `s` names. Credentials come from the file it names, else
    /// from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`), else from the instance's metadata service.
    pub(crate) fn new(s: &S3Settings) -> Result<S3Driver, Error> {
        // The HTTP client's TLS uses the process's rustls provider; berth uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("berth-s3")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                op: "start the S3 client runtime for",
                path: PathBuf::from(format!("s3://{}", s.bucket)),
                source,
            })?;
        let mut options = ClientOptions::new();
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca).map_err(|source| Error::Io {
                op: "read the S3 store's CA file",
                path: ca.clone(),
                source,
            })?;
            for cert in object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| config_error(format!("{}: {e}", ca.display())))?
            {
                options = options.with_root_certificate(cert);
            }
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&s.bucket)
            .with_virtual_hosted_style_request(!s.path_style);
        if let Some(region) = &s.region {
            b = b.with_region(region);
        }
        if let Some(endpoint) = &s.endpoint {
            if endpoint.starts_with("http://") {
                // Plain HTTP only when the operator wrote it (a store on loopback or a
                // private network); credentials still never cross it unsigned.
                options = options.with_allow_http(true);
            }
            b = b.with_endpoint(endpoint);
        }
        if let Some(file) = &s.credentials_file {
            let creds = S3Credentials::load(file)?;
            b = b
                .with_access_key_id(creds.access_key_id)
                .with_secret_access_key(creds.secret_access_key);
            if let Some(t) = creds.session_token {
                b = b.with_token(t);
            }
        }
        let half_fence = s.fence / 2;
        let (store, prompt) = {
            let _in = rt.enter();
            let prompt = b
                .clone()
                .with_client_options(options.clone().with_timeout(half_fence))
                .with_retry(object_store::RetryConfig {
                    max_retries: 0,
                    retry_timeout: half_fence,
                    ..object_store::RetryConfig::default()
                })
                .build()
                .map_err(|e| config_error(e.to_string()))?;
            let store = b
                .with_client_options(options)
                .build()
                .map_err(|e| config_error(e.to_string()))?;
            (store, prompt)
        };
        Ok(S3Driver {
            store: Arc::new(store),
            prompt: Arc::new(prompt),
            bucket: s.bucket.clone(),
            prefix: s.prefix.trim_matches('/').to_string(),
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }

    /// The object path of `key` (the prefix, then the key).
    fn path(&self, key: &Key) -> Result<Path, Error> {
        let full = match (self.prefix.is_empty(), key.as_str().is_empty()) {
            (true, _) => key.as_str().to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{}", self.prefix, key.as_str()),
        };
        Path::parse(&full).map_err(|e| config_error(format!("key {full}: {e}")))
    }

    /// The path whose children are the keys below `key` (`None`: the whole bucket).
    fn below(&self, key: &Key) -> Result<Option<Path>, Error> {
        if self.prefix.is_empty() && key.as_str().is_empty() {
            Ok(None)
        } else {
            self.path(key).map(Some)
        }
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    fn head(&self, key: &Key) -> Result<Option<object_store::ObjectMeta>, Error> {
        let path = self.path(key)?;
        match self.block(self.store.head(&path)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(store_error("stat", self.locate(key))(e)),
        }
    }

    /// The bytes of `key` from `offset` as a stream; `None` when absent.
    fn stream(
        &self,
        key: &Key,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<BoxStream<'static, object_store::Result<Bytes>>>, Error> {
        let path = self.path(key)?;
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.block(self.store.get_opts(&path, opts)) {
            Ok(r) => Ok(Some(r.into_stream())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(store_error("read", self.locate(key))(e)),
        }
    }

    /// A writer replacing `key` whole; nothing changes until it is finished.
    fn writer(&self, key: &Key) -> Result<S3Writer, Error> {
        Ok(S3Writer {
            store: self.store.clone(),
            handle: self.handle.clone(),
            path: self.path(key)?,
            buf: Vec::new(),
            upload: None,
        })
    }

    /// Replaces `to` with the first `len` bytes of `from` (which may be `to` itself),
    /// streamed through this process a part at a time; `to` changes only at the end.
    fn copy_streamed(&self, op: &'static str, from: &Key, len: u64, to: &Key) -> Result<(), Error> {
        let mut w = self.writer(to)?;
        self.copy_into(from, len, &mut w)?;
        w.complete().map_err(|source| Error::Io {
            op,
            path: self.locate(to),
            source,
        })
    }

    /// Writes `len` bytes of `from`, starting at 0, into `w`, a part at a time.
    fn copy_into(&self, from: &Key, len: u64, w: &mut S3Writer) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        let mut s = self
            .stream(from, Some(0..len))?
            .ok_or_else(|| store_error("read", self.locate(from))(gone(from)))?;
        while let Some(chunk) = self.block(s.next()) {
            let chunk = chunk.map_err(store_error("read", self.locate(from)))?;
            w.push(&chunk).map_err(|source| Error::Io {
                op: "write",
                path: self.locate(from),
                source,
            })?;
        }
        Ok(())
    }
}

/// The error a vanished object gives, as the store would report it.
fn gone(key: &Key) -> object_store::Error {
    object_store::Error::NotFound {
        path: key.to_string(),
        source: "the object vanished while it was being copied".into(),
    }
}

/// Access keys for the store, from `credentials_file` (TOML), which must be private.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl S3Credentials {
    fn load(file: &std::path::Path) -> Result<S3Credentials, Error> {
        use std::os::unix::fs::PermissionsExt;
        let io = |op, source| Error::Io {
            op,
            path: file.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(file).map_err(|e| io("read the S3 credentials file", e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(config_error(format!(
                "{} holds secret keys but others may read it: chmod 600 {}",
                file.display(),
                file.display()
            )));
        }
        let text =
            std::fs::read_to_string(file).map_err(|e| io("read the S3 credentials file", e))?;
        // The parse error is not shown: it quotes the line, which may hold the secret.
        toml::from_str(&text).map_err(|_| {
            config_error(format!(
                "{} is not TOML with access_key_id and secret_access_key (and optionally \
                 session_token)",
                file.display()
            ))
        })
    }
}

/// A new version of one object, built in memory up to one part, then as a multipart
/// upload of [`PART`]-sized parts. Small objects cost one PUT.
struct S3Writer {
    store: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    path: Path,
    buf: Vec<u8>,
    upload: Option<WriteMultipart>,
}

impl S3Writer {
    fn push(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() < PART {
            return Ok(());
        }
        let handle = self.handle.clone();
        if self.upload.is_none() {
            let up = handle
                .block_on(self.store.put_multipart(&self.path))
                .map_err(std::io::Error::other)?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(up, PART));
        }
        if let Some(up) = self.upload.as_mut() {
            // Part uploads are spawned: they must land on the client's runtime.
            let _in = handle.enter();
            up.put(Bytes::from(std::mem::take(&mut self.buf)));
            handle
                .block_on(up.wait_for_capacity(PARTS_IN_FLIGHT))
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn complete(mut self) -> std::io::Result<()> {
        let handle = self.handle.clone();
        let buf = std::mem::take(&mut self.buf);
        match self.upload.take() {
            None => handle
                .block_on(self.store.put(&self.path, PutPayload::from(buf)))
                .map(|_| ())
                .map_err(std::io::Error::other),
            Some(mut up) => {
                let _in = handle.enter();
                up.put(Bytes::from(buf));
                handle
                    .block_on(up.finish())
                    .map(|_| ())
                    .map_err(std::io::Error::other)
            }
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Unfinished: give the parts back so the bucket does not bill for them. It may be
        // dropped on an async thread, so the abort runs on its own.
        if let Some(up) = self.upload.take() {
            self.handle.spawn(async move {
                let _ = up.abort().await;
            });
        }
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.push(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Append for S3Writer {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        (*self).complete()
    }
}

/// A blocking reader over an object's byte stream.
struct StreamReader {
    handle: tokio::runtime::Handle,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    cur: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

impl Driver for S3Driver {
    fn locate(&self, key: &Key) -> PathBuf {
        match self.path(key) {
            Ok(p) => PathBuf::from(format!("s3://{}/{p}", self.bucket)),
            Err(_) => PathBuf::from(format!("s3://{}/{}/{key}", self.bucket, self.prefix)),
        }
    }

    fn stat(&self, key: &Key) -> Result<Option<Meta>, Error> {
        Ok(self.head(key)?.map(|m| Meta {
            size: m.size,
            modified: SystemTime::from(m.last_modified),
        }))
    }

    fn has_children(&self, key: &Key) -> Result<bool, Error> {
        let below = self.below(key)?;
        let mut s = self.store.list(below.as_ref());
        match self.block(s.next()) {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(store_error("list", self.locate(key))(e)),
        }
    }

    fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path(key)?;
        let r = match self.block(self.store.get(&path)) {
            Ok(r) => r,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(store_error("read", self.locate(key))(e)),
        };
        self.block(r.bytes())
            .map(|b| Some(b.to_vec()))
            .map_err(store_error("read", self.locate(key)))
    }

    fn reader(&self, key: &Key, offset: u64) -> Result<Option<Box<dyn Read + Send>>, Error> {
        let range = if offset == 0 {
            None
        } else {
            // A range that starts at the end is an error to S3, and an empty read here.
            let Some(m) = self.head(key)? else {
                return Ok(None);
            };
            if offset >= m.size {
                return Ok(Some(Box::new(std::io::empty())));
            }
            Some(offset..m.size)
        };
        Ok(self.stream(key, range)?.map(|stream| {
            Box::new(StreamReader {
                handle: self.handle.clone(),
                stream,
                cur: Bytes::new(),
            }) as Box<dyn Read + Send>
        }))
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        let path = self.path(key)?;
        self.block(self.store.put(&path, PutPayload::from(bytes.to_vec())))
            .map(|_| ())
            .map_err(store_error("write", self.locate(key)))
    }

    fn put_scratch(&self, key: &Key, bytes: &[u8]) -> Result<(), Error> {
        self.put(key, bytes)
    }

    fn append(&self, key: &Key) -> Result<Writer, Error> {
        let mut w = self.writer(key)?;
        if let Some(m) = self.head(key)? {
            self.copy_into(key, m.size, &mut w)?;
        }
        Ok(Box::new(w))
    }

    fn truncate(&self, key: &Key, len: u64) -> Result<(), Error> {
        self.copy_streamed("truncate", key, len, key)
    }

    fn list(&self, key: &Key) -> Result<Vec<Entry>, Error> {
        let below = self.below(key)?;
        let r = self
            .block(self.store.list_with_delimiter(below.as_ref()))
            .map_err(store_error("list", self.locate(key)))?;
        let name = |p: &Path| p.filename().map(str::to_string);
        let mut out: Vec<Entry> = r
            .common_prefixes
            .iter()
            .filter_map(name)
            .map(|name| Entry { name, is_dir: true })
            .chain(
                r.objects
                    .iter()
                    .filter_map(|o| name(&o.location))
                    .map(|name| Entry {
                        name,
                        is_dir: false,
                    }),
            )
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<bool, Error> {
        self.delete_through(&self.store, key)
    }

    fn delete_promptly(&self, key: &Key) -> Result<bool, Error> {
        self.delete_through(&self.prompt, key)
    }

    fn changed_at(&self, _key: &Key) -> Result<Option<SystemTime>, Error> {
        // Prefixes have no times; callers then list.
        Ok(None)
    }

    fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        let size = self
            .head(from)?
            .ok_or_else(|| store_error("rename", self.locate(from))(gone(from)))?
            .size;
        let (src, dst) = (self.path(from)?, self.path(to)?);
        if size <= COPY_LIMIT {
            self.block(self.store.copy(&src, &dst))
                .map_err(store_error("copy", self.locate(from)))?;
        } else {
            self.copy_streamed("copy", from, size, to)?;
        }
        match self.block(self.store.delete(&src)) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(store_error("delete", self.locate(from))(e)),
        }
    }
}

impl S3Driver {
    /// The object at `key` and everything below it, deleted through `store`.
    fn delete_through(&self, store: &AmazonS3, key: &Key) -> Result<bool, Error> {
        let mut found = false;
        if !key.as_str().is_empty() && self.head(key)?.is_some() {
            let path = self.path(key)?;
            match self.block(store.delete(&path)) {
                Ok(()) => found = true,
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(store_error("delete", self.locate(key))(e)),
            }
        }
        let below = self.below(key)?;
        let paths: Vec<Path> = self
            .block(store.list(below.as_ref()).collect::<Vec<_>>())
            .into_iter()
            .map(|m| m.map(|m| m.location))
            .collect::<Result<_, _>>()
            .map_err(store_error("list", self.locate(key)))?;
        if paths.is_empty() {
            return Ok(found);
        }
        let input = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let results: Vec<_> = self.block(store.delete_stream(input).collect::<Vec<_>>());
        for r in results {
            match r {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(store_error("delete", self.locate(key))(e)),
            }
        }
        Ok(true)
    }
}
