//! `shoal push FILE.wasm REF`: uploads a Wasm module or component as a CNCF Wasm OCI artifact
//! and prints the manifest digest. Registries on loopback are reached over plain HTTP.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .wasm file (a WASI component or core module).
    pub file: PathBuf,
    /// Where to push it, e.g. 127.0.0.1:5000/hello:v1.
    pub reference: String,
}

pub async fn run(args: Args) -> Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let digest = shoal_runtime_wasm::oci::push(bytes, &args.reference)
        .await
        .with_context(|| format!("pushing {} to {}", args.file.display(), args.reference))?;
    println!("{digest}");
    Ok(())
}
