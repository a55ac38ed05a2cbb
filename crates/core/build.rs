//! Compiles `proto/shardprep.proto` (at the workspace root) into Rust with tonic/prost.
//! Uses a vendored `protoc` unless the user set `PROTOC`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("shardprep.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    tonic_prost_build::configure().compile_protos(&[proto], &[proto_dir])?;
    Ok(())
}
