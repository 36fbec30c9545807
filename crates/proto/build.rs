//! Generates the gRPC code from `proto/` with a protoc shipped as a crates.io package, so a
//! fresh machine needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("custos/cluster/v1/cluster.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_build::configure().compile_protos(&[file], &[root])?;
    Ok(())
}
