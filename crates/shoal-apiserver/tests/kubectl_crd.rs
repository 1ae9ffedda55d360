//! The real kubectl (1.32, `/usr/bin/kubectl`, which `scripts/install-deps.sh` requires)
//! driving a CustomResourceDefinition and its custom resources through a served apiserver:
//! apply, wait for Established, get with printer columns, client- and server-side apply,
//! merge patch, scale, explain, api-resources and deletion. Each step checks kubectl's output.

use shoal_apiserver::testing::{TestApiServer, kubectl};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.shoal.dev
spec:
  group: test.shoal.dev
  scope: Namespaced
  names:
    plural: widgets
    kind: Widget
    shortNames: [wd]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.size
        statusReplicasPath: .status.ready
    additionalPrinterColumns:
    - name: Size
      type: integer
      jsonPath: .spec.size
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should be.
            properties:
              size:
                type: integer
                description: How many parts the widget has.
              mode:
                type: string
                default: fast
          status:
            type: object
            properties:
              ready:
                type: integer
"#;

fn widget(size: u32) -> String {
    format!(
        "apiVersion: test.shoal.dev/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: {size}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_a_custom_resource_definition() {
    let server = TestApiServer::start().await.expect("apiserver");
    let home = server.dir().to_path_buf();
    server.write_kubeconfig().expect("kubeconfig");
    std::fs::write(home.join("crd.yaml"), CRD).expect("crd manifest");
    std::fs::write(home.join("w1.yaml"), widget(3)).expect("widget manifest");
    std::fs::write(home.join("w1-5.yaml"), widget(5)).expect("widget manifest");
    std::fs::write(home.join("w1-6.yaml"), widget(6)).expect("widget manifest");

    // (arguments, must succeed, text the output must contain)
    let steps: Vec<(Vec<&str>, bool, &str)> = vec![
        (
            vec!["apply", "-f", "crd.yaml"],
            true,
            "customresourcedefinition.apiextensions.k8s.io/widgets.test.shoal.dev created",
        ),
        (
            vec![
                "wait",
                "--for",
                "condition=established",
                "--timeout=30s",
                "crd/widgets.test.shoal.dev",
            ],
            true,
            "condition met",
        ),
        (vec!["get", "crd"], true, "widgets.test.shoal.dev"),
        (
            vec!["apply", "-f", "w1.yaml"],
            true,
            "widget.test.shoal.dev/w1 created",
        ),
        (vec!["get", "widgets"], true, "SIZE"),
        (
            vec![
                "get",
                "wd",
                "w1",
                "-o",
                "jsonpath={.spec.size} {.spec.mode}",
            ],
            true,
            "3 fast",
        ),
        (
            vec!["apply", "-f", "w1-5.yaml"],
            true,
            "widget.test.shoal.dev/w1 configured",
        ),
        (
            vec!["get", "widget", "w1", "-o", "jsonpath={.spec.size}"],
            true,
            "5",
        ),
        (
            vec!["apply", "--server-side", "-f", "w1-6.yaml"],
            true,
            "widget.test.shoal.dev/w1 serverside-applied",
        ),
        (
            vec![
                "patch",
                "widget",
                "w1",
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"mode":"slow"}}"#,
            ],
            true,
            "widget.test.shoal.dev/w1 patched",
        ),
        (
            vec!["patch", "widget", "w1", "-p", r#"{"spec":{"mode":"fast"}}"#],
            false,
            "application/strategic-merge-patch+json is not supported by test.shoal.dev/v1, Kind=Widget",
        ),
        (
            vec!["scale", "widget", "w1", "--replicas=8"],
            true,
            "widget.test.shoal.dev/w1 scaled",
        ),
        (
            vec![
                "get",
                "widget",
                "w1",
                "-o",
                "jsonpath={.spec.size} {.spec.mode}",
            ],
            true,
            "8 slow",
        ),
        (
            vec!["explain", "widget.spec"],
            true,
            "How many parts the widget has.",
        ),
        (
            vec!["api-resources", "--api-group=test.shoal.dev"],
            true,
            "widgets",
        ),
        (
            vec!["delete", "crd", "widgets.test.shoal.dev"],
            true,
            "deleted",
        ),
        // kubectl's discovery cache may still name the resource (the server answers 404) or
        // not any more (kubectl refuses the type itself); either way it is gone.
        (vec!["get", "widgets"], false, "widgets"),
    ];
    let results = tokio::task::spawn_blocking(move || {
        steps
            .into_iter()
            .map(|(args, ok, want)| {
                let (success, out) = kubectl(&home.join("kubeconfig"), &args);
                (args.join(" "), ok, want, success, out)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("kubectl thread");
    let _ = server.shutdown().await;
    for (args, ok, want, success, out) in &results {
        assert_eq!(success, ok, "kubectl {args}: {out}");
        assert!(
            out.contains(want),
            "kubectl {args}: wanted {want:?} in:\n{out}"
        );
    }
    let gone = &results[results.len() - 1].4;
    assert!(
        gone.contains("the server could not find the requested resource")
            || gone.contains("the server doesn't have a resource type \"widgets\""),
        "{gone}"
    );
    // The table has the printer columns and the widget's size in its row.
    let table = &results[4].4;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SIZE", "AGE"], "{table}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..2], ["w1", "3"], "{table}");
}

/// `kubectl explain` reads the built-in kinds' schemas from `/openapi/v3`, nested fields and
/// their descriptions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_shows_built_in_fields() {
    let server = TestApiServer::start().await.expect("apiserver");
    let kubeconfig = server.write_kubeconfig().expect("kubeconfig");
    let steps: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["explain", "pods.spec.containers"],
            "Container image name.",
        ),
        (
            vec!["explain", "deployment.spec.replicas"],
            "Number of desired pods.",
        ),
        (
            vec!["explain", "cronjobs.spec.schedule"],
            "The schedule in Cron format",
        ),
        (
            vec!["explain", "crd.spec.versions.schema"],
            "openAPIV3Schema",
        ),
    ];
    let results = tokio::task::spawn_blocking(move || {
        steps
            .into_iter()
            .map(|(args, want)| (args.join(" "), want, kubectl(&kubeconfig, &args)))
            .collect::<Vec<_>>()
    })
    .await
    .expect("kubectl thread");
    let _ = server.shutdown().await;
    for (args, want, (ok, out)) in results {
        assert!(ok, "kubectl {args}: {out}");
        assert!(
            out.contains(want),
            "kubectl {args}: wanted {want:?} in:\n{out}"
        );
    }
}
