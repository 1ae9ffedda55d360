//! Boundary tests of the Wasm runtime: guests built from `tests/guests` and `examples/hello`,
//! pushed to and pulled from a real `docker-registry`, run through the `Runtime` trait.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_runtime::{
    ContainerSpec, ExitStatus, ImageRef, Limits, LogSink, LogStream, Mount, PullPolicy, Runtime,
    RuntimeError,
};
use shoal_runtime_wasm::testing::{GuestTarget, Registry, hello_guest, test_guest};
use shoal_runtime_wasm::{WasmRuntime, WasmRuntimeConfig};

/// Captured output of one container.
#[derive(Clone, Default)]
struct Logs {
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Logs {
    fn sink(&self) -> LogSink {
        let logs = self.clone();
        Arc::new(move |stream: LogStream, chunk: Bytes| {
            let buffer = match stream {
                LogStream::Stdout => &logs.stdout,
                LogStream::Stderr => &logs.stderr,
            };
            buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk);
        })
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

struct Fixture {
    registry: Registry,
    runtime: WasmRuntime,
    data_dir: tempfile::TempDir,
}

fn setup() -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start();
    let data_dir = tempfile::tempdir().expect("data dir");
    let runtime = WasmRuntime::new(WasmRuntimeConfig::new(data_dir.path())).expect("runtime");
    Fixture {
        registry,
        runtime,
        data_dir,
    }
}

impl Fixture {
    /// Pushes the test guest for `target` and pulls it.
    async fn guest(&self, target: GuestTarget) -> ImageRef {
        let bytes = std::fs::read(test_guest(target)).expect("guest binary");
        let reference = self.registry.reference("testguest", target.triple());
        shoal_runtime_wasm::push(bytes, &reference)
            .await
            .expect("push");
        self.runtime
            .pull(&reference, PullPolicy::IfNotPresent)
            .await
            .expect("pull")
    }
}

fn spec(image: &ImageRef, args: &[&str], logs: &Logs) -> ContainerSpec {
    let mut argv = vec!["testguest".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    ContainerSpec {
        id: format!("default/test/{}", args.first().copied().unwrap_or("main")),
        image: image.clone(),
        args: argv,
        env: Vec::new(),
        mounts: Vec::new(),
        limits: Limits::default(),
        logs: logs.sink(),
    }
}

async fn run(runtime: &WasmRuntime, spec: ContainerSpec) -> ExitStatus {
    let mut container = match runtime.start(spec).await {
        Ok(container) => container,
        Err(e) => panic!("start failed: {e}"),
    };
    tokio::time::timeout(Duration::from_secs(60), container.wait())
        .await
        .expect("guest ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_component_gets_argv_env_and_only_its_output() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P2).await;
    assert!(image.image_id.contains("@sha256:"), "{}", image.image_id);

    let logs = Logs::default();
    let status = run(
        &fx.runtime,
        spec(&image, &["print", "hello", "world"], &logs),
    )
    .await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert_eq!(logs.stdout(), "hello world\n");
    assert_eq!(logs.stderr(), "to stderr\n");

    let logs = Logs::default();
    run(&fx.runtime, spec(&image, &["args", "a b", "c"], &logs)).await;
    assert_eq!(logs.stdout(), "testguest\nargs\na b\nc\n");

    let logs = Logs::default();
    let mut env_spec = spec(&image, &["env"], &logs);
    env_spec.env = vec![("GREETING".to_string(), "hi there".to_string())];
    run(&fx.runtime, env_spec).await;
    // Nothing of the host's environment leaks in.
    assert_eq!(logs.stdout(), "GREETING=hi there\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_module_gets_argv_env_and_exit_code() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P1).await;

    let logs = Logs::default();
    let status = run(&fx.runtime, spec(&image, &["print", "from", "p1"], &logs)).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    assert_eq!(logs.stdout(), "from p1\n");
    assert_eq!(logs.stderr(), "to stderr\n");

    let logs = Logs::default();
    let mut env_spec = spec(&image, &["env"], &logs);
    env_spec.env = vec![("GREETING".to_string(), "p1".to_string())];
    run(&fx.runtime, env_spec).await;
    assert_eq!(logs.stdout(), "GREETING=p1\n");

    let status = run(&fx.runtime, spec(&image, &["exit", "3"], &Logs::default())).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));
    let status = run(&fx.runtime, spec(&image, &["exit", "0"], &Logs::default())).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_exit_codes_follow_wasi_0_2() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P2).await;
    let status = run(&fx.runtime, spec(&image, &["exit", "0"], &Logs::default())).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    // Rust's std reaches the host through `wasi:cli/exit.exit(err)`, which carries no code: the
    // host sees 1. A guest calling `exit-with-code` keeps its code.
    let status = run(&fx.runtime, spec(&image, &["exit", "3"], &Logs::default())).await;
    assert_eq!(status.reason, "Error");
    eprintln!("p2 exit 3 reported as {status:?}");
    assert!(status.exit_code == 1 || status.exit_code == 3, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_report_their_message() {
    let fx = setup();
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let status = run(&fx.runtime, spec(&image, &["trap"], &Logs::default())).await;
        assert_eq!(status.exit_code, 1, "{target:?}: {status:?}");
        assert_eq!(status.reason, "Error");
        let message = status.message.unwrap_or_default();
        assert!(message.contains("unreachable"), "{target:?}: {message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loop_is_stopped_within_grace() {
    let fx = setup();
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let mut container = fx
            .runtime
            .start(spec(&image, &["loop"], &Logs::default()))
            .await
            .expect("start");
        // Still running after a while: the loop really spins.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), container.wait())
                .await
                .is_err()
        );
        let started = Instant::now();
        let status = container.stop(Duration::from_secs(1)).await;
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status.exit_code, 137, "{status:?}");
        // `wait` after the end returns the same status.
        assert_eq!(container.wait().await, status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_guest_is_stopped_and_dropping_kills() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P2).await;
    let mut container = fx
        .runtime
        .start(spec(&image, &["sleep", "600"], &Logs::default()))
        .await
        .expect("start");
    let started = Instant::now();
    let status = container.stop(Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(status.exit_code, 137);

    // Dropping a handle kills the guest: its log sink (held by the store) is released.
    let logs = Logs::default();
    let container = fx
        .runtime
        .start(spec(&image, &["loop"], &logs))
        .await
        .expect("start");
    drop(container);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&logs.stdout) > 1 {
        assert!(Instant::now() < deadline, "guest still holds its log sink");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_throttles_a_busy_guest() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P2).await;
    let mut iterations = Vec::new();
    for cpu_millis in [None, Some(200)] {
        let logs = Logs::default();
        let mut spin = spec(&image, &["spin", "500"], &logs);
        spin.limits.cpu_millis = cpu_millis;
        let status = run(&fx.runtime, spin).await;
        assert_eq!(status.reason, "Completed");
        let done: u64 = logs.stdout().trim().parse().expect("iterations");
        iterations.push(done);
    }
    // A fifth of a core does about a fifth of the work in the same wall-clock time.
    assert!(
        iterations[1] * 2 < iterations[0],
        "unlimited {} vs 200m {}",
        iterations[0],
        iterations[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_with_oom() {
    let fx = setup();
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let mut over = spec(&image, &["alloc", "64"], &Logs::default());
        over.limits.memory_bytes = Some(16 << 20);
        let status = run(&fx.runtime, over).await;
        assert_eq!(status.reason, "OOMKilled", "{target:?}: {status:?}");
        assert_eq!(status.exit_code, 137);
        let message = status.message.unwrap_or_default();
        assert!(
            message.starts_with("memory limit of 16777216 bytes exceeded"),
            "{message}"
        );

        let logs = Logs::default();
        let mut under = spec(&image, &["alloc", "8"], &logs);
        under.limits.memory_bytes = Some(64 << 20);
        let status = run(&fx.runtime, under).await;
        assert_eq!(status.reason, "Completed", "{target:?}: {status:?}");
        assert_eq!(logs.stdout(), "allocated 8 MiB\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_sees_only_its_mounts() {
    let fx = setup();
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let volume = tempfile::tempdir().expect("volume");
        std::fs::write(volume.path().join("greeting.txt"), "hi").expect("write");

        let logs = Logs::default();
        run(&fx.runtime, spec(&image, &["ls", "/"], &logs)).await;
        assert!(
            logs.stdout().starts_with("error: "),
            "{target:?}: {}",
            logs.stdout()
        );

        let logs = Logs::default();
        let mut mounted = spec(&image, &["ls", "/data"], &logs);
        mounted.mounts = vec![Mount {
            host_path: volume.path().to_path_buf(),
            container_path: "/data".to_string(),
            read_only: false,
        }];
        run(&fx.runtime, mounted.clone()).await;
        assert_eq!(logs.stdout(), "greeting.txt\n", "{target:?}");

        let logs = Logs::default();
        let mut write = mounted.clone();
        write.args = ["testguest", "write", "/data/out.txt", "x"]
            .map(String::from)
            .to_vec();
        write.logs = logs.sink();
        run(&fx.runtime, write.clone()).await;
        assert_eq!(logs.stdout(), "written\n", "{target:?}");

        let logs = Logs::default();
        let mut read_only = write;
        read_only.args[2] = "/data/refused.txt".to_string();
        read_only.mounts[0].read_only = true;
        read_only.logs = logs.sink();
        run(&fx.runtime, read_only).await;
        assert!(
            logs.stdout().starts_with("error: "),
            "{target:?}: {}",
            logs.stdout()
        );
        assert!(!volume.path().join("refused.txt").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_map_to_kubernetes_reasons() {
    let fx = setup();
    let missing = fx.registry.reference("nothing", "here");
    match fx.runtime.pull(&missing, PullPolicy::Always).await {
        Err(RuntimeError::ImagePull { message, .. }) => {
            assert!(message.to_lowercase().contains("unknown"), "{message}");
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    match fx
        .runtime
        .pull("127.0.0.1:1/nothing:here", PullPolicy::IfNotPresent)
        .await
    {
        Err(RuntimeError::ImagePull { message, .. }) => {
            assert!(message.to_lowercase().contains("connect"), "{message}");
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    match fx
        .runtime
        .pull("Not A Reference!", PullPolicy::Always)
        .await
    {
        Err(e @ RuntimeError::InvalidImageName { .. }) => {
            assert_eq!(e.reason(), "InvalidImageName");
        }
        other => panic!("expected InvalidImageName, got {other:?}"),
    }
    match fx
        .runtime
        .pull(
            &fx.registry.reference("testguest", "never"),
            PullPolicy::Never,
        )
        .await
    {
        Err(RuntimeError::ImagePull { .. }) => {}
        other => panic!("expected ImagePull, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_wasm_artifact_fails_to_create() {
    let fx = setup();
    let reference = fx.registry.reference("notwasm", "v1");
    shoal_runtime_wasm::push(b"#!/bin/sh\necho hi\n".to_vec(), &reference)
        .await
        .expect("push");
    let image = fx
        .runtime
        .pull(&reference, PullPolicy::Always)
        .await
        .expect("pull");
    match fx.runtime.start(spec(&image, &[], &Logs::default())).await {
        Err(e @ RuntimeError::CreateContainer { .. }) => {
            assert_eq!(e.reason(), "CreateContainerError");
            assert!(
                e.to_string()
                    .contains("is not a WebAssembly module or component"),
                "{e}"
            );
        }
        Err(other) => panic!("expected CreateContainer, got {other:?}"),
        Ok(_) => panic!("expected CreateContainer, got a container"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_artifacts_are_cached_on_disk_and_pulls_stay_local() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P2).await;
    assert_eq!(fx.runtime.compile_count(), 1);
    let layer = fx.runtime.layer_digest(&image.image_id).expect("layer");
    assert!(fx.runtime.compiled_path(&layer).is_file());
    run(&fx.runtime, spec(&image, &["exit", "0"], &Logs::default())).await;
    run(&fx.runtime, spec(&image, &["exit", "0"], &Logs::default())).await;
    assert_eq!(fx.runtime.compile_count(), 1);

    // A fresh runtime on the same data dir, with the registry gone: IfNotPresent resolves
    // locally and the start deserializes instead of compiling.
    let reference = image.image.clone();
    let Fixture {
        registry,
        runtime,
        data_dir,
    } = fx;
    drop(registry);
    drop(runtime);
    let runtime = WasmRuntime::new(WasmRuntimeConfig::new(data_dir.path())).expect("runtime");
    let again = runtime
        .pull(&reference, PullPolicy::IfNotPresent)
        .await
        .expect("local pull");
    assert_eq!(again, image);
    let logs = Logs::default();
    let status = run(&runtime, spec(&again, &["print", "cached"], &logs)).await;
    assert_eq!(status.reason, "Completed");
    assert_eq!(logs.stdout(), "cached\n");
    assert_eq!(runtime.compile_count(), 0);

    match runtime.pull(&reference, PullPolicy::Always).await {
        Err(RuntimeError::ImagePull { .. }) => {}
        other => panic!("Always must reach the (gone) registry, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_example_greets_and_keeps_running() {
    let fx = setup();
    let bytes = std::fs::read(hello_guest(GuestTarget::P2)).expect("hello binary");
    let reference = fx.registry.reference("hello", "v1");
    shoal_runtime_wasm::push(bytes, &reference)
        .await
        .expect("push");
    let image = fx
        .runtime
        .pull(&reference, PullPolicy::IfNotPresent)
        .await
        .expect("pull");
    let logs = Logs::default();
    let mut hello = spec(&image, &[], &logs);
    hello.args = vec!["hello".to_string()];
    hello.env = vec![("GREETING".to_string(), "ahoy".to_string())];
    let mut container = fx.runtime.start(hello).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !logs.stdout().contains("GREETING: ahoy") {
        assert!(Instant::now() < deadline, "no greeting: {}", logs.stdout());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(logs.stdout().starts_with("Hello from Shoal!\n"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), container.wait())
            .await
            .is_err(),
        "hello keeps running"
    );
    let status = container.stop(Duration::from_secs(1)).await;
    assert_eq!(status.exit_code, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_latency_of_a_cached_image() {
    let fx = setup();
    let image = fx.guest(GuestTarget::P2).await;
    let mut samples = Vec::new();
    for _ in 0..50 {
        let logs = Logs::default();
        let started = Instant::now();
        let mut container = fx
            .runtime
            .start(spec(&image, &["print", "up"], &logs))
            .await
            .expect("start");
        let deadline = Instant::now() + Duration::from_secs(10);
        while logs.stdout().is_empty() {
            assert!(Instant::now() < deadline, "no output");
            tokio::task::yield_now().await;
        }
        samples.push(started.elapsed());
        assert_eq!(container.wait().await.reason, "Completed");
    }
    samples.sort();
    // Figures only: tests never assert on time.
    eprintln!(
        "start to first output over {} starts: p50 {:?}, p99 {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100]
    );
}

/// One ustar entry: a header and its data padded to 512 bytes.
fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    header[156] = b'0';
    header[257..262].copy_from_slice(b"ustar");
    let mut entry = header.to_vec();
    entry.extend_from_slice(data);
    entry.resize(entry.len().div_ceil(512) * 512, 0);
    entry
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_image_with_one_wasm_file_runs() {
    let fx = setup();
    let wasm = std::fs::read(test_guest(GuestTarget::P1)).expect("guest binary");
    let mut tar = tar_entry("app.wasm", &wasm);
    tar.extend([0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasi",
        "rootfs": { "type": "layers", "diff_ids": [sha256(&tar)] },
        "config": { "Entrypoint": ["/app.wasm"] },
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer),
            "size": layer.len(),
        }],
    }))
    .expect("manifest");

    let reference = fx.registry.reference("scratch-wasm", "v1");
    let image: oci_client::Reference = reference.parse().expect("reference");
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    client
        .store_auth_if_needed(
            image.resolve_registry(),
            &oci_client::secrets::RegistryAuth::Anonymous,
        )
        .await;
    client
        .push_blob(&image, layer.clone(), &sha256(&layer))
        .await
        .expect("push layer");
    client
        .push_blob(&image, config.clone(), &sha256(&config))
        .await
        .expect("push config");
    client
        .push_manifest_raw(
            &image,
            manifest,
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .expect("push manifest");

    let pulled = fx
        .runtime
        .pull(&reference, PullPolicy::Always)
        .await
        .expect("pull");
    let logs = Logs::default();
    let status = run(
        &fx.runtime,
        spec(&pulled, &["print", "from", "a", "tar"], &logs),
    )
    .await;
    assert_eq!(status.reason, "Completed");
    assert_eq!(logs.stdout(), "from a tar\n");
}
