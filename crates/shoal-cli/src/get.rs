//! `shoal get KIND [NAME]`: prints the server-side Table (the same columns kubectl shows), or
//! the object as JSON/YAML with `-o`.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::client::{self, ClientArgs};

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource type (`pods`, `po`, `deployments`, `nodes`...).
    pub resource: String,
    /// Object name; all objects when absent.
    pub name: Option<String>,
    /// Output format: table (default), wide, json, yaml.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. app=hello.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let rt = client::resolve(&args.resource)?;
    let (api, namespace) = client::connect(&args.client).await?;
    let mut path = match &args.name {
        Some(name) => client::object_path(rt, &namespace, name),
        None if args.all_namespaces => client::collection_path(rt, None),
        None => client::collection_path(rt, Some(&namespace)),
    };
    if let Some(selector) = &args.selector {
        path.push_str(&format!("?labelSelector={}", urlencode(selector)));
    }
    match args.output.as_str() {
        "json" | "yaml" => {
            let body = client::send(&api, http::Method::GET, &path, None, None, Vec::new()).await?;
            let value: Value = serde_json::from_str(&body).context("decoding the response")?;
            if args.output == "json" {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!(
                    "{}",
                    serde_saphyr::to_string(&value).context("encoding YAML")?
                );
            }
        }
        "table" | "wide" => {
            let body = client::send(
                &api,
                http::Method::GET,
                &path,
                None,
                Some(TABLE_ACCEPT),
                Vec::new(),
            )
            .await?;
            let table: Value = serde_json::from_str(&body).context("decoding the table")?;
            print_table(
                &table,
                args.output == "wide",
                args.all_namespaces && rt.namespaced,
            );
        }
        other => bail!("unknown output format {other:?}: use table, wide, json or yaml"),
    }
    Ok(())
}

fn print_table(table: &Value, wide: bool, with_namespace: bool) {
    let empty = Vec::new();
    let columns = table["columnDefinitions"].as_array().unwrap_or(&empty);
    let rows = table["rows"].as_array().unwrap_or(&empty);
    if rows.is_empty() {
        eprintln!("No resources found.");
        return;
    }
    let shown: Vec<usize> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = shown
        .iter()
        .map(|&i| {
            columns[i]["name"]
                .as_str()
                .unwrap_or("")
                .to_ascii_uppercase()
        })
        .collect();
    if with_namespace {
        header.insert(0, "NAMESPACE".to_string());
    }
    lines.push(header);
    for row in rows {
        let cells = row["cells"].as_array().unwrap_or(&empty);
        let mut line: Vec<String> = shown
            .iter()
            .map(|&i| match cells.get(i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "<none>".to_string(),
                Some(other) => other.to_string(),
            })
            .collect();
        if with_namespace {
            let ns = row["object"]["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            line.insert(0, ns);
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for line in lines {
        let text: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        println!("{}", text.join("   ").trim_end());
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
