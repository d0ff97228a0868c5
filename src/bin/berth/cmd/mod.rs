//! One module per noun of the command line.

pub mod audit;
pub mod ca;
pub mod cert;
pub mod certs;
pub mod doctor;
pub mod events;
pub mod host;
pub mod image;
pub mod join;
pub mod policy;
pub mod registry;
pub mod replica;
pub mod system;
pub mod token;
