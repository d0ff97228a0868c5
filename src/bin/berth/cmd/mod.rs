//! One module per noun of the command line.

pub mod ca;
pub mod cert;
pub mod certs;
pub mod system;
