//! Generated gRPC code for `proto/berth/v1`. Nothing hand-written lives here.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("berth.v1");

/// Encoded descriptors of every berth proto, served by gRPC reflection so `grpcurl` works
/// without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));
