//! Generates the gRPC code of the replica-to-replica protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto/raft.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/raft.proto"], &["proto"])
        .map_err(|e| {
            format!(
                "compiling proto/raft.proto (is protoc installed? run `cargo xtask setup`): {e}"
            )
        })?;
    Ok(())
}
