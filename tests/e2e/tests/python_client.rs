//! The official Kubernetes Python client (`kubernetes` from PyPI, in the virtualenv
//! `scripts/install-deps.sh` makes under `target/pyenv`) against `shoal up`: create, list,
//! watch from a list's resourceVersion, the three patch types, server-side apply, errors and
//! delete (`tests/e2e/python/client.py`). A missing virtualenv fails the test.

use anyhow::{Context, Result, ensure};
use shoal_e2e::{Cluster, workspace_root};

#[test]
fn the_python_client_creates_lists_watches_patches_applies_and_deletes() -> Result<()> {
    let root = workspace_root();
    let python = root.join("target/pyenv/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run scripts/install-deps.sh (scripts/test.sh does)",
        python.display()
    );
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start(data.path())?;
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/e2e/python/client.py"))
        .env("KUBECONFIG", cluster.kubeconfig())
        .output()
        .context("running the python client")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}\n--- shoal log ---\n{}",
        cluster.log_tail()
    );
    ensure!(stdout.contains("all steps passed"), "{stdout}");
    Ok(())
}
