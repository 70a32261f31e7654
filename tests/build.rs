//! The tests speak the cluster protocol as an outsider would, from the
//! same proto file the replicas use.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../nexus/proto/cluster.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_with_config(
            config,
            &["../nexus/proto/cluster.proto"],
            &["../nexus/proto"],
        )?;
    Ok(())
}
