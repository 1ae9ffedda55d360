//! A throwaway apiserver for other crates' integration tests (the `testing` feature).
//!
//! [`TestApiServer`] opens a `shoal_store::Store` in a fresh temp dir, serves the API on
//! `127.0.0.1:0` and hands out a kube-rs client for it; dropping it stops the server and
//! removes the temp dir. It is for tests only: no TLS, no authentication, one store member.
//! It does not install a tracing subscriber (each test picks its own filter).

use std::net::SocketAddr;
use std::path::Path;

use shoal_store::{Store, StoreError};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Config;

/// Why a [`TestApiServer`] did not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error("creating the temp dir")]
    TempDir(#[source] std::io::Error),
    #[error("opening the store")]
    Store(#[source] StoreError),
    #[error("binding 127.0.0.1:0")]
    Bind(#[source] std::io::Error),
    #[error("building the apiserver url")]
    Uri(#[source] http::uri::InvalidUri),
    #[error("building the kube client")]
    Client(#[source] kube::Error),
    #[error("joining the apiserver task")]
    Join(#[source] tokio::task::JoinError),
    #[error("running the apiserver")]
    Serve(#[source] crate::Error),
}

/// An apiserver over a store in a temp dir, served on loopback until dropped.
pub struct TestApiServer {
    addr: SocketAddr,
    client: kube::Client,
    store: Store,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), crate::Error>>>,
    // Declared last so it is removed after the fields above are dropped.
    dir: TempDir,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("addr", &self.addr)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestApiServer {
    /// Starts an apiserver with the default [`Config`].
    pub async fn start() -> Result<TestApiServer, TestServerError> {
        Self::start_with(Config::default()).await
    }

    /// Starts an apiserver with `config`; `config.listen` is replaced by the loopback address
    /// actually bound. The store lives in `dir()/store`.
    pub async fn start_with(mut config: Config) -> Result<TestApiServer, TestServerError> {
        let dir = tempfile::tempdir().map_err(TestServerError::TempDir)?;
        let store = Store::open(&dir.path().join("store"))
            .await
            .map_err(TestServerError::Store)?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(TestServerError::Bind)?;
        let addr = listener.local_addr().map_err(TestServerError::Bind)?;
        config.listen = addr;
        let uri: http::Uri = format!("http://{addr}")
            .parse()
            .map_err(TestServerError::Uri)?;
        let client =
            kube::Client::try_from(kube::Config::new(uri)).map_err(TestServerError::Client)?;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(crate::serve(
            listener,
            config,
            store.clone(),
            shutdown.clone(),
        ));
        Ok(TestApiServer {
            addr,
            client,
            store,
            shutdown,
            server: Some(server),
            dir,
        })
    }

    /// The address served (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube-rs client for this apiserver (plain HTTP, no credentials).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The store behind the apiserver.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The temp dir, for a test's own scratch files (the store uses `store/` inside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for this server (plain HTTP, no credentials) as `dir()/kubeconfig`
    /// and returns its path.
    pub fn write_kubeconfig(&self) -> std::io::Result<std::path::PathBuf> {
        let path = self.dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: http://{}\nusers:\n- name: shoal\n  user: {{}}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: shoal\ncurrent-context: shoal\n",
                self.addr
            ),
        )?;
        Ok(path)
    }

    /// Stops the server and waits for it to finish, then removes the temp dir.
    pub async fn shutdown(mut self) -> Result<(), TestServerError> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(server) => server
                .await
                .map_err(TestServerError::Join)?
                .map_err(TestServerError::Serve),
            None => Ok(()),
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        // Watches end and the server stops on its own; the temp dir goes with `self.dir`.
        self.shutdown.cancel();
    }
}

/// Runs the real kubectl (`/usr/bin/kubectl`, which `scripts/install-deps.sh` requires) with
/// `kubeconfig`, from the kubeconfig's folder, which is also its `HOME` (so its discovery
/// cache is the test's own). Returns whether it succeeded and its stdout then stderr.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let home = kubeconfig.parent().unwrap_or(Path::new("."));
    let out = std::process::Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .current_dir(home)
        .output();
    match out {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (
            false,
            format!("kubectl did not run ({e}); scripts/install-deps.sh requires /usr/bin/kubectl"),
        ),
    }
}
