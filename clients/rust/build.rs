//! Generates the message types and the gRPC clients from the same `.proto` files the Python
//! server is built from (`proto/cardmint/v1/*.proto`). `protox` parses them in pure Rust, so
//! the build needs no `protoc` on the machine; `tonic-prost-build` turns the resulting
//! descriptor set into Rust, client side only.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    let dir = root.join("cardmint/v1");
    let protos = proto_files(&dir)?;
    if protos.is_empty() {
        return Err(format!("no .proto files in {}", dir.display()).into());
    }
    // Every service file of the package, so that a service added later is generated too.
    println!("cargo:rerun-if-changed={}", dir.display());
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let fds = protox::compile(&protos, [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

fn proto_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    // read_dir's order is the file system's: sort, so the generated code never depends on it.
    files.sort();
    Ok(files)
}
