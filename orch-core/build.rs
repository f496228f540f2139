//! Generates the gRPC code of orch's API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto/api.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/api.proto"], &["proto"])
        .map_err(|e| {
            format!("compiling proto/api.proto (is protoc installed? run `cargo xtask setup`): {e}")
        })?;
    Ok(())
}
