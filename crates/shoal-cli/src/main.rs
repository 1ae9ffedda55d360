//! `shoal`: the one binary. Parses the command line and hands off to one module per
//! subcommand; this is the only `main` in the workspace and the only place that installs the
//! tracing subscriber and the rustls crypto provider.

mod apply;
mod client;
mod delete;
mod get;
mod logs;
mod push;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Kubernetes-compatible orchestrator for WebAssembly pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run store, apiserver, scheduler, controllers and a node agent in one process.
    Up(up::Args),
    /// Push a .wasm file to an OCI registry as a Wasm artifact.
    Push(push::Args),
    /// Create or update objects from a YAML/JSON manifest.
    Apply(apply::Args),
    /// List or show objects.
    Get(get::Args),
    /// Delete objects.
    Delete(delete::Args),
    /// Print a container's logs.
    Logs(logs::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Up(_)));
    // The OCI client uses rustls without a default provider: install ring once, up front.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Push(args) => push::run(args).await,
            Command::Apply(args) => apply::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Delete(args) => delete::run(args).await,
            Command::Logs(args) => logs::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(server: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if server {
        "info,openraft=warn,kube=warn,tower=warn,hyper=warn,cranelift=warn,wasmtime=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
