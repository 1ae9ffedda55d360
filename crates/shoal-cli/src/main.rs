//! `shoal`: the one binary. Parses the command line and hands off to one module per
//! subcommand; this is the only `main` in the workspace and the only place that installs the
//! tracing subscriber and the rustls crypto provider.

mod agent;
mod apply;
mod balancer;
mod client;
mod delete;
mod get;
mod http;
mod leader;
mod logs;
mod member;
mod pki;
mod process;
mod push;
mod server;
mod simulate;
mod token;
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
    /// Run a control-plane member and a node agent in one process (a one-machine cluster).
    Up(up::Args),
    /// Run a control-plane member: store, apiserver, scheduler and controllers.
    Server(server::ServerArgs),
    /// Run a node agent that joins a cluster.
    Agent(agent::Args),
    /// Manage join tokens.
    Token(token::Args),
    /// List or remove control-plane members.
    Member(member::Args),
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
    /// Run simulated nodes (heartbeating, reporting their pods Running) for scale tests.
    Simulate(simulate::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(
        cli.command,
        Command::Up(_) | Command::Server(_) | Command::Agent(_) | Command::Simulate(_)
    ));
    // rustls is built without a default provider: install ring once, up front.
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
            Command::Server(args) => server::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Member(args) => member::run(args).await,
            Command::Push(args) => push::run(args).await,
            Command::Apply(args) => apply::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Delete(args) => delete::run(args).await,
            Command::Logs(args) => logs::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
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
    // openraft logs every unreachable peer as an error; the store reports leadership itself.
    let default = if server {
        "info,openraft=off,kube=warn,tower=warn,hyper=warn,cranelift=warn,wasmtime=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
