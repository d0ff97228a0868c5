//! Generated gRPC code for `proto/berth/v1`, and the domain <-> wire mappings shared by the
//! daemon and the client.

pub(crate) mod convert;

mod generated {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("berth.v1");
}
pub use generated::*;

/// Encoded descriptors of every berth proto, served by gRPC reflection so `grpcurl` works
/// without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));
