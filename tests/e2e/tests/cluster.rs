//! Failure tests of a three-member control plane on separate hosts (network namespaces made by
//! the test): real `shoal server` and `shoal agent` processes, killed with SIGKILL and cut off
//! with nftables, driven by real kubectl and a kube-rs write load that records every write a
//! member acknowledged. Each test checks that every acknowledged write is present afterwards.
//! Needs root, iproute2 and nftables (the test command installs them).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_e2e::lan::{CLIENT, Lan, Proc};
use shoal_e2e::multi::{ControlPlane, WriteLoad, agent_args, api, configmaps};
use shoal_e2e::{GuestTarget, Registry, hello_guest, wait_until};

const LONG: Duration = Duration::from_secs(120);

fn servers(lan: &Lan, n: u8) -> Vec<String> {
    (1..=n).map(|i| api(lan, i)).collect()
}

/// Waits until `n` writes sent after `since` were acknowledged; returns when the first of
/// them was.
fn wait_acked_after(load: &WriteLoad, since: Instant, n: usize) -> Result<Instant> {
    wait_until(&format!("{n} acknowledged writes"), LONG, || {
        let after: Vec<Instant> = load
            .acked()
            .into_iter()
            .filter(|a| a.sent > since)
            .map(|a| a.acked)
            .collect();
        Ok((after.len() >= n).then(|| after.into_iter().min().unwrap_or(since)))
    })
}

fn assert_all_present(cp: &ControlPlane, lan: &Lan, member: u8, acked: &[String]) -> Result<()> {
    let present = wait_until(&format!("m{member} to list"), LONG, || {
        Ok(configmaps(cp, lan, member).ok())
    })?;
    let missing: Vec<&String> = acked.iter().filter(|k| !present.contains(*k)).collect();
    ensure!(
        missing.is_empty(),
        "m{member} lost {} acknowledged writes, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    Ok(())
}

#[test]
fn killing_the_leader_during_writes_loses_no_acknowledged_write() -> Result<()> {
    let lan = Lan::new(3)?;
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(&lan, 3, dir.path())?;
    let leader = cp.leader(&lan, 1)?;
    let load = WriteLoad::start(&lan, &cp.kubeconfig, servers(&lan, 3), 6);
    wait_acked_after(&load, Instant::now(), 100)?;

    let killed = Instant::now();
    cp.member(leader).kill9()?;
    // Writes resume through the survivors under a new leader.
    let first = wait_acked_after(&load, killed, 50)?;
    let survivor = (1..=3).find(|i| *i != leader).context("a survivor")?;
    let new_leader = cp.leader(&lan, survivor)?;
    ensure!(new_leader != leader, "the dead member is still the leader");
    println!(
        "failover: first write acknowledged {:?} after kill -9 of the leader m{leader}",
        first.saturating_duration_since(killed)
    );
    let failed = load.failed();
    let acked = load.stop()?;
    println!(
        "{} writes acknowledged, {failed} failed or unanswered",
        acked.len()
    );

    // The killed member comes back and catches up; no member misses an acknowledged write.
    cp.member(leader).restart(&lan)?;
    cp.wait_ready(&lan, leader)?;
    for i in 1..=3 {
        assert_all_present(&cp, &lan, i, &acked)?;
    }
    Ok(())
}

#[test]
fn a_partitioned_leader_stops_acknowledging_and_the_majority_goes_on() -> Result<()> {
    let lan = Lan::new(3)?;
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(&lan, 3, dir.path())?;
    let old = cp.leader(&lan, 1)?;
    let others: Vec<u8> = (1..=3).filter(|i| *i != old).collect();
    let load = WriteLoad::start(&lan, &cp.kubeconfig, servers(&lan, 3), 6);
    wait_acked_after(&load, Instant::now(), 50)
        .with_context(|| format!("{} failed; {}", load.failed(), cp.logs()))?;

    lan.partition(old, &others)?;
    let cut = Instant::now();
    // The majority elects a leader of its own and keeps acknowledging writes.
    let first = wait_acked_after(&load, cut, 50)
        .with_context(|| format!("{} failed; {}", load.failed(), cp.logs()))?;
    let new = cp.leader(&lan, others[0])?;
    ensure!(new != old, "the majority still follows the cut-off member");
    println!(
        "partition: the majority (leader m{new}) acknowledged writes again {:?} after the cut",
        first.saturating_duration_since(cut)
    );
    // The minority side refuses writes now: an error (503 without quorum, or 504), never an
    // acknowledgement and never a hang.
    let kubeconfig = cp.kubeconfig.clone();
    let minority = api(&lan, old);
    let refusals = lan
        .spawn_within(CLIENT, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                use k8s_openapi::api::core::v1::ConfigMap;
                let client = shoal_e2e::multi::client_at(&kubeconfig, &minority).await?;
                let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
                let mut codes = Vec::new();
                for n in 0..3 {
                    let cm: ConfigMap = serde_json::from_value(
                        serde_json::json!({"metadata": {"name": format!("minority-{n}")}}),
                    )?;
                    match api.create(&Default::default(), &cm).await {
                        Ok(_) => anyhow::bail!("the cut-off member acknowledged a write"),
                        Err(kube::Error::Api(e)) => codes.push(e.code),
                        Err(e) => anyhow::bail!("no answer from the cut-off member: {e}"),
                    }
                }
                Ok(codes)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("minority writer panicked"))??;
    ensure!(
        refusals.iter().all(|c| *c == 503 || *c == 504),
        "the minority refused with {refusals:?}"
    );

    lan.heal(old)?;
    let acked = load.stop()?;
    // One history: the old leader follows the new one and every member lists the same keys.
    wait_until("the healed member to follow the new leader", LONG, || {
        Ok(cp.leader(&lan, old).ok().filter(|l| *l != old))
    })?;
    let mut lists: Vec<BTreeSet<String>> = Vec::new();
    for i in 1..=3 {
        assert_all_present(&cp, &lan, i, &acked)?;
        lists.push(configmaps(&cp, &lan, i)?);
    }
    ensure!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "members disagree after healing"
    );
    // A 503 means the write was not taken: it must not show up after healing.
    for (n, code) in refusals.iter().enumerate() {
        ensure!(
            *code != 503 || !lists[0].contains(&format!("minority-{n}")),
            "minority-{n} was refused with 503 but applied"
        );
    }
    let _ = cp.member(old);
    Ok(())
}

#[test]
fn all_members_stopped_at_once_come_back_with_all_data() -> Result<()> {
    let lan = Lan::new(3)?;
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(&lan, 3, dir.path())?;
    let load = WriteLoad::start(&lan, &cp.kubeconfig, servers(&lan, 3), 4);
    wait_acked_after(&load, Instant::now(), 200)?;
    let acked = load.stop()?;
    for i in 1..=3 {
        cp.member(i).kill9()?;
    }
    for i in 1..=3 {
        cp.member(i).restart(&lan)?;
    }
    for i in 1..=3 {
        cp.wait_ready(&lan, i)?;
    }
    for i in 1..=3 {
        assert_all_present(&cp, &lan, i, &acked)?;
    }
    Ok(())
}

fn running(cp: &ControlPlane, lan: &Lan, via: u8, selector: &str) -> Result<Vec<String>> {
    let list: Value = serde_json::from_str(&cp.kubectl(
        lan,
        via,
        &["get", "pods", "-n", "default", "-l", selector, "-o", "json"],
    )?)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}

fn deployment(name: &str, image: &str, replicas: u32) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "hello", "image": image}]},
            },
        },
    })
    .to_string()
}

fn apply(cp: &ControlPlane, lan: &Lan, via: u8, manifest: &str) -> Result<()> {
    use std::io::Write;
    let mut child = lan
        .command(CLIENT, "kubectl")
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(["--server", &api(lan, via), "apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl apply via m{via}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn wait_running(cp: &ControlPlane, lan: &Lan, via: u8, app: &str, n: usize) -> Result<Vec<String>> {
    wait_until(&format!("{n} running {app} pods"), LONG, || {
        let pods = running(cp, lan, via, &format!("app={app}")).unwrap_or_default();
        Ok((pods.len() == n).then_some(pods))
    })
}

/// An agent on a fourth host joins with the token, runs pods from a registry on its own host,
/// keeps them running while a member is down, and the scheduler and controllers move to
/// another member when the one holding their Leases is killed.
#[test]
fn an_agent_joins_and_workloads_survive_member_and_lease_holder_loss() -> Result<()> {
    let lan = Lan::new(4)?;
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(&lan, 3, dir.path())?;

    // The agent's host has its own registry (on its own loopback).
    let registry = Registry::start_in(Some(&lan.ns(4)), 5000);
    let wasm = hello_guest(GuestTarget::P2);
    let image = registry.reference("hello", "v1");
    let out = lan
        .command(4, shoal_e2e::shoal_bin())
        .arg("push")
        .arg(&wasm)
        .arg(&image)
        .output()?;
    ensure!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong token is refused with a clear message and a non-zero exit.
    // (The last character changes to one it is not, so the secret is always wrong.)
    let (head, last) = cp.token.split_at(cp.token.len() - 1);
    let wrong = format!("{head}{}", if last == "a" { "b" } else { "a" });
    let mut bad = Proc::start(
        &lan,
        4,
        &agent_args(&lan, 4, 1, &dir.path().join("bad-agent"), &wrong),
        &dir.path().join("bad-agent.log"),
    )?;
    let status = bad.wait_exit(LONG)?;
    ensure!(!status.success(), "an agent with a wrong token started");
    ensure!(
        bad.log_tail().contains("token was refused"),
        "unclear refusal: {}",
        bad.log_tail()
    );

    let _agent = Proc::start(
        &lan,
        4,
        &agent_args(&lan, 4, 1, &dir.path().join("agent"), &cp.token),
        &dir.path().join("agent.log"),
    )?;
    wait_until("node n4 to be Ready", LONG, || {
        let nodes: Value =
            serde_json::from_str(&cp.kubectl(&lan, 2, &["get", "nodes", "-o", "json"])?)?;
        Ok(nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| {
                n["metadata"]["name"] == "n4"
                    && n["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .then_some(()))
    })?;

    apply(&cp, &lan, 2, &deployment("hello", &image, 2))?;
    let before = wait_running(&cp, &lan, 2, "hello", 2)?;
    // Logs come from the agent on host 4 through a member: HTTPS both ways, the agent under
    // the serving certificate it got through a CSR.
    let logs = wait_until("the pod's logs", LONG, || {
        Ok(cp
            .kubectl(&lan, 2, &["logs", &before[0]])
            .ok()
            .filter(|l| l.contains("Hello from Shoal!")))
    })?;
    ensure!(logs.contains("args:"), "logs: {logs}");
    let csrs = cp.kubectl(&lan, 1, &["get", "csr", "-o", "json"])?;
    ensure!(
        csrs.contains("kubernetes.io/kubelet-serving") && csrs.contains("AutoApproved"),
        "no approved serving certificate request: {csrs}"
    );

    // One member down: the pods keep running and the cluster still scales.
    let down = 3;
    cp.member(down).kill9()?;
    apply(&cp, &lan, 2, &deployment("hello", &image, 3))?;
    let during = wait_running(&cp, &lan, 2, "hello", 3)?;
    ensure!(
        before.iter().all(|p| during.contains(p)),
        "pods were replaced while a member was down: {before:?} -> {during:?}"
    );
    cp.member(down).restart(&lan)?;
    cp.wait_ready(&lan, down)?;

    // Kill whoever holds the controller manager's Lease; a new Deployment still gets its pods.
    let holder = cp.lease_holder(&lan, 1, "kube-controller-manager")?;
    let via = (1..=3).find(|i| *i != holder).context("another member")?;
    let killed = Instant::now();
    cp.member(holder).kill9()?;
    apply(&cp, &lan, via, &deployment("after", &image, 2))?;
    wait_running(&cp, &lan, via, "after", 2)?;
    println!(
        "controllers moved off m{holder}: new Deployment running {:?} after the kill",
        killed.elapsed()
    );
    let new_holder = cp.lease_holder(&lan, via, "kube-controller-manager")?;
    ensure!(
        new_holder != holder,
        "the dead member still holds the lease"
    );
    // The earlier pods are untouched.
    let still = running(&cp, &lan, via, "app=hello")?;
    ensure!(still.len() == 3, "hello pods after the kill: {still:?}");
    drop(registry);
    Ok(())
}

fn shoal_cli(lan: &Lan, cp: &ControlPlane, args: &[&str]) -> Result<std::process::Output> {
    Ok(lan
        .command(CLIENT, shoal_e2e::shoal_bin())
        .args(args)
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .output()?)
}

/// `shoal member list|remove`; a removed member's data dir cannot rejoin; joining an
/// unreachable address or mixing two clusters' data fails with a clear message.
#[test]
fn members_are_listed_and_removed_and_strangers_are_refused() -> Result<()> {
    let lan = Lan::new(3)?;
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(&lan, 3, dir.path())?;
    let out = shoal_cli(&lan, &cp, &["member", "list"])?;
    ensure!(
        out.status.success(),
        "member list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8(out.stdout)?;
    for name in ["m1", "m2", "m3", "leader"] {
        ensure!(list.contains(name), "member list lacks {name}:\n{list}");
    }

    let out = shoal_cli(&lan, &cp, &["member", "remove", "m3"])?;
    ensure!(
        out.status.success(),
        "member remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8(shoal_cli(&lan, &cp, &["member", "list"])?.stdout)?;
    ensure!(!list.contains("m3"), "m3 still listed:\n{list}");
    cp.kubectl(&lan, 1, &["create", "configmap", "after-removal"])?;

    // The removed member, started again on its data dir, stops with the reason.
    cp.member(3).kill9()?;
    cp.member(3).restart(&lan)?;
    let status = cp.member(3).wait_exit(LONG)?;
    ensure!(!status.success(), "the removed member started");
    ensure!(
        cp.member(3).log_tail().contains("removed"),
        "unclear refusal: {}",
        cp.member(3).log_tail()
    );

    // Joining an address where nothing listens: a clear error and a non-zero exit.
    let stray = dir.path().join("stray");
    let mut p = Proc::start(
        &lan,
        3,
        &[
            "server".into(),
            "--data-dir".into(),
            stray.display().to_string(),
            "--listen".into(),
            format!("{}:6443", lan.ip(3)),
            "--join".into(),
            format!("https://{}:6443", lan.ip(2)).replace(":6443", ":6999"),
            "--token".into(),
            cp.token.clone(),
        ],
        &dir.path().join("stray.log"),
    )?;
    ensure!(!p.wait_exit(LONG)?.success(), "a join to nowhere succeeded");
    ensure!(
        p.log_tail().contains("cannot reach"),
        "unclear error: {}",
        p.log_tail()
    );

    // A data dir of another cluster, pointed at this one: refused.
    let other = dir.path().join("other");
    let other_args = |join: bool| {
        let mut a: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            other.display().to_string(),
            "--listen".into(),
            format!("{}:6443", lan.ip(3)),
        ];
        if join {
            a.extend([
                "--join".into(),
                format!("https://{}:6443", lan.ip(1)),
                "--token".into(),
                cp.token.clone(),
            ]);
        }
        a
    };
    let mut own = Proc::start(&lan, 3, &other_args(false), &dir.path().join("other.log"))?;
    wait_until("the other cluster's token", LONG, || {
        Ok(other.join("token").exists().then_some(()))
    })?;
    own.kill9()?;
    let mut mixed = Proc::start(&lan, 3, &other_args(true), &dir.path().join("mixed.log"))?;
    ensure!(
        !mixed.wait_exit(LONG)?.success(),
        "two clusters' data were mixed"
    );
    ensure!(
        mixed.log_tail().contains("another cluster"),
        "unclear refusal: {}",
        mixed.log_tail()
    );
    Ok(())
}
