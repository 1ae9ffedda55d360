//! End-to-end: a `wasi:http/proxy` component in a Deployment (`examples/http-hello`) on a
//! one-binary cluster, reached with real HTTP on its pod IP and on the node's hostPort.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_e2e::{Cluster, Registry, free_port, http_get, http_hello_guest, running, wait_until};

const LONG: Duration = Duration::from_secs(120);

fn get(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    http_get(addr, "/")
}

#[test]
fn http_hello_deployment_answers_on_its_pod_ip_and_host_port() -> Result<()> {
    let wasm = http_hello_guest();
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start(data.path())?;
    let image = registry.reference("http-hello", "v1");
    cluster.push(&wasm, &image)?;

    let manifest = std::fs::read_to_string(
        shoal_e2e::workspace_root().join("examples/http-hello/deployment.yaml"),
    )?;
    let mut doc: Value = serde_saphyr::from_str(&manifest)?;
    let host_port = free_port();
    let container = &mut doc["spec"]["template"]["spec"]["containers"][0];
    container["image"] = image.clone().into();
    // The example's shape, on a free port: the same port for the pod and the node.
    container["ports"][0]["hostPort"] = host_port.into();
    container["ports"][0]["containerPort"] = host_port.into();
    let out = cluster.apply(&doc.to_string())?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = wait_until("the http-hello pod running", LONG, || {
        let pods = cluster.pods(Some("app=http-hello"))?;
        Ok((running(&pods) == 1).then(|| pods[0].clone()))
    })
    .with_context(|| cluster.log_tail())?;
    let pod_ip: std::net::IpAddr = pod["status"]["podIP"].as_str().context("podIP")?.parse()?;
    ensure!(
        pod_ip.to_string().starts_with("127.64."),
        "pod IP {pod_ip} is not from shoal up's pod range"
    );
    ensure!(
        pod["status"]["podIPs"][0]["ip"] == pod_ip.to_string(),
        "podIPs: {}",
        pod["status"]["podIPs"]
    );
    let expected = "Hello from Shoal!\nGREETING: Hello from the Deployment\n";
    for addr in [
        SocketAddr::new(pod_ip, host_port),
        SocketAddr::from(([127, 0, 0, 1], host_port)),
    ] {
        let answer = wait_until(&format!("an answer on {addr}"), LONG, || {
            Ok(get(addr).ok().filter(|(code, _)| *code == 200))
        })?;
        ensure!(answer.1 == expected, "{addr} answered {answer:?}");
    }

    // Deleting the Deployment closes the ports.
    cluster.kubectl(&["delete", "deployment", "http-hello"])?;
    wait_until("the ports to close", LONG, || {
        Ok(get(SocketAddr::from(([127, 0, 0, 1], host_port)))
            .is_err()
            .then_some(()))
    })?;
    Ok(())
}
