//! `shoal delete KIND NAME...`: deletes objects with background propagation, as kubectl does.

use anyhow::Result;

use crate::client::{self, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource type (`pods`, `deploy`, ...).
    pub resource: String,
    /// Names of the objects to delete.
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let rt = client::resolve(&args.resource)?;
    let (api, namespace) = client::connect(&args.client).await?;
    let body = serde_json::to_vec(&serde_json::json!({
        "kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"
    }))?;
    for name in &args.names {
        let path = client::object_path(rt, &namespace, name);
        client::send(
            &api,
            http::Method::DELETE,
            &path,
            Some("application/json"),
            None,
            body.clone(),
        )
        .await?;
        println!("{} \"{name}\" deleted", rt.singular);
    }
    Ok(())
}
