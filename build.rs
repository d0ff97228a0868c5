//! Compiles `proto/` with protox (pure Rust), so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/berth/v1/system.proto",
        "proto/berth/v1/pki.proto",
        "proto/berth/v1/certs.proto",
        "proto/berth/v1/registry.proto",
        "proto/berth/v1/enrol.proto",
        "proto/berth/v1/audit.proto",
        "proto/berth/v1/replica.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    // The encoded descriptor set feeds tonic-reflection, so grpcurl works without .proto files.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("berth_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    // compile_fds knows no file paths, so nothing emits rerun-if-changed for us.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
