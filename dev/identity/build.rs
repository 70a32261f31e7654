//! Generates the Workload API server stubs. protoc comes vendored, so the
//! build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/workload.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/workload.proto");
    Ok(())
}
