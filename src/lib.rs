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
//! | [`config`] | `Config` with embedded defaults, TOML `version = 1`, unknown keys rejected | `pki` key names |
//! | [`pki`] | CA, issue, CSR signing, index, CRL, inspect (rcgen, x509-parser) | `fsutil` |
//! | [`certsd`] | docker/containers `certs.d` installer: plan, stage, commit, record | `pki`, `fsutil` |
//! | [`registry`] | embedded OCI registry: names/digests, manifests, registry:2-layout storage, and `registry::http` (axum, OCI error table, rustls with client identity) | `fsutil`, `pki` (identity decoding) |
//! | [`proto`] | generated tonic/prost code for `proto/berth/v1` (built by protox in build.rs), and the wire mappings both ends share | — |
//! | [`daemon`] | lock, listeners, peer authorisation, tonic services mapping domain errors to `Status` | everything above |
//! | [`client`] | the control API seen as domain types, errors that say what to do | `proto`, domain types |
//!
//! Dependencies point inward: `pki`, `certsd`, `fsutil` and `config` never name tonic,
//! prost, hyper or the daemon (`tests/layering.rs` enforces it), so they can be tested and
//! reused without a transport.
//!
//! # How a request flows
//!
//! `berth cert issue client --name ci-bot` builds a [`client::IssueRequest`]; the client
//! dials the unix socket; the daemon's interceptor reads the peer's uid/gid (SO_PEERCRED)
//! and either records a `Caller` or answers PermissionDenied; the PKI service runs
//! [`pki::Pki::issue`] on a blocking thread, which signs with the CA and writes the index
//! and the held key through [`fsutil::write_atomic`]. A failure travels as `pki::Error` ->
//! `tonic::Status` (one exhaustive mapping in the daemon) -> [`client::Error`] -> a CLI
//! message with a hint.
//!
//! `skopeo copy ... docker://localhost:5443/team/app:1.0`: the registry listener completes a
//! rustls handshake that requires a client certificate from the berth CA (and checks the
//! CRL); the verified certificate becomes a `ClientIdentity` on every request; the single
//! `/v2/{*rest}` route is parsed into a `Route` (names contain `/`); the handler calls
//! [`registry::Registry`], whose storage streams the body to `_uploads/<id>/data` while
//! hashing, then verifies, fsyncs and renames into `blobs/`; the handler sets `Location`,
//! `Docker-Content-Digest` and `Range`. Errors travel `registry::Error` -> the OCI error
//! table (one exhaustive match) -> `{"errors":[...]}` with the right status.
#![forbid(unsafe_code)]

pub mod certsd;
pub mod client;
pub mod config;
pub mod daemon;
pub mod events;
pub mod fsutil;
pub mod identity;
pub mod net;
pub mod oci;
pub mod pki;
pub mod proto;
pub mod registry;
