//! THE accept loop, for every listener berthd has. What it guarantees, whoever the edge is:
//! - `TCP_NODELAY` on every accepted socket, so a small answer never waits ~40 ms for the
//!   client's delayed ACK;
//! - accept errors (EMFILE when the fd table is full) back off with a growing pause, and
//!   every noisy event is logged at most once a second with a count of what was suppressed;
//! - a connection cap: above it, new connections are closed at accept and counted;
//! - the TLS handshake runs in the connection's own task under a deadline, so a silent
//!   client never stalls other accepts;
//! - HTTP/1 header read, idle keep-alive and HTTP/2 stream and header limits;
//! - every request carries the caller's [`Identity`], re-checked by the [`Gate`] before it
//!   reaches the edge (a revoked certificate is refused on an open connection);
//! - on shutdown, connections finish what is in flight (graceful close) until the drain
//!   deadline, then are closed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use super::{Gate, Settings};
use crate::identity::Identity;
use crate::pki;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP with mutual TLS (registry, control).
    Tcp(TcpListener),
    /// The control socket, authorised by peer credentials.
    Unix(UnixListener),
}

/// The remote address of a request's connection (`None` on the unix socket), for logs and
/// per-address limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub Option<std::net::SocketAddr>);

/// Why the edge refused a request before looking at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The certificate was revoked after this connection was opened.
    #[error(
        "client certificate {subject} (serial {serial}) has been revoked; it may make no more requests: ask the registry's operator for a new one"
    )]
    Revoked {
        /// Serial, lowercase hex.
        serial: String,
        /// Subject.
        subject: String,
    },
    /// The certificate expired after this connection was opened.
    #[error(
        "client certificate {subject} (serial {serial}) expired at {not_after}: renew it (berth cert renew) and reconnect"
    )]
    Expired {
        /// Serial, lowercase hex.
        serial: String,
        /// Subject.
        subject: String,
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// A registry replica has not heard from its primary since its CRL lapsed (plus the
    /// grace): it cannot know who was revoked, so it serves nobody.
    #[error(
        "this registry replica has had no current CRL from its primary since {since}; it serves nobody until the primary is back: use another replica"
    )]
    TrustLapsed {
        /// When serving stopped.
        since: OffsetDateTime,
    },
}

/// What an edge's router must be to be served: a cloneable tower service that never
/// fails (errors are responses).
pub trait Edge<B>:
    Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> Edge<B> for S where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// What an edge's response body must be to be sent by hyper.
pub trait ResponseBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

impl<B> ResponseBody for B where
    B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// What a listener serves.
pub struct Served<S, B> {
    /// Listener name for logs (`registry`, `control`).
    pub name: &'static str,
    /// The edge's service (an axum or tonic router); requests carry an [`Identity`].
    pub service: S,
    /// The edge's answer to a refused request (OCI 403 DENIED, gRPC Unauthenticated).
    pub refuse: fn(&Refusal) -> Response<B>,
    /// TLS for TCP listeners, swapped on renewal and revocation (new handshakes see it).
    pub tls: Option<Arc<ArcSwap<ServerConfig>>>,
    /// The per-request identity check.
    pub gate: Arc<Gate>,
    /// What to answer, as plain HTTP 400, to a client that speaks plain HTTP on this TLS
    /// port (docker does, to loopback registries); `None` just closes such connections.
    pub plain_http_hint: Option<String>,
    /// Whether a TLS peer without a certificate is served (as [`Identity::Anonymous`]; the
    /// control listener allows it for enrolment only). The TLS config must allow it too.
    pub allow_anonymous: bool,
    /// Limits and timeouts.
    pub settings: Settings,
    /// Where requests, bytes, connections and refusals are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The edge's name for a request path's route, a fixed set (metrics labels).
    pub route: fn(&str) -> &'static str,
    /// Serve plain HTTP/1.1 on TCP, without TLS: the loopback metrics listener only.
    pub plain: bool,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in
/// force: a registry serving many clients needs more than the usual 1024.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(
                    before = soft,
                    after = hard,
                    hard,
                    "raised the open-file limit"
                );
                return hard;
            }
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    } else {
        tracing::info!(soft, hard, "open-file limit already at its hard limit");
    }
    soft
}

/// The soft `RLIMIT_NOFILE` in force.
fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// At most one log line a second per kind of event; the next one says how many were
/// suppressed in between.
#[derive(Debug, Default)]
struct Throttle {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    /// `Some(suppressed)` when this event should be logged now.
    fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match s.0 {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Throttles {
    accept: Throttle,
    cap: Throttle,
    handshake: Throttle,
    /// Peers already told about plain HTTP (bounded: cleared when it grows large).
    plain_http: Mutex<std::collections::HashSet<std::net::IpAddr>>,
}

impl Throttles {
    /// True the first time `ip` speaks plain HTTP to us (for a while).
    fn first_plain_http(&self, ip: std::net::IpAddr) -> bool {
        let mut seen = self.plain_http.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 4096 {
            seen.clear();
        }
        seen.insert(ip)
    }
}

/// Serves `listener` until `stop` turns true, then drains.
pub async fn serve<S, B>(listener: Listener, served: Served<S, B>, mut stop: watch::Receiver<bool>)
where
    S: Edge<B>,
    S::Future: Send + 'static,
    B: ResponseBody,
{
    let cap = served.settings.connection_cap(fd_limit());
    let name = served.name;
    let drain = served.settings.drain_timeout;
    let served = Arc::new(served);
    let permits = Arc::new(Semaphore::new(cap));
    let throttles = Arc::new(Throttles::default());
    let mut conns = tokio::task::JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut refused: u64 = 0;
    tracing::debug!(listener = name, cap, "accepting");
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = accept(&listener) => a,
        };
        let conn = match accepted {
            Ok(c) => {
                backoff = Duration::ZERO;
                c
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: the backlog keeps the client; pause and retry.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                if let Some(suppressed) = throttles.accept.hit() {
                    tracing::warn!(listener = name, error = %e, suppressed, pause_ms = backoff.as_millis() as u64, "accept failed; backing off");
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            served
                .metrics
                .connections_refused
                .get_or_create(&crate::metrics::ListenerLabels { listener: name })
                .inc();
            if let Some(suppressed) = throttles.cap.hit() {
                tracing::warn!(
                    listener = name,
                    cap,
                    refused_total = refused,
                    suppressed,
                    "connection cap reached; closing new connections at accept"
                );
            }
            drop(conn);
            continue;
        };
        let (served, stop, throttles) = (served.clone(), stop.clone(), throttles.clone());
        conns.spawn(async move {
            connection(conn, served, stop, throttles).await;
            drop(permit);
        });
    }
    drop(listener);
    if !conns.is_empty() {
        tracing::info!(listener = name, open = conns.len(), "draining connections");
        let all_done = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, all_done).await.is_err() {
            tracing::warn!(
                listener = name,
                open = conns.len(),
                "drain deadline passed; closing"
            );
            conns.shutdown().await;
        }
    }
    tracing::debug!(listener = name, "listener stopped");
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            Ok(Accepted::Tcp(s, peer))
        }
        Listener::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0)),
    }
}

async fn connection<S, B>(
    conn: Accepted,
    served: Arc<Served<S, B>>,
    stop: watch::Receiver<bool>,
    throttles: Arc<Throttles>,
) where
    S: Edge<B>,
    S::Future: Send + 'static,
    B: ResponseBody,
{
    let name = served.name;
    match conn {
        Accepted::Tcp(tcp, peer) => {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(listener = name, %peer, error = %e, "cannot set TCP_NODELAY");
            }
            let Some(tls) = &served.tls else {
                if served.plain {
                    drive(
                        tcp,
                        Identity::Anonymous,
                        Peer(Some(peer)),
                        false,
                        served,
                        stop,
                    )
                    .await;
                } else {
                    tracing::error!(listener = name, "TCP listener without TLS; closing");
                }
                return;
            };
            let limit = served.settings.handshake_timeout;
            // A TLS client starts with a handshake record (0x16); plain HTTP starts with a
            // method name. Answer the latter in words instead of failing the handshake.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limit, tcp.peek(&mut first)).await {
                Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
                    if let Some(hint) = &served.plain_http_hint {
                        plain_http(tcp, peer, hint, &served.settings, &throttles).await;
                    }
                    return;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) | Err(_) => {}
            }
            let acceptor = TlsAcceptor::from(tls.load_full());
            let stream = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    served
                        .metrics
                        .handshake_failures
                        .get_or_create(&crate::metrics::ReasonLabels {
                            listener: name,
                            reason: handshake_reason(&e),
                        })
                        .inc();
                    if let Some(suppressed) = throttles.handshake.hit() {
                        tracing::info!(listener = name, %peer, error = %e, suppressed, "TLS handshake refused");
                    }
                    return;
                }
                Err(_) => {
                    served
                        .metrics
                        .handshake_failures
                        .get_or_create(&crate::metrics::ReasonLabels {
                            listener: name,
                            reason: "timeout",
                        })
                        .inc();
                    if let Some(suppressed) = throttles.handshake.hit() {
                        tracing::info!(listener = name, %peer, suppressed, "TLS handshake timed out");
                    }
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let h2 = session.alpn_protocol() == Some(b"h2");
            let identity = match session.peer_certificates().and_then(|c| c.first()) {
                None if served.allow_anonymous => Identity::Anonymous,
                None => {
                    tracing::warn!(listener = name, %peer, "connection without a client certificate");
                    return;
                }
                Some(leaf) => match pki::cert_identity(leaf.as_ref()) {
                    Ok(cert) => {
                        tracing::debug!(listener = name, %peer, client = %cert.common_name, serial = %cert.serial, h2, "client connected");
                        Identity::Cert(Arc::new(cert))
                    }
                    Err(e) => {
                        tracing::warn!(listener = name, %peer, error = %e, "unreadable client certificate");
                        return;
                    }
                },
            };
            drive(stream, identity, Peer(Some(peer)), h2, served, stop).await;
        }
        Accepted::Unix(s) => {
            let id = match s.peer_cred() {
                Ok(c) => Identity::Unix {
                    uid: c.uid(),
                    gid: c.gid(),
                    pid: c.pid(),
                },
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "cannot read peer credentials; closing");
                    return;
                }
            };
            drive(s, id, Peer(None), true, served, stop).await;
        }
    }
}

/// Why a handshake failed, as a metrics label.
fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as E};
    match e.get_ref().and_then(|x| x.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::InvalidCertificate(CertificateError::UnknownIssuer)) => "unknown_ca",
        Some(E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "expired",
        Some(E::InvalidCertificate(CertificateError::Revoked)) => "revoked",
        Some(_) | None => "other",
    }
}

/// Answers a plain-HTTP request on a TLS port with a 400 that says what is wrong, logs the
/// same once per peer, and closes.
async fn plain_http(
    mut tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    hint: &str,
    s: &Settings,
    throttles: &Throttles,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read the request head (bounded in size and time) so the client sees an answer, not a
    // reset, then reply and close.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(s.header_read_timeout, read).await;
    if throttles.first_plain_http(peer.ip()) {
        let line = String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or(&[]))
            .chars()
            .take(120)
            .collect::<String>();
        tracing::warn!(%peer, request = %line, "plain HTTP on a TLS port: {hint}");
    }
    let body = format!("{hint}\n");
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// Per-connection timing, shared by the I/O wrapper, the request guards and the watchdog.
#[derive(Debug)]
struct ConnState {
    base: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds after `base` when bytes of a new request head first arrived while
    /// idle; `u64::MAX` when none did.
    head_started: AtomicU64,
    wake: Notify,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(NONE, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// When the connection must be closed unless something happens first; `None` while
    /// a request is in flight.
    fn deadline(&self, s: &Settings, h1: bool) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = |m: u64| self.base + Duration::from_millis(m);
        let idle = ms(self.idle_since.load(Ordering::Acquire)) + s.idle_timeout;
        let head = self.head_started.load(Ordering::Acquire);
        if h1 && head != NONE {
            return Some((ms(head) + s.header_read_timeout).min(idle));
        }
        Some(idle)
    }
}

/// A request in flight: held by the response body until it is sent or dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Release);
            self.0.wake.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O, noting when bytes of a new request arrive and counting bytes.
struct Watched<IO> {
    io: IO,
    state: Arc<ConnState>,
    bytes_in: prometheus_client::metrics::counter::Counter,
    bytes_out: prometheus_client::metrics::counter::Counter,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if matches!(r, Poll::Ready(Ok(()))) && n > 0 {
            self.state.on_read();
            self.bytes_in.inc_by(n as u64);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes_out.inc_by(n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes_out.inc_by(n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A hyper connection that can be asked to finish what is in flight and close.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn drive<IO, S, B>(
    io: IO,
    identity: Identity,
    peer: Peer,
    h2: bool,
    served: Arc<Served<S, B>>,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Edge<B>,
    S::Future: Send + 'static,
    B: ResponseBody,
{
    let state = Arc::new(ConnState::new());
    let m = &served.metrics;
    let listener = crate::metrics::ListenerLabels {
        listener: served.name,
    };
    let open = m.connections_open.get_or_create(&listener).clone();
    open.inc();
    let _open = scopeguard(open);
    let io = TokioIo::new(Watched {
        io,
        state: state.clone(),
        bytes_in: m.bytes_in.get_or_create(&listener).clone(),
        bytes_out: m.bytes_out.get_or_create(&listener).clone(),
    });
    let identity = Arc::new(identity);
    let svc = {
        let (served, state) = (served.clone(), state.clone());
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let guard = state.begin();
            let (served, identity) = (served.clone(), identity.clone());
            async move {
                let route = (served.route)(req.uri().path());
                if let Err(refusal) = served.gate.check(&identity) {
                    let reason = match refusal {
                        Refusal::Revoked { .. } => "revoked",
                        Refusal::Expired { .. } => "expired",
                        Refusal::TrustLapsed { .. } => "trust_lapsed",
                    };
                    served
                        .metrics
                        .refused_requests
                        .get_or_create(&crate::metrics::ReasonLabels {
                            listener: served.name,
                            reason,
                        })
                        .inc();
                    tracing::warn!(listener = served.name, caller = %identity, reason = %refusal, "request refused");
                    let mut resp = (served.refuse)(&refusal);
                    if !h2 {
                        // An HTTP/1 connection of a refused identity is of no further use.
                        resp.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    return Ok::<_, Infallible>(resp.map(|inner| Tracked {
                        inner,
                        _guard: guard,
                    }));
                }
                req.extensions_mut().insert((*identity).clone());
                req.extensions_mut().insert(peer);
                // The cores record the request id and peer in the audit log without
                // every door taking them; the client gets the id to quote.
                let ctx = crate::audit::Context::new(peer.0);
                let id = hyper::header::HeaderValue::from_str(&ctx.request_id).ok();
                let mut resp = ctx.scope(served.service.clone().oneshot(req)).await?;
                if let Some(id) = id {
                    resp.headers_mut().insert("x-request-id", id);
                }
                served
                    .metrics
                    .request(served.name, route, resp.status().as_u16());
                Ok(resp.map(|inner| Tracked {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    let s = &served.settings;
    let result = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(s.h2_max_concurrent_streams)
            .max_header_list_size(s.max_header_bytes);
        run(b.serve_connection(io, svc), &state, s, false, stop).await
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        // The header timeout is ours (from the first byte, not from idle), see ConnState.
        b.timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true);
        run(b.serve_connection(io, svc), &state, s, true, stop).await
    };
    if let Err(e) = result {
        tracing::debug!(listener = served.name, error = %e, "connection ended with an error");
    }
}

/// Drives a connection, closing it when its idle or header deadline passes, and closing
/// it gracefully when the listener stops.
async fn run<C: Graceful>(
    conn: C,
    state: &ConnState,
    s: &Settings,
    h1: bool,
    mut stop: watch::Receiver<bool>,
) -> Result<(), hyper::Error> {
    let mut conn = std::pin::pin!(conn);
    let mut draining = *stop.borrow();
    if draining {
        conn.as_mut().close_gracefully();
    }
    loop {
        let wake = state.wake.notified();
        let deadline = state.deadline(s, h1);
        let sleep =
            tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + s.idle_timeout));
        tokio::select! {
            r = conn.as_mut() => return r,
            () = sleep => {
                if let Some(d) = state.deadline(s, h1)
                    && d <= Instant::now()
                {
                    tracing::debug!(h1, "closing a connection past its idle or header deadline");
                    return Ok(());
                }
            }
            () = wake => {}
            _ = stop.wait_for(|s| *s), if !draining => {
                draining = true;
                conn.as_mut().close_gracefully();
            }
        }
    }
}

/// Decrements the open-connections gauge when the connection's task ends.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn scopeguard(g: prometheus_client::metrics::gauge::Gauge) -> OpenGuard {
    OpenGuard(g)
}
