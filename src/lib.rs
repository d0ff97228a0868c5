//! berth: secure-by-default private container registries.
#![forbid(unsafe_code)]

pub mod certsd;
pub mod config;
pub mod fsutil;
pub mod pki;
pub mod daemon;
pub mod proto;
pub mod client;
