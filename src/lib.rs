//! berth: secure-by-default private container registries.
#![forbid(unsafe_code)]

pub mod certsd;
pub mod config;
pub mod fsutil;
pub mod pki;
