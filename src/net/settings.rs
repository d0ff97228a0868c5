//! Limits and timeouts of the network edge (`[net]` in the config file). Durations are
//! written the way people say them (`"30s"`, `"2m"`, `"500ms"`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every limit of [`serve`](super::serve), with the defaults the README documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Open connections per listener above which new ones are closed at accept and
    /// counted; 0 sizes it from the file-descriptor limit (half of what is left after a
    /// reserve, because a blob transfer holds a file open beside its socket).
    pub max_connections: usize,
    /// How long a client may take to complete the TLS handshake.
    #[serde(with = "crate::humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long an HTTP/1 client may take to send a request's headers, counted from the
    /// first byte (slow-header attacks hold a connection with a byte at a time).
    #[serde(with = "crate::humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no request in flight before it is closed.
    #[serde(with = "crate::humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a request body (a blob upload) may make no progress before the request
    /// ends; the upload keeps what arrived and can be resumed.
    #[serde(with = "crate::humantime_serde")]
    pub body_stall_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Largest header block one request may send, in bytes (HTTP/2; HTTP/1 is bounded
    /// by hyper's read buffer).
    pub max_header_bytes: u32,
    /// On shutdown, how long requests in flight may take to finish before their
    /// connections are closed.
    #[serde(with = "crate::humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_connections: 0,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_stall_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 256,
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// The connection cap in force: the configured one, or one sized from `fd_limit`.
    pub fn connection_cap(&self, fd_limit: u64) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let usable = fd_limit.saturating_sub(64) / 2;
        usize::try_from(usable.clamp(16, 65_536)).unwrap_or(65_536)
    }
}
