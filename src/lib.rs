//! berth: secure-by-default private container registries.
//!
//! The library holds everything; the two binaries are thin edges over it. `berthd` turns
//! flags and a config file into a [`config::Config`] and runs a [`daemon::Daemon`];
//! `berth` parses a command line and drives a [`client::Client`].
//!
//! # Layout
//!
//! | module | role | may use |
//! |---|---|---|
//! | [`fsutil`] | atomic writes (temp file, fsync, rename, fsync dir), modes set at creation | std |
//! | [`identity`] | [`identity::Identity`]: who asks (unix peer, verified certificate, berthd) | — |
//! | [`events`] | push/pull/delete events, emitted by cores only, bounded broadcast | `identity` |
//! | [`audit`] | the audit log: every mutation and denial, recorded by the cores, durable before the answer | `identity`, `fsutil` |
//! | [`doctor`] | why docker, podman or containerd will refuse a registry: files and a live probe | `certsd` |
//! | [`metrics`] | one daemon's Prometheus metrics, counted by `net` and the registry core | — |
//! | [`pki`] | CA, issue, CSR signing, index, CRL, inspect (rcgen, x509-parser); `pki::Settings` | `fsutil`, `identity` |
//! | [`certsd`] | docker/containers `certs.d` installer: plan, stage, commit, record | `pki`, `fsutil` |
//! | [`registry`] | the registry core behind one door, [`registry::Registry`]; its storage (private) is registry:2 keys over a driver (fs, memory) | `fsutil`, `identity`, `events` |
//! | [`config`] | composes every module's `Settings`, embedded defaults, TOML `version = 1` | the cores' settings |
//! | [`net`] | the one network edge: accept loop, limits, timeouts, drain, TLS, per-request identity check | cores |
//! | [`oci`] | the distribution API over axum; calls only the registry's door | `registry`, `net` |
//! | [`proto`] | generated tonic/prost code, and every domain <-> wire mapping (`proto::convert`) | domain types |
//! | [`daemon`] | lock, listeners, who is an admin, tonic services mapping domain errors to `Status` | everything above |
//! | [`client`] | the control API seen as domain types, errors that say what to do; `client::host`: a client host's join, records and renewal | `proto`, `certsd`, domain types |
//!
//! Dependencies point inward: the cores (`pki`, `certsd`, `registry`, `identity`, `events`,
//! `fsutil`) never name tonic, prost, axum, hyper, the edges or `config`;
//! `tests/layering.rs` enforces it, and `registry`'s storage is private, so an edge that
//! tried to bypass the door would not compile.
//!
//! # How a request flows
//!
//! `berth cert issue client --name ci-bot` builds a [`client::IssueRequest`]; the client
//! dials the unix socket; [`net::serve`] reads the peer's uid/gid (SO_PEERCRED) into an
//! [`identity::Identity`] on every request; the daemon's guard gives that identity a role
//! (admin, issuer, viewer) and refuses a call outside it; the PKI service runs [`pki::Pki::issue`] on a blocking
//! thread, which signs with the CA and writes the index and the held key through
//! [`fsutil::write_atomic`]. A failure travels as `pki::Error` -> `tonic::Status` (one
//! exhaustive mapping in the daemon) -> [`client::Error`] -> a CLI message with a hint.
//!
//! `skopeo copy ... docker://registry.example.internal:5443/team/app:1.0`: [`net::serve`]
//! accepts (TCP_NODELAY, connection cap, back-off), completes a rustls handshake that
//! requires a client certificate from the berth CA (and checks the CRL), and puts the
//! verified certificate on every request as an `Identity`, re-checked against the live
//! revocation list and its expiry by the [`net::Gate`] before the request reaches the edge;
//! the [`oci`] router parses the single `/v2/{*rest}` route into a `Route` (names contain
//! `/`); the handler calls the [`registry::Registry`] door with that identity, which runs
//! storage (keys -> driver: the body streams to `_uploads/<id>/data` while it is hashed, is
//! verified, made durable and moved into `blobs/`) and emits the event; the handler sets
//! `Location`, `Docker-Content-Digest` and `Range`. Errors travel `registry::Error` -> the
//! OCI error table (one exhaustive match) -> `{"errors":[...]}` with the right status.
#![forbid(unsafe_code)]

pub mod audit;
pub mod certsd;
pub mod client;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod fsutil;
mod humantime_serde;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod oci;
pub mod pki;
pub mod proto;
pub mod registry;

/// Property tests of every parser a peer can reach (crate-wide, so they live at the root).
#[cfg(test)]
mod tests;
