//! Code generation only: the SyncService stubs (tonic-prost-build) and the
//! descriptor set that reflection serves. protoc comes from protoc-bin-vendored
//! so a fresh machine needs no system package; `PROTOC` overrides it.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let wkt_include = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("synckairos_descriptor.bin"))
        .compile_with_config(
            config,
            &[PathBuf::from("proto/synckairos/v1/sync.proto")],
            &[PathBuf::from("proto"), wkt_include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
