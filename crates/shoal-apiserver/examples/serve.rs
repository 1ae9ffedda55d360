//! Serves the apiserver over a store in a temporary folder, for driving with real kubectl:
//! `cargo run -p shoal-apiserver --example serve -- 127.0.0.1:18080`.

use std::net::SocketAddr;

use shoal_apiserver::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".to_string())
        .parse()?;
    let dir = tempfile::tempdir()?;
    let store = shoal_store::Store::open(dir.path()).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let config = Config {
        listen,
        ..Config::default()
    };
    println!("serving on http://{listen}");
    shoal_apiserver::run(config, store, shutdown).await?;
    Ok(())
}
