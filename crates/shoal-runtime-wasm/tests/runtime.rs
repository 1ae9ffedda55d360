//! Boundary tests of the Wasm runtime: guests built from `tests/guests` and `examples/hello`,
//! pushed to and pulled from a real `docker-registry`, run through the CRI-shaped interface
//! (a sandbox, containers created, started, waited on through their events, their CRI log files
//! read back).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shoal_runtime::{
    ContainerConfig, ContainerEventKind, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStatus, ImageService, Limits, Mount, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata, Runtime, RuntimeError, RuntimeService, SandboxState, labels,
};
use shoal_runtime_wasm::testing::{GuestTarget, Registry, hello_guest, test_guest};
use shoal_runtime_wasm::{WasmRuntime, WasmRuntimeConfig};

struct Fixture {
    registry: Registry,
    runtime: Arc<WasmRuntime>,
    data_dir: tempfile::TempDir,
    logs: tempfile::TempDir,
    sandbox: String,
}

async fn setup() -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start();
    let data_dir = tempfile::tempdir().expect("data dir");
    let runtime =
        Arc::new(WasmRuntime::new(WasmRuntimeConfig::new(data_dir.path())).expect("runtime"));
    let logs = tempfile::tempdir().expect("logs dir");
    let sandbox = sandbox(&runtime, logs.path().to_path_buf(), "test").await;
    Fixture {
        registry,
        runtime,
        data_dir,
        logs,
        sandbox,
    }
}

async fn sandbox(runtime: &WasmRuntime, log_directory: PathBuf, pod: &str) -> String {
    runtime
        .run_pod_sandbox(&PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: pod.to_owned(),
                namespace: "default".to_owned(),
                uid: format!("uid-{pod}"),
                attempt: 0,
            },
            hostname: pod.to_owned(),
            log_directory,
            labels: [(labels::POD_UID.to_owned(), format!("uid-{pod}"))].into(),
            ..PodSandboxConfig::default()
        })
        .await
        .expect("sandbox")
}

impl Fixture {
    /// Pushes the test guest for `target` and pulls it; returns the image id.
    async fn guest(&self, target: GuestTarget) -> String {
        let bytes = std::fs::read(test_guest(target)).expect("guest binary");
        let reference = self.registry.reference("testguest", target.triple());
        shoal_runtime_wasm::push(bytes, &reference)
            .await
            .expect("push");
        self.runtime
            .pull_image(&reference, None)
            .await
            .expect("pull")
    }

    /// Creates and starts a container in the fixture's sandbox.
    async fn start(&self, config: &ContainerConfig) -> Container {
        start_in(&self.runtime, &self.sandbox, self.logs.path(), config).await
    }

    /// Runs a container to its end.
    async fn run(&self, config: &ContainerConfig) -> Container {
        let mut container = self.start(config).await;
        container.wait().await;
        container
    }
}

/// A container under test: its id, its log file and the events it has seen.
struct Container {
    runtime: Arc<WasmRuntime>,
    id: String,
    log: PathBuf,
    events: tokio::sync::broadcast::Receiver<shoal_runtime::ContainerEvent>,
}

async fn start_in(
    runtime: &Arc<WasmRuntime>,
    sandbox: &str,
    log_directory: &std::path::Path,
    config: &ContainerConfig,
) -> Container {
    let events = runtime.container_events();
    let id = match runtime.create_container(sandbox, config).await {
        Ok(id) => id,
        Err(e) => panic!("create failed: {e}"),
    };
    runtime.start_container(&id).await.expect("start");
    Container {
        runtime: Arc::clone(runtime),
        id,
        log: log_directory.join(&config.log_path),
        events,
    }
}

impl Container {
    async fn status(&self) -> ContainerStatus {
        self.runtime
            .container_status(&self.id)
            .await
            .expect("status")
    }

    /// Waits (at most a minute) for the Stopped event, then returns the status.
    async fn wait(&mut self) -> ContainerStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status().await;
            if status.state == ContainerState::Exited {
                return status;
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(e)) => panic!("events ended: {e}"),
                Err(_) => panic!("container {} did not end", self.id),
            }
        }
    }

    /// The records of one stream in the CRI log file, joined as the guest wrote them.
    fn output(&self, stream: &str) -> String {
        let file = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::new();
        for line in file.lines() {
            let mut parts = line.splitn(4, ' ');
            let (_, s, tag, text) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next().unwrap_or_default(),
            );
            if s == Some(stream) {
                out.push_str(text);
                if tag == Some("F") {
                    out.push('\n');
                }
            }
        }
        out
    }

    fn stdout(&self) -> String {
        self.output("stdout")
    }

    fn stderr(&self) -> String {
        self.output("stderr")
    }
}

/// A container of `image` running `testguest ARGS`, logging to its own file.
fn spec(image: &str, args: &[&str]) -> ContainerConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed));
    ContainerConfig {
        metadata: ContainerMetadata {
            name: name.clone(),
            attempt: 0,
        },
        image: image.to_owned(),
        command: vec!["testguest".to_owned()],
        args: args.iter().map(|a| a.to_string()).collect(),
        log_path: PathBuf::from(format!("{name}/0.log")),
        labels: [(labels::CONTAINER_NAME.to_owned(), name)].into(),
        ..ContainerConfig::default()
    }
}

fn exit(status: &ContainerStatus) -> (i32, &str) {
    (status.exit_code, status.reason.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_component_gets_argv_env_and_only_its_output() {
    let fx = setup().await;
    let image = fx.guest(GuestTarget::P2).await;
    assert!(image.contains("@sha256:"), "{image}");

    let c = fx.run(&spec(&image, &["print", "hello", "world"])).await;
    assert_eq!(exit(&c.status().await), (0, "Completed"));
    assert_eq!(c.stdout(), "hello world\n");
    assert_eq!(c.stderr(), "to stderr\n");

    let c = fx.run(&spec(&image, &["args", "a b", "c"])).await;
    assert_eq!(c.stdout(), "testguest\nargs\na b\nc\n");

    let mut env_spec = spec(&image, &["env"]);
    env_spec.envs = vec![("GREETING".to_string(), "hi there".to_string())];
    let c = fx.run(&env_spec).await;
    // Nothing of the host's environment leaks in.
    assert_eq!(c.stdout(), "GREETING=hi there\n");

    // Without a command, argv[0] is the container's name.
    let mut bare = spec(&image, &[]);
    bare.command.clear();
    bare.args = vec!["args".to_owned()];
    let c = fx.run(&bare).await;
    assert_eq!(c.stdout(), format!("{}\nargs\n", bare.metadata.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_module_gets_argv_env_and_exit_code() {
    let fx = setup().await;
    let image = fx.guest(GuestTarget::P1).await;

    let c = fx.run(&spec(&image, &["print", "from", "p1"])).await;
    assert_eq!(exit(&c.status().await), (0, "Completed"));
    assert_eq!(c.stdout(), "from p1\n");
    assert_eq!(c.stderr(), "to stderr\n");

    let mut env_spec = spec(&image, &["env"]);
    env_spec.envs = vec![("GREETING".to_string(), "p1".to_string())];
    let c = fx.run(&env_spec).await;
    assert_eq!(c.stdout(), "GREETING=p1\n");

    let c = fx.run(&spec(&image, &["exit", "3"])).await;
    assert_eq!(exit(&c.status().await), (3, "Error"));
    let c = fx.run(&spec(&image, &["exit", "0"])).await;
    assert_eq!(exit(&c.status().await), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_exit_codes_follow_wasi_0_2() {
    let fx = setup().await;
    let image = fx.guest(GuestTarget::P2).await;
    let c = fx.run(&spec(&image, &["exit", "0"])).await;
    assert_eq!(exit(&c.status().await), (0, "Completed"));
    // Rust's std reaches the host through `wasi:cli/exit.exit(err)`, which carries no code: the
    // host sees 1. A guest calling `exit-with-code` keeps its code.
    let status = fx.run(&spec(&image, &["exit", "3"])).await.status().await;
    assert_eq!(status.reason, "Error");
    assert!(status.exit_code == 1 || status.exit_code == 3, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_report_their_message() {
    let fx = setup().await;
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let status = fx.run(&spec(&image, &["trap"])).await.status().await;
        assert_eq!(exit(&status), (1, "Error"), "{target:?}: {status:?}");
        assert!(
            status.message.contains("unreachable"),
            "{target:?}: {status:?}"
        );
        assert!(!status.message.contains('\n'), "{status:?}");
    }
}

/// Stopping cancels a guest at its next epoch tick or host call. The grace period is a minute:
/// had the cancellation not reached the guest, the stop would end with the grace period's kill
/// and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_sleeping_guests_are_stopped_by_cancellation() {
    let fx = setup().await;
    for (target, args) in [
        (GuestTarget::P1, ["loop", ""]),
        (GuestTarget::P2, ["loop", ""]),
        (GuestTarget::P2, ["sleep", "600"]),
    ] {
        let image = fx.guest(target).await;
        let mut c = fx.start(&spec(&image, &args)).await;
        assert_eq!(c.status().await.state, ContainerState::Running);
        fx.runtime
            .stop_container(&c.id, Duration::from_secs(60))
            .await
            .expect("stop");
        let status = c.wait().await;
        assert_eq!(exit(&status), (137, "Error"), "{target:?} {args:?}");
        assert_eq!(status.message, "stopped", "{target:?} {args:?}");
        // Stopping again is a no-op.
        fx.runtime
            .stop_container(&c.id, Duration::ZERO)
            .await
            .expect("stop again");
        assert_eq!(c.status().await, status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_own_their_containers() {
    let fx = setup().await;
    let image = fx.guest(GuestTarget::P2).await;
    let other = sandbox(&fx.runtime, fx.logs.path().join("other"), "other").await;
    let mut looping = fx.start(&spec(&image, &["loop"])).await;
    let mut done = fx.run(&spec(&image, &["exit", "0"])).await;
    let elsewhere = start_in(
        &fx.runtime,
        &other,
        &fx.logs.path().join("other"),
        &spec(&image, &["loop"]),
    )
    .await;

    // Listing by sandbox, by state and by label, as an agent does after a restart.
    let in_sandbox = |sandbox: &str| ContainerFilter {
        sandbox_id: Some(sandbox.to_owned()),
        ..ContainerFilter::default()
    };
    let mut ids: Vec<String> = fx
        .runtime
        .list_containers(&in_sandbox(&fx.sandbox))
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    let mut expected = vec![looping.id.clone(), done.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let running = fx
        .runtime
        .list_containers(&ContainerFilter {
            state: Some(ContainerState::Running),
            ..in_sandbox(&fx.sandbox)
        })
        .await
        .expect("list");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, looping.id);
    let by_label = fx
        .runtime
        .list_pod_sandboxes(&PodSandboxFilter {
            label_selector: [(labels::POD_UID.to_owned(), "uid-other".to_owned())].into(),
            ..PodSandboxFilter::default()
        })
        .await
        .expect("list sandboxes");
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, other);
    assert_eq!(by_label[0].runtime_handler, fx.runtime.handler());

    // Stopping the sandbox kills what runs in it, and only there.
    fx.runtime
        .stop_pod_sandbox(&fx.sandbox)
        .await
        .expect("stop sandbox");
    assert_eq!(exit(&looping.wait().await), (137, "Error"));
    assert_eq!(
        fx.runtime
            .pod_sandbox_status(&fx.sandbox)
            .await
            .expect("status")
            .state,
        SandboxState::NotReady
    );
    assert_eq!(elsewhere.status().await.state, ContainerState::Running);
    match fx
        .runtime
        .create_container(&fx.sandbox, &spec(&image, &["exit", "0"]))
        .await
    {
        Err(RuntimeError::CreateContainer { message }) => {
            assert!(message.contains("not ready"), "{message}")
        }
        other => panic!("expected CreateContainer, got {other:?}"),
    }

    // Removing it forgets its containers (announced as deleted); the logs stay.
    fx.runtime
        .remove_pod_sandbox(&fx.sandbox)
        .await
        .expect("remove");
    assert!(
        fx.runtime
            .list_containers(&in_sandbox(&fx.sandbox))
            .await
            .expect("list")
            .is_empty()
    );
    let mut deleted = 0;
    while let Ok(event) = done.events.try_recv() {
        if event.kind == ContainerEventKind::Deleted && event.sandbox_id == fx.sandbox {
            deleted += 1;
        }
    }
    assert_eq!(deleted, 2);
    assert!(done.log.is_file());
    match fx.runtime.container_status(&done.id).await {
        Err(e @ RuntimeError::NotFound { .. }) => assert_eq!(e.reason(), "CreateContainerError"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    fx.runtime
        .remove_pod_sandbox(&other)
        .await
        .expect("remove other");
    assert!(
        fx.runtime
            .list_pod_sandboxes(&PodSandboxFilter::default())
            .await
            .expect("list")
            .is_empty()
    );
}

/// The limit is an upper bound on CPU time over wall-clock time, which a loaded machine only
/// lowers; an unthrottled spin on an idle machine would use about all of a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_holds_a_busy_guest_to_its_share() {
    let fx = setup().await;
    let image = fx.guest(GuestTarget::P2).await;
    for cpu_millis in [None, Some(200)] {
        let mut spin = spec(&image, &["spin", "1000"]);
        spin.resources.cpu_millis = cpu_millis;
        let c = fx.run(&spin).await;
        let status = c.status().await;
        assert_eq!(status.reason, "Completed");
        let stats = fx.runtime.container_stats(&c.id).await.expect("stats");
        let wall = status
            .finished_at
            .and_then(|f| f.duration_since(status.started_at?).ok())
            .expect("times");
        let share = stats.cpu_usage.as_secs_f64() / wall.as_secs_f64();
        eprintln!(
            "limit {cpu_millis:?}: cpu {:?} over {wall:?} ({share:.2} of a core), {} iterations",
            stats.cpu_usage,
            c.stdout().trim()
        );
        assert!(stats.cpu_usage > Duration::ZERO);
        if cpu_millis.is_some() {
            // 0.2 plus one unthrottled tick at the end, and rounding.
            assert!(share <= 0.25, "a 200m guest used {share:.2} of a core");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_with_oom() {
    let fx = setup().await;
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let mut over = spec(&image, &["alloc", "64"]);
        over.resources.memory_bytes = Some(16 << 20);
        let status = fx.run(&over).await.status().await;
        assert_eq!(exit(&status), (137, "OOMKilled"), "{target:?}: {status:?}");
        assert!(
            status
                .message
                .starts_with("memory limit of 16777216 bytes exceeded"),
            "{status:?}"
        );

        let mut under = spec(&image, &["alloc", "8"]);
        under.resources = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: None,
        };
        let c = fx.run(&under).await;
        assert_eq!(c.status().await.reason, "Completed", "{target:?}");
        assert_eq!(c.stdout(), "allocated 8 MiB\n");
        // An ended guest holds nothing.
        let stats = fx.runtime.container_stats(&c.id).await.expect("stats");
        assert_eq!(stats.memory_bytes, 0, "{stats:?}");

        // A running one reports what its memories hold.
        let mut hold = spec(&image, &["hold", "8"]);
        hold.resources = under.resources;
        let mut c = fx.start(&hold).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.stdout().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{target:?}: no output"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = fx.runtime.container_stats(&c.id).await.expect("stats");
        assert!(stats.memory_bytes >= 8 << 20, "{target:?}: {stats:?}");
        assert!(stats.memory_bytes <= 64 << 20, "{target:?}: {stats:?}");
        fx.runtime
            .stop_container(&c.id, Duration::from_secs(60))
            .await
            .expect("stop");
        c.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_sees_only_its_mounts() {
    let fx = setup().await;
    for target in [GuestTarget::P1, GuestTarget::P2] {
        let image = fx.guest(target).await;
        let volume = tempfile::tempdir().expect("volume");
        std::fs::write(volume.path().join("greeting.txt"), "hi").expect("write");

        let c = fx.run(&spec(&image, &["ls", "/"])).await;
        assert!(
            c.stdout().starts_with("error: "),
            "{target:?}: {}",
            c.stdout()
        );

        let mut mounted = spec(&image, &["ls", "/data"]);
        mounted.mounts = vec![Mount {
            host_path: volume.path().to_path_buf(),
            container_path: "/data".to_string(),
            read_only: false,
        }];
        let c = fx.run(&mounted).await;
        assert_eq!(c.stdout(), "greeting.txt\n", "{target:?}");

        let mut write = spec(&image, &["write", "/data/out.txt", "x"]);
        write.mounts = mounted.mounts.clone();
        let c = fx.run(&write).await;
        assert_eq!(c.stdout(), "written\n", "{target:?}");

        let mut read_only = spec(&image, &["write", "/data/refused.txt", "x"]);
        read_only.mounts = mounted.mounts.clone();
        read_only.mounts[0].read_only = true;
        let c = fx.run(&read_only).await;
        assert!(
            c.stdout().starts_with("error: "),
            "{target:?}: {}",
            c.stdout()
        );
        assert!(!volume.path().join("refused.txt").exists());
    }
    // A volume that cannot be opened fails the creation, not the running container.
    let image = fx.guest(GuestTarget::P2).await;
    let mut missing = spec(&image, &["ls", "/data"]);
    missing.mounts = vec![Mount {
        host_path: fx.logs.path().join("no-such-dir"),
        container_path: "/data".to_string(),
        read_only: false,
    }];
    match fx.runtime.create_container(&fx.sandbox, &missing).await {
        Err(e @ RuntimeError::CreateContainer { .. }) => {
            assert!(
                e.to_string().contains("cannot open volume directory"),
                "{e}"
            )
        }
        other => panic!("expected CreateContainer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_map_to_kubernetes_reasons() {
    let fx = setup().await;
    let missing = fx.registry.reference("nothing", "here");
    match fx.runtime.pull_image(&missing, None).await {
        Err(RuntimeError::ImagePull { message, .. }) => {
            assert!(message.to_lowercase().contains("unknown"), "{message}");
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    match fx
        .runtime
        .pull_image("127.0.0.1:1/nothing:here", None)
        .await
    {
        Err(RuntimeError::ImagePull { message, .. }) => {
            assert!(message.to_lowercase().contains("connect"), "{message}");
        }
        other => panic!("expected ImagePull, got {other:?}"),
    }
    match fx.runtime.pull_image("Not A Reference!", None).await {
        Err(e @ RuntimeError::InvalidImageName { .. }) => {
            assert_eq!(e.reason(), "InvalidImageName");
        }
        other => panic!("expected InvalidImageName, got {other:?}"),
    }
    // Never pulled: not present, and asking does not touch the registry.
    let never = fx.registry.reference("testguest", "never");
    assert_eq!(fx.runtime.image_status(&never).await.expect("status"), None);
    assert_eq!(
        fx.runtime
            .image_status("Not A Reference!")
            .await
            .expect("status"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_wasm_artifact_fails_to_create() {
    let fx = setup().await;
    let reference = fx.registry.reference("notwasm", "v1");
    shoal_runtime_wasm::push(b"#!/bin/sh\necho hi\n".to_vec(), &reference)
        .await
        .expect("push");
    let image = fx.runtime.pull_image(&reference, None).await.expect("pull");
    match fx
        .runtime
        .create_container(&fx.sandbox, &spec(&image, &[]))
        .await
    {
        Err(e @ RuntimeError::CreateContainer { .. }) => {
            assert_eq!(e.reason(), "CreateContainerError");
            assert!(
                e.to_string()
                    .contains("is not a WebAssembly module or component"),
                "{e}"
            );
        }
        other => panic!("expected CreateContainer, got {other:?}"),
    }
    // Nothing half-created is left behind.
    assert!(
        fx.runtime
            .list_containers(&ContainerFilter::default())
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_listed_cached_on_disk_and_resolved_locally() {
    let fx = setup().await;
    let image = fx.guest(GuestTarget::P2).await;
    assert_eq!(fx.runtime.compile_count(), 1);
    let layer = fx.runtime.layer_digest(&image).expect("layer");
    assert!(fx.runtime.compiled_path(&layer).is_file());
    fx.run(&spec(&image, &["exit", "0"])).await;
    fx.run(&spec(&image, &["exit", "0"])).await;
    assert_eq!(fx.runtime.compile_count(), 1);
    let reference = fx.registry.reference("testguest", GuestTarget::P2.triple());
    let listed = fx.runtime.list_images().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, image);
    assert_eq!(listed[0].repo_tags, std::slice::from_ref(&reference));
    assert!(listed[0].size > 0);

    // A fresh runtime on the same data dir, with the registry gone: the image resolves
    // locally and a container is created by deserializing instead of compiling.
    let Fixture {
        registry,
        runtime,
        data_dir,
        logs,
        ..
    } = fx;
    drop(registry);
    drop(runtime);
    let runtime =
        Arc::new(WasmRuntime::new(WasmRuntimeConfig::new(data_dir.path())).expect("runtime"));
    let found = runtime
        .image_status(&reference)
        .await
        .expect("status")
        .expect("present");
    assert_eq!(found.id, image);
    let sandbox = sandbox(&runtime, logs.path().to_path_buf(), "again").await;
    let mut c = start_in(
        &runtime,
        &sandbox,
        logs.path(),
        &spec(&found.id, &["print", "cached"]),
    )
    .await;
    assert_eq!(c.wait().await.reason, "Completed");
    assert_eq!(c.stdout(), "cached\n");
    assert_eq!(runtime.compile_count(), 0);
    match runtime.pull_image(&reference, None).await {
        Err(RuntimeError::ImagePull { .. }) => {}
        other => panic!("a pull must reach the (gone) registry, got {other:?}"),
    }

    // Removing forgets the reference; the running world does not notice.
    runtime.remove_image(&reference).await.expect("remove");
    assert_eq!(
        runtime.image_status(&reference).await.expect("status"),
        None
    );
    assert!(runtime.list_images().await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_example_greets_and_keeps_running() {
    let fx = setup().await;
    let bytes = std::fs::read(hello_guest(GuestTarget::P2)).expect("hello binary");
    let reference = fx.registry.reference("hello", "v1");
    shoal_runtime_wasm::push(bytes, &reference)
        .await
        .expect("push");
    let image = fx.runtime.pull_image(&reference, None).await.expect("pull");
    let mut hello = spec(&image, &[]);
    hello.command = vec!["hello".to_string()];
    hello.envs = vec![("GREETING".to_string(), "ahoy".to_string())];
    let mut c = fx.start(&hello).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.stdout().contains("GREETING: ahoy") {
        assert!(Instant::now() < deadline, "no greeting: {}", c.stdout());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c.stdout().starts_with("Hello from Shoal!\n"));
    assert_eq!(
        c.status().await.state,
        ContainerState::Running,
        "hello keeps running"
    );
    fx.runtime
        .remove_container(&c.id)
        .await
        .expect("remove kills");
    let mut saw_stop = false;
    while let Ok(event) = c.events.try_recv() {
        saw_stop |= event.container_id == c.id && event.kind == ContainerEventKind::Stopped;
    }
    assert!(saw_stop, "a removed running container is stopped first");
    assert!(matches!(
        fx.runtime.container_status(&c.id).await,
        Err(RuntimeError::NotFound { .. })
    ));
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
    let fx = setup().await;
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

    let pulled = fx.runtime.pull_image(&reference, None).await.expect("pull");
    let c = fx.run(&spec(&pulled, &["print", "from", "a", "tar"])).await;
    assert_eq!(c.status().await.reason, "Completed");
    assert_eq!(c.stdout(), "from a tar\n");
}
