fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the vendored protoc so a fresh machine needs no system protobuf compiler.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(&["proto/plateflow.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/plateflow.proto");
    Ok(())
}
