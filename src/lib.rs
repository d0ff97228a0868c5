//! berth: secure-by-default private container registries.
#![forbid(unsafe_code)]

pub mod certsd;
pub mod client;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod pki;
pub mod proto;
