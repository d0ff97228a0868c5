//! The one network edge: every TCP listener berthd has (the registry, the control API)
//! and the control socket go through [`serve`], one accept loop with one set of limits, and
//! their TLS comes from [`tls`]. Here, and only here, a connection becomes requests that
//! carry an [`Identity`](crate::identity::Identity), and that identity is checked against
//! the live revocation list and its expiry on every request, not once per connection.

mod serve;
mod settings;
pub mod tls;

pub use serve::{Listener, Peer, Refusal, Served, raise_fd_limit, serve};
pub use settings::Settings;
pub use tls::Gate;
