//! `shoal member list|remove`: the control-plane members (raft voters) of the cluster the
//! kubeconfig points at. A removed member is refused by the others for good; its data dir
//! cannot rejoin (start it on a fresh one to join again).

use anyhow::{Context, Result};
use shoal_apiserver::MemberList;

use crate::client::{self, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the members, their addresses and the leader.
    List,
    /// Remove a member, by id or name.
    Remove { member: String },
}

fn print(list: &MemberList) {
    println!(
        "{:<18} {:<20} {:<24} {:<28} ROLE",
        "ID", "NAME", "RAFT", "API"
    );
    for m in &list.members {
        let role = match (m.leader, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        println!(
            "{:<18} {:<20} {:<24} {:<28} {role}",
            m.id, m.name, m.raft_address, m.api_url
        );
    }
}

pub async fn run(args: Args) -> Result<()> {
    let (client, _) = client::connect(&args.client).await?;
    let text = match &args.command {
        Command::List => {
            client::send(
                &client,
                http::Method::GET,
                "/shoal/v1/members",
                None,
                None,
                Vec::new(),
            )
            .await?
        }
        Command::Remove { member } => client::send(
            &client,
            http::Method::DELETE,
            &format!("/shoal/v1/members/{member}"),
            None,
            None,
            Vec::new(),
        )
        .await
        .with_context(|| format!("removing member {member}"))?,
    };
    let list: MemberList = serde_json::from_str(&text).context("reading the member list")?;
    print(&list);
    Ok(())
}
