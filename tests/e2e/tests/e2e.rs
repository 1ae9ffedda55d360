//! End-to-end: a one-binary cluster (`shoal up`) driven by real kubectl, with Wasm guests
//! built from source and served by Debian's docker-registry.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_e2e::{Cluster, GuestTarget, Registry, hello_guest, running, test_guest, wait_until};

const LONG: Duration = Duration::from_secs(120);

fn deployment(image: &str, replicas: u32, greeting: &str) -> String {
    let template =
        std::fs::read_to_string(shoal_e2e::workspace_root().join("examples/hello/deployment.yaml"))
            .expect("examples/hello/deployment.yaml");
    let mut doc: Value =
        serde_saphyr::from_str(&template).expect("examples/hello/deployment.yaml parses");
    doc["spec"]["replicas"] = replicas.into();
    doc["spec"]["template"]["spec"]["containers"][0]["image"] = image.into();
    doc["spec"]["template"]["spec"]["containers"][0]["env"] =
        serde_json::json!([{"name": "GREETING", "value": greeting}]);
    doc.to_string()
}

fn wait_running(cluster: &Cluster, selector: &str, want: usize) -> Result<Vec<Value>> {
    wait_until(
        &format!("{want} running pods with {selector}"),
        LONG,
        || {
            let pods = cluster.pods(Some(selector))?;
            let live: Vec<Value> = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .cloned()
                .collect();
            Ok((running(&live) == want && live.len() == want).then_some(live))
        },
    )
    .with_context(|| cluster.log_tail())
}

#[test]
fn deployment_lifecycle_survives_restart() -> Result<()> {
    let wasm = hello_guest(GuestTarget::P2);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let mut cluster = Cluster::start(data.path())?;

    // Push with the CLI: it prints the manifest digest.
    let image = registry.reference("hello", "v1");
    let digest = cluster.push(&wasm, &image)?;
    ensure!(
        digest.trim().starts_with("sha256:"),
        "push printed {digest:?}"
    );

    // Apply a 3-replica Deployment with kubectl; three pods reach Running.
    let out = cluster.apply(&deployment(&image, 3, "hello"))?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods = wait_running(&cluster, "app=hello", 3)?;

    // Their output reaches kubectl logs.
    let name = pods[0]["metadata"]["name"]
        .as_str()
        .context("pod name")?
        .to_string();
    wait_until("hello output in kubectl logs", LONG, || {
        let logs = cluster.kubectl(&["logs", &name])?;
        Ok(logs.contains("Hello from Shoal").then_some(()))
    })?;
    let table = cluster.kubectl(&["get", "pods"])?;
    ensure!(
        table.starts_with("NAME") && table.contains("READY") && table.contains("Running"),
        "table: {table}"
    );
    // kubectl logs -f follows: the guest's next heartbeat arrives on the open stream.
    follow_until(&cluster, &name, "heartbeat")?;
    // The shoal CLI reads the same API: its own get (server-side Table) and logs.
    let out = cluster.shoal(&["get", "deployments"])?;
    let table = String::from_utf8(out.stdout)?;
    ensure!(
        out.status.success() && table.contains("hello") && table.contains("3/3"),
        "shoal get: {table}"
    );
    let out = cluster.shoal(&["logs", &name])?;
    ensure!(
        String::from_utf8(out.stdout)?.contains("Hello from Shoal"),
        "shoal logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Scale to 5.
    cluster.kubectl(&["scale", "deployment/hello", "--replicas=5"])?;
    wait_running(&cluster, "app=hello", 5)?;

    // Change the template: a rolling update that kubectl rollout status sees through.
    let out = cluster.apply(&deployment(&image, 5, "bonjour"))?;
    ensure!(
        out.status.success(),
        "re-apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .kubectl(&["rollout", "status", "deployment/hello", "--timeout=120s"])
        .with_context(|| cluster.log_tail())?;
    let pods = wait_running(&cluster, "app=hello", 5)?;
    for pod in &pods {
        let env = &pod["spec"]["containers"][0]["env"][0]["value"];
        ensure!(
            env == "bonjour",
            "pod {} still has the old template: {env}",
            pod["metadata"]["name"]
        );
    }
    let name = pods[0]["metadata"]["name"]
        .as_str()
        .context("pod name")?
        .to_string();
    wait_until("the new greeting in logs", LONG, || {
        Ok(cluster
            .kubectl(&["logs", &name])?
            .contains("bonjour")
            .then_some(()))
    })?;

    // Delete: the ReplicaSets and every pod go with it.
    cluster.kubectl(&["delete", "deployment", "hello"])?;
    wait_until("every hello pod and replicaset gone", LONG, || {
        let pods = cluster.pods(Some("app=hello"))?;
        let rs: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "replicasets", "-o", "json"])?)?;
        let rs_left = rs["items"].as_array().map_or(0, Vec::len);
        Ok((pods.is_empty() && rs_left == 0).then_some(()))
    })?;

    // Objects survive a SIGKILL of the whole control plane.
    cluster.kubectl(&["create", "namespace", "keep"])?;
    let manifest = data.path().join("survivor.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: survivor\n  namespace: keep\ndata:\n  a: b\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: doomed\n  namespace: keep\n",
    )?;
    let out = cluster.shoal(&["apply", "-f", manifest.to_str().context("path")?])?;
    ensure!(
        out.status.success(),
        "shoal apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.shoal(&["delete", "configmap", "doomed", "-n", "keep"])?;
    ensure!(
        out.status.success(),
        "shoal delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.apply(&deployment(&image, 0, "idle"))?;
    ensure!(
        out.status.success(),
        "apply idle: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.kill9()?;
    let cluster = cluster.restart()?;
    cluster.kubectl(&["get", "namespace", "keep"])?;
    let cm: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "configmap",
        "survivor",
        "-n",
        "keep",
        "-o",
        "json",
    ])?)?;
    ensure!(cm["data"]["a"] == "b", "configmap after restart: {cm}");
    let out = cluster.kubectl_output(&["get", "configmap", "doomed", "-n", "keep"])?;
    ensure!(
        !out.status.success(),
        "a deleted configmap came back after restart"
    );
    let deploy: Value =
        serde_json::from_str(&cluster.kubectl(&["get", "deployment", "hello", "-o", "json"])?)?;
    ensure!(
        deploy["spec"]["replicas"] == 0,
        "deployment after restart: {deploy}"
    );
    Ok(())
}

/// Runs `kubectl logs -f POD` until a line containing `needle` arrives on the stream.
fn follow_until(cluster: &Cluster, pod: &str, needle: &str) -> Result<()> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["logs", "-f", "--tail=0", pod])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("kubectl stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    ensure!(found, "kubectl logs -f {pod} never showed {needle:?}");
    Ok(())
}

fn pod_manifest(name: &str, image: &str, args: &[&str], restart: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": image, "args": args}]
        }
    })
    .to_string()
}

fn container_state(cluster: &Cluster, pod: &str) -> Result<Value> {
    let pod: Value = serde_json::from_str(&cluster.kubectl(&["get", "pod", pod, "-o", "json"])?)?;
    Ok(pod["status"]["containerStatuses"][0].clone())
}

#[test]
fn bad_input_gets_clear_errors() -> Result<()> {
    let p1 = test_guest(GuestTarget::P1);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start(data.path())?;

    // An invalid manifest: 422 naming the field; nothing is created.
    let bad = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bad"},
        "spec": {"selector": {"matchLabels": {"app": "bad"}},
                 "template": {"metadata": {"labels": {"app": "bad"}},
                              "spec": {"containers": [{"name": "main"}]}}}
    });
    let out = cluster.apply(&bad.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "invalid deployment was accepted");
    ensure!(
        stderr.contains("spec.template.spec.containers[0].image")
            && stderr.contains("Required value"),
        "422 message does not name the field: {stderr}"
    );
    let out = cluster.kubectl_output(&["get", "deployment", "bad"])?;
    ensure!(!out.status.success(), "invalid deployment exists");

    // An image that is not in the registry: ErrImagePull / ImagePullBackOff with its message.
    let missing = registry.reference("missing", "v1");
    let out = cluster.apply(&pod_manifest("missing", &missing, &[], "Never"))?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("ErrImagePull on the missing image", LONG, || {
        let state = container_state(&cluster, "missing")?;
        let waiting = &state["state"]["waiting"];
        let reason = waiting["reason"].as_str().unwrap_or("");
        let message = waiting["message"].as_str().unwrap_or("");
        Ok((matches!(reason, "ErrImagePull" | "ImagePullBackOff")
            && message.to_lowercase().contains("manifest unknown"))
        .then_some(()))
    })
    .with_context(|| cluster.log_tail())?;

    // An artifact that is not Wasm: a clear waiting reason and message.
    let junk = data.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho this is not wasm\n")?;
    let junk_ref = registry.reference("junk", "v1");
    let out = cluster.shoal(&["push", junk.to_str().context("path")?, &junk_ref])?;
    ensure!(
        out.status.success(),
        "push junk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.apply(&pod_manifest("junk", &junk_ref, &[], "Never"))?;
    wait_until("a clear error for a non-Wasm artifact", LONG, || {
        let state = container_state(&cluster, "junk")?;
        let waiting = &state["state"]["waiting"];
        let message = waiting["message"].as_str().unwrap_or("").to_lowercase();
        Ok(
            (waiting["reason"] == "CreateContainerError" && message.contains("webassembly"))
                .then_some(()),
        )
    })
    .with_context(|| cluster.log_tail())?;

    // A guest that exits non-zero shows its exit code; a Never pod ends Failed.
    let guest = registry.reference("testguest", "p1");
    let out = cluster.shoal(&["push", p1.to_str().context("path")?, &guest])?;
    ensure!(
        out.status.success(),
        "push guest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.apply(&pod_manifest("exit3", &guest, &["exit", "3"], "Never"))?;
    wait_until("exit code 3 reported", LONG, || {
        let pod: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "pod", "exit3", "-o", "json"])?)?;
        let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        Ok((pod["status"]["phase"] == "Failed" && terminated["exitCode"] == 3).then_some(()))
    })
    .with_context(|| cluster.log_tail())?;

    // Jobs run to completion with real guests; one whose pods fail stops at its backoffLimit
    // with BackoffLimitExceeded, which kubectl describe shows.
    let job = |name: &str, args: &[&str], extra: Value| {
        let mut spec = serde_json::json!({"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": guest, "args": args}]}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        serde_json::json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name}, "spec": spec})
        .to_string()
    };
    let indexed =
        serde_json::json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2});
    for manifest in [
        job("indexed", &["exit", "0"], indexed),
        job(
            "doomed",
            &["exit", "3"],
            serde_json::json!({"backoffLimit": 0}),
        ),
    ] {
        let out = cluster.apply(&manifest)?;
        ensure!(
            out.status.success(),
            "job: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=complete",
            "job/indexed",
            "--timeout=120s",
        ])
        .with_context(|| cluster.log_tail())?;
    let done: Value =
        serde_json::from_str(&cluster.kubectl(&["get", "job", "indexed", "-o", "json"])?)?;
    ensure!(
        done["status"]["completedIndexes"] == "0-2" && done["status"]["succeeded"] == 3,
        "indexed job status: {}",
        done["status"]
    );
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=failed",
            "job/doomed",
            "--timeout=120s",
        ])
        .with_context(|| cluster.log_tail())?;
    let described = cluster.kubectl(&["describe", "job", "doomed"])?;
    ensure!(
        described.contains("BackoffLimitExceeded"),
        "describe job: {described}"
    );

    // A guest that keeps failing is restarted with back-off (OnFailure).
    cluster.apply(&pod_manifest("crash", &guest, &["exit", "3"], "OnFailure"))?;
    wait_until("CrashLoopBackOff after a restart", LONG, || {
        let state = container_state(&cluster, "crash")?;
        let restarted = state["restartCount"].as_i64().unwrap_or(0) >= 1;
        let backoff = state["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        let last = &state["lastState"]["terminated"]["exitCode"];
        Ok((restarted && backoff && last == 3).then_some(()))
    })
    .with_context(|| cluster.log_tail())?;

    // The guest sees nothing of the host file system.
    cluster.apply(&pod_manifest("ls", &guest, &["ls", "/"], "Never"))?;
    wait_until("the ls guest to finish", LONG, || {
        let pod: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "pod", "ls", "-o", "json"])?)?;
        Ok(matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
        .then_some(()))
    })?;
    let listing = cluster.kubectl(&["logs", "ls"])?;
    for host_entry in ["etc", "proc", "usr", "root"] {
        if listing
            .lines()
            .any(|l| l.trim() == host_entry || l.trim().ends_with(&format!("/{host_entry}")))
        {
            bail!("guest saw the host file system: {listing}");
        }
    }

    // A guest stuck in a loop is stopped on deletion within its grace period.
    cluster.apply(&pod_manifest("spin", &guest, &["loop"], "Always"))?;
    wait_until("the spinning guest to run", LONG, || {
        let state = container_state(&cluster, "spin")?;
        Ok(state["state"]["running"].is_object().then_some(()))
    })?;
    cluster.kubectl(&["delete", "pod", "spin", "--wait=false"])?;
    wait_until(
        "the spinning pod to be gone",
        Duration::from_secs(30),
        || {
            let out = cluster.kubectl_output(&["get", "pod", "spin"])?;
            Ok((!out.status.success()).then_some(()))
        },
    )
    .with_context(|| cluster.log_tail())?;
    Ok(())
}

/// A workload of `kind` (DaemonSet or StatefulSet) running the hello guest.
fn stateful_manifest(kind: &str, name: &str, image: &str, greeting: &str) -> String {
    let mut spec = serde_json::json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 2,
                "containers": [{"name": "hello", "image": image,
                    "env": [{"name": "GREETING", "value": greeting}],
                    "resources": {"limits": {"memory": "64Mi", "cpu": "100m"}}}]}}
    });
    if kind == "StatefulSet" {
        spec["replicas"] = 2.into();
        spec["serviceName"] = name.into();
    }
    serde_json::json!({"apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name}, "spec": spec})
    .to_string()
}

fn template_greeting(cluster: &Cluster, resource: &str) -> Result<Value> {
    let obj: Value = serde_json::from_str(&cluster.kubectl(&["get", resource, "-o", "json"])?)?;
    Ok(obj["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"].clone())
}

/// DaemonSets and StatefulSets through kubectl: pods Running on the node with stable names,
/// `rollout status`, `rollout history` from ControllerRevisions, and `rollout undo` back to
/// the first template.
#[test]
fn daemonsets_and_statefulsets_roll_and_undo_with_kubectl() -> Result<()> {
    let wasm = hello_guest(GuestTarget::P2);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start(data.path())?;
    let image = registry.reference("hello", "v1");
    cluster.push(&wasm, &image)?;

    for (kind, name) in [("DaemonSet", "hello-ds"), ("StatefulSet", "hello-sts")] {
        let resource = format!("{}/{name}", kind.to_lowercase());
        let out = cluster.apply(&stateful_manifest(kind, name, &image, "one"))?;
        ensure!(
            out.status.success(),
            "apply {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
            .kubectl(&["rollout", "status", &resource, "--timeout=120s"])
            .with_context(|| cluster.log_tail())?;
        let want = if kind == "DaemonSet" { 1 } else { 2 };
        let pods = wait_running(&cluster, &format!("app={name}"), want)?;
        if kind == "StatefulSet" {
            let mut names: Vec<&str> = pods
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            names.sort_unstable();
            ensure!(names == ["hello-sts-0", "hello-sts-1"], "pods: {names:?}");
        } else {
            ensure!(
                pods[0]["spec"]["nodeName"].is_string(),
                "daemon pod not bound: {}",
                pods[0]
            );
        }

        cluster.kubectl(&["set", "env", &resource, "GREETING=two"])?;
        cluster
            .kubectl(&["rollout", "status", &resource, "--timeout=120s"])
            .with_context(|| cluster.log_tail())?;
        wait_until(&format!("{name} pods on the second template"), LONG, || {
            let pods = cluster.pods(Some(&format!("app={name}")))?;
            let live: Vec<&Value> = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            Ok((live.len() == want
                && live
                    .iter()
                    .all(|p| p["spec"]["containers"][0]["env"][0]["value"] == "two"))
            .then_some(()))
        })?;
        let (revisions, history) = cluster.rollout_history(&resource)?;
        ensure!(revisions == ["1", "2"], "rollout history: {history}");

        cluster.kubectl(&["rollout", "undo", &resource])?;
        wait_until(&format!("{name} template back to one"), LONG, || {
            Ok((template_greeting(&cluster, &resource)? == "one").then_some(()))
        })?;
        cluster
            .kubectl(&["rollout", "status", &resource, "--timeout=120s"])
            .with_context(|| cluster.log_tail())?;
        let (revisions, history) = cluster.rollout_history(&resource)?;
        ensure!(revisions == ["2", "3"], "history after undo: {history}");
        cluster.kubectl(&["delete", &resource])?;
        wait_until(&format!("{name} pods gone"), LONG, || {
            Ok(cluster
                .pods(Some(&format!("app={name}")))?
                .is_empty()
                .then_some(()))
        })?;
    }
    Ok(())
}
