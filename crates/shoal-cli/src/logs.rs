//! `shoal logs POD [-c CONTAINER] [-f]`: prints a container's output through the apiserver's
//! `pods/log` subresource (which proxies to the node agent).

use anyhow::Result;
use futures::AsyncBufReadExt;
use futures::StreamExt;

use crate::client::{self, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pod name.
    pub pod: String,
    /// Container name (required when the pod has more than one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Output of the previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let (api, namespace) = client::connect(&args.client).await?;
    let mut query = vec![];
    if let Some(container) = &args.container {
        query.push(format!("container={container}"));
    }
    if args.follow {
        query.push("follow=true".to_string());
    }
    if args.previous {
        query.push("previous=true".to_string());
    }
    if let Some(tail) = args.tail {
        query.push(format!("tailLines={tail}"));
    }
    if args.timestamps {
        query.push("timestamps=true".to_string());
    }
    let path = format!(
        "/api/v1/namespaces/{namespace}/pods/{}/log?{}",
        args.pod,
        query.join("&")
    );
    let request = http::Request::get(path).body(Vec::new())?;
    let reader = api.request_stream(request).await.map_err(|err| match err {
        kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
        other => anyhow::Error::new(other),
    })?;
    let mut lines = reader.lines();
    while let Some(line) = lines.next().await {
        println!("{}", line?);
    }
    Ok(())
}
