//! `wasi:http/proxy` components served by the Wasm runtime: the `http-hello` example built from
//! source, pushed to a real `docker-registry`, served on its pod's address (127.77.0.0/16 here,
//! on the loopback) and on a host port, a fresh instance per request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::{
    ContainerConfig, ContainerMetadata, ContainerPort, ContainerState, ImageService, Limits,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol, RuntimeService,
};
use shoal_runtime_wasm::testing::{Registry, http_get, http_hello_guest};
use shoal_runtime_wasm::{WasmRuntime, WasmRuntimeConfig};

/// `GET path`, off the async workers.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get(addr, &path))
        .await
        .expect("get task")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_components_are_served_per_request_on_the_pod_ip_and_host_port() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start();
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut config = WasmRuntimeConfig::new(data_dir.path());
    config.pod_cidr = Some(shoal_runtime_wasm::parse_cidr("127.77.0.0/16").expect("cidr"));
    config.node_ips = vec!["127.0.0.1".parse().expect("ip")];
    let runtime = Arc::new(WasmRuntime::new(config).expect("runtime"));
    let reference = registry.reference("http-hello", "v1");
    let bytes = std::fs::read(http_hello_guest()).expect("http-hello binary");
    shoal_runtime_wasm::push(bytes, &reference)
        .await
        .expect("push");
    let image = runtime.pull_image(&reference, None).await.expect("pull");

    let host_port = free_port();
    let sandbox = runtime
        .run_pod_sandbox(&PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: "web".to_owned(),
                namespace: "default".to_owned(),
                uid: "uid-web".to_owned(),
                attempt: 0,
            },
            log_directory: data_dir.path().join("logs"),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Tcp,
                // The same port for the pod and the host, as examples/http-hello has it.
                container_port: host_port,
                host_port,
                // On the node's addresses, beside the pod's own listener on the same port.
                host_ip: None,
            }],
            ..PodSandboxConfig::default()
        })
        .await
        .expect("sandbox");
    let status = runtime.pod_sandbox_status(&sandbox).await.expect("status");
    assert_eq!(
        status.ips,
        ["127.77.0.2".parse::<std::net::IpAddr>().expect("ip")]
    );
    let pod = SocketAddr::new(status.ips[0], host_port);
    let host = SocketAddr::from(([127, 0, 0, 1], host_port));

    let web = ContainerConfig {
        metadata: ContainerMetadata {
            name: "web".to_owned(),
            attempt: 0,
        },
        image,
        envs: vec![("GREETING".to_owned(), "ahoy".to_owned())],
        log_path: PathBuf::from("web/0.log"),
        resources: Limits {
            memory_bytes: Some(32 << 20),
            cpu_millis: None,
        },
        ports: vec![ContainerPort {
            protocol: Protocol::Tcp,
            container_port: host_port,
        }],
        ..ContainerConfig::default()
    };
    let id = runtime
        .create_container(&sandbox, &web)
        .await
        .expect("create");
    runtime.start_container(&id).await.expect("start");

    let hello = "Hello from Shoal!\nGREETING: ahoy\n";
    assert_eq!(
        get(pod, "/").await.expect("pod ip"),
        (200, hello.to_owned())
    );
    assert_eq!(
        get(host, "/").await.expect("host port"),
        (200, hello.to_owned())
    );
    assert_eq!(
        get(pod, "/env/GREETING").await.expect("env"),
        (200, "ahoy\n".to_owned())
    );
    // Nothing of the host's environment.
    assert_eq!(get(pod, "/env/PATH").await.expect("env").0, 404);
    // Outbound requests are not granted.
    let (code, body) = get(pod, "/outbound").await.expect("outbound");
    assert_eq!(code, 200);
    assert!(body.starts_with("refused: "), "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // Many at once, each its own instance.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..32 {
        requests.spawn(get(pod, "/"));
    }
    while let Some(done) = requests.join_next().await {
        assert_eq!(done.expect("task").expect("get"), (200, hello.to_owned()));
    }

    // A request over the memory limit fails alone; the next ones are served.
    let (code, body) = get(pod, "/alloc/64").await.expect("alloc");
    assert_eq!(code, 500, "{body}");
    assert_eq!(get(pod, "/alloc/8").await.expect("alloc").0, 200);
    assert_eq!(get(pod, "/").await.expect("after").0, 200);
    let stats = runtime.container_stats(&id).await.expect("stats");
    assert!(stats.cpu_usage > Duration::ZERO);
    assert_eq!(stats.memory_bytes, 0, "instances end with their request");

    // Stopping with nothing in flight: a clean end, and the ports close.
    assert_eq!(
        runtime.container_status(&id).await.expect("status").state,
        ContainerState::Running
    );
    runtime
        .stop_container(&id, Duration::from_secs(60))
        .await
        .expect("stop");
    let ended = runtime.container_status(&id).await.expect("status");
    assert_eq!(
        (ended.exit_code, ended.reason.as_str()),
        (0, "Completed"),
        "{ended:?}"
    );
    assert!(get(pod, "/").await.is_err(), "the pod port still answers");
    assert!(get(host, "/").await.is_err(), "the host port still answers");

    // A request that never ends holds the stop until the grace period kills it.
    let id = runtime
        .create_container(&sandbox, &web)
        .await
        .expect("create again");
    runtime.start_container(&id).await.expect("start again");
    assert_eq!(get(pod, "/").await.expect("served again").0, 200);
    let stuck = tokio::spawn(get(pod, "/loop"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runtime.container_stats(&id).await.expect("stats").cpu_usage < Duration::from_millis(50) {
        assert!(tokio::time::Instant::now() < deadline, "the loop never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime
        .stop_container(&id, Duration::from_millis(300))
        .await
        .expect("stop");
    let ended = runtime.container_status(&id).await.expect("status");
    assert_eq!(ended.exit_code, 137, "{ended:?}");
    assert!(ended.message.contains("grace period"), "{ended:?}");
    // The looping instance went with its server: its CPU time stops growing (a spinning
    // guest adds some over every 200 ms it is given).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut cpu = runtime.container_stats(&id).await.expect("stats").cpu_usage;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = runtime.container_stats(&id).await.expect("stats").cpu_usage;
        if now == cpu {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an instance still runs after its container was killed"
        );
        cpu = now;
    }
    stuck.abort();
}
