//! Generates the Keeper gRPC stubs (used with the `tonic` feature). protoc
//! comes vendored, so the build needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/keeper.proto");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TONIC").is_none() {
        return Ok(());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry a share get a hand-written Debug without it
    // (sdk/src/keeper_api.rs): one `?request` in a log line must not print
    // a share.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug([
            ".spike.keeper.v1.StoreShareRequest",
            ".spike.keeper.v1.FetchShareResponse",
        ])
        .compile_with_config(config, &["proto/keeper.proto"], &["proto"])?;
    Ok(())
}
