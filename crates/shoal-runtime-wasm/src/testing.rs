//! Test helpers (feature `testing`): a throwaway OCI registry and guests built from source.
//!
//! [`Registry`] runs Debian's `docker-registry` on a free loopback port with its storage in a
//! temporary directory and kills it on drop. [`build_guest`] compiles one of the repository's
//! guest crates (`tests/guests`, `examples/hello`) for a WASI target with cargo, once per process,
//! into `<workspace>/target/guests`. These helpers panic on failure: they are for tests only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A WASI target the guests are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestTarget {
    /// `wasm32-wasip1`: a core module.
    P1,
    /// `wasm32-wasip2`: a command component.
    P2,
}

impl GuestTarget {
    pub fn triple(self) -> &'static str {
        match self {
            GuestTarget::P1 => "wasm32-wasip1",
            GuestTarget::P2 => "wasm32-wasip2",
        }
    }
}

/// The repository root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crate lives at crates/shoal-runtime-wasm")
        .to_path_buf()
}

/// Builds the binary `bin` of the standalone guest crate at `manifest` (relative to the
/// repository root) for `target`, once per process; returns the path of the `.wasm` file.
pub fn build_guest(manifest: &str, bin: &str, target: GuestTarget) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, GuestTarget), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(&(manifest.to_string(), target)) {
        return path.clone();
    }
    let root = workspace_root();
    let target_dir = root.join("target").join("guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            target.triple(),
            "--manifest-path",
        ])
        .arg(root.join(manifest))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stdin(Stdio::null())
        .output()
        .expect("run cargo to build a guest");
    assert!(
        output.status.success(),
        "building guest {manifest} for {} failed:\n{}",
        target.triple(),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target_dir
        .join(target.triple())
        .join("release")
        .join(format!("{bin}.wasm"));
    assert!(path.is_file(), "guest build produced no {}", path.display());
    built.insert((manifest.to_string(), target), path.clone());
    path
}

/// The `testguest` binary (`tests/guests`) for `target`.
pub fn test_guest(target: GuestTarget) -> PathBuf {
    build_guest("tests/guests/Cargo.toml", "testguest", target)
}

/// The `http-hello` example (`examples/http-hello`), a `wasi:http/proxy` component.
pub fn http_hello_guest() -> PathBuf {
    build_guest(
        "examples/http-hello/Cargo.toml",
        "http_hello",
        GuestTarget::P2,
    )
}

/// The `hello` example (`examples/hello`) for `target`.
pub fn hello_guest(target: GuestTarget) -> PathBuf {
    build_guest("examples/hello/Cargo.toml", "hello", target)
}

/// `GET path` over HTTP/1.0 (blocking, 10 s to answer): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// A `docker-registry` process on `127.0.0.1`, killed (and its storage removed) on drop.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    netns: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Registry {
    /// Starts `/usr/bin/docker-registry` (or `$SHOAL_DOCKER_REGISTRY`) on a free port and waits
    /// until `/v2/` answers.
    pub fn start() -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_in(None, port)
    }

    /// Starts the registry on `127.0.0.1:port` of the network namespace `netns` (made with
    /// `ip netns add`), or of this one; waits until `/v2/` answers there.
    pub fn start_in(netns: Option<&str>, port: u16) -> Registry {
        let dir = tempfile::tempdir().expect("registry tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let program = std::env::var_os("SHOAL_DOCKER_REGISTRY")
            .unwrap_or_else(|| "/usr/bin/docker-registry".into());
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let child = command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let registry = Registry {
            child,
            addr,
            dir,
            netns: netns.map(str::to_owned),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !registry.answers() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {addr}: {}",
                std::fs::read_to_string(registry.dir.path().join("registry.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// A reference `127.0.0.1:PORT/{repository}:{tag}`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.addr)
    }

    fn answers(&self) -> bool {
        if let Some(ns) = &self.netns {
            // Inside another namespace: ask from there.
            return Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-sf", "-o", "/dev/null"])
                .arg(format!("http://{}/v2/", self.addr))
                .status()
                .is_ok_and(|s| s.success());
        }
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream
            .write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.") && response.contains(" 200 ")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
