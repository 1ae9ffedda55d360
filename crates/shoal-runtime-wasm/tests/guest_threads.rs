//! Guests run on the runtime's own threads, at a lower priority, never on the caller's: one test
//! alone in its process, so that every `shoal-guest` thread it sees belongs to its runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::{
    ContainerConfig, ContainerMetadata, ImageService, PodSandboxConfig, PodSandboxMetadata,
    RuntimeService,
};
use shoal_runtime_wasm::testing::{GuestTarget, Registry, test_guest};
use shoal_runtime_wasm::{WasmRuntime, WasmRuntimeConfig};

/// (name, nice, user + system CPU ticks) of every thread of this process.
fn threads() -> Vec<(String, i64, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split after the last ')'.
        let (head, rest) = stat.rsplit_once(')').expect("stat");
        let name = head.split_once('(').expect("comm").1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state is field 3 of stat(5), utime 14, stime 15, nice 19.
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        let nice: i64 = fields[16].parse().expect("nice");
        out.push((name, nice, utime + stime));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_guests_spend_their_cpu_on_niced_guest_threads() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start();
    let data_dir = tempfile::tempdir().expect("data dir");
    let runtime =
        Arc::new(WasmRuntime::new(WasmRuntimeConfig::new(data_dir.path())).expect("runtime"));
    let reference = registry.reference("testguest", "threads");
    let bytes = std::fs::read(test_guest(GuestTarget::P2)).expect("guest binary");
    shoal_runtime_wasm::push(bytes, &reference)
        .await
        .expect("push");
    let image = runtime.pull_image(&reference, None).await.expect("pull");
    let sandbox = runtime
        .run_pod_sandbox(&PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: "busy".to_owned(),
                namespace: "default".to_owned(),
                uid: "uid-busy".to_owned(),
                attempt: 0,
            },
            log_directory: data_dir.path().join("logs"),
            ..PodSandboxConfig::default()
        })
        .await
        .expect("sandbox");
    let before: u64 = threads()
        .iter()
        .filter(|(name, _, _)| name.starts_with(WasmRuntime::guest_thread_prefix()))
        .map(|(_, _, cpu)| cpu)
        .sum();
    let mut ids = Vec::new();
    for i in 0..2 {
        let id = runtime
            .create_container(
                &sandbox,
                &ContainerConfig {
                    metadata: ContainerMetadata {
                        name: format!("loop{i}"),
                        attempt: 0,
                    },
                    image: image.clone(),
                    command: vec!["testguest".to_owned(), "loop".to_owned()],
                    log_path: PathBuf::from(format!("loop{i}.log")),
                    ..ContainerConfig::default()
                },
            )
            .await
            .expect("create");
        runtime.start_container(&id).await.expect("start");
        ids.push(id);
    }
    // Let the guests use a second of CPU between them, as they measure it themselves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut used = Duration::ZERO;
    while used < Duration::from_secs(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "guests used {used:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        used = Duration::ZERO;
        for id in &ids {
            used += runtime.container_stats(id).await.expect("stats").cpu_usage;
        }
    }
    let threads = threads();
    let guest_threads: Vec<_> = threads
        .iter()
        .filter(|(name, _, _)| name.starts_with(WasmRuntime::guest_thread_prefix()))
        .collect();
    assert!(!guest_threads.is_empty(), "no guest threads: {threads:?}");
    for (name, nice, _) in &guest_threads {
        assert_eq!(*nice, 10, "{name} runs at nice {nice}");
    }
    // Clock ticks are 1/100 s: the guest threads did at least 90% of the guests' CPU.
    let ticks: u64 = guest_threads.iter().map(|(_, _, cpu)| cpu).sum::<u64>() - before;
    let guest_ticks = used.as_millis() as u64 / 10;
    assert!(
        ticks * 10 >= guest_ticks * 9,
        "guest threads used {ticks} ticks, the guests {guest_ticks}: {threads:?}"
    );
    for id in &ids {
        runtime
            .stop_container(id, Duration::from_secs(60))
            .await
            .expect("stop");
    }
}
