"""The official Kubernetes Python client against a Shoal cluster (issue 6, item 8).

Run by tests/e2e/tests/python_client.rs with KUBECONFIG set, in the virtualenv that
scripts/install-deps.sh makes (target/pyenv). Every step checks what it got back; the first
mismatch raises and the test fails with the traceback.
"""

import json
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "python"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

# Create and list.
for i in range(3):
    core.create_namespaced_config_map(
        ns,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"cm-{i}", labels={"app": "py"}),
            data={"i": str(i)},
        ),
    )
listed = core.list_namespaced_config_map(ns, label_selector="app=py")
check([c.metadata.name for c in listed.items] == ["cm-0", "cm-1", "cm-2"], "list")
rv = listed.metadata.resource_version
check(rv and int(rv) > 0, "list resourceVersion")

# Watch from the list's resourceVersion: see a change made after the list.
seen = []


def follow():
    w = watch.Watch()
    for event in w.stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=rv,
        timeout_seconds=20,
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "cm-late":
            w.stop()


t = threading.Thread(target=follow)
t.start()
core.create_namespaced_config_map(
    ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm-late"), data={"x": "1"})
)
t.join(30)
check(("ADDED", "cm-late") in seen, f"watch from the list's resourceVersion saw {seen}")

# Patch three ways.
core.patch_namespaced_config_map("cm-0", ns, {"data": {"merged": "yes"}})  # strategic
check(core.read_namespaced_config_map("cm-0", ns).data["merged"] == "yes", "strategic patch")
api = client.ApiClient()
api.call_api(
    f"/api/v1/namespaces/{ns}/configmaps/cm-1",
    "PATCH",
    header_params={"Content-Type": "application/merge-patch+json", "Accept": "application/json"},
    body={"data": {"m": "1"}},
    auth_settings=["BearerToken"],
    response_type="object",
)
check(core.read_namespaced_config_map("cm-1", ns).data["m"] == "1", "merge patch")
api.call_api(
    f"/api/v1/namespaces/{ns}/configmaps/cm-2",
    "PATCH",
    header_params={"Content-Type": "application/json-patch+json", "Accept": "application/json"},
    body=[{"op": "add", "path": "/data/j", "value": "1"}],
    auth_settings=["BearerToken"],
    response_type="object",
)
check(core.read_namespaced_config_map("cm-2", ns).data["j"] == "1", "json patch")

# Server-side apply (create, then change) of a Deployment.
deployment = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": ns},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "127.0.0.1:1/none:v1"}]},
        },
    },
}
for replicas in (1, 2):
    deployment["spec"]["replicas"] = replicas
    api.call_api(
        f"/apis/apps/v1/namespaces/{ns}/deployments/web",
        "PATCH",
        query_params=[("fieldManager", "python"), ("force", "true")],
        header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        body=deployment,
        auth_settings=["BearerToken"],
        response_type="object",
    )
    got = apps.read_namespaced_deployment("web", ns)
    check(got.spec.replicas == replicas, f"server-side apply to {replicas} replicas")

# Errors come back as the client's ApiException with the Status.
try:
    core.read_namespaced_config_map("missing", ns)
    check(False, "reading a missing object succeeded")
except ApiException as e:
    check(e.status == 404, f"missing object: {e.status}")
    check(json.loads(e.body)["reason"] == "NotFound", "missing object reason")

# A custom resource through ApiextensionsV1Api and CustomObjectsApi.
ext = client.ApiextensionsV1Api()
custom = client.CustomObjectsApi()
ext.create_custom_resource_definition(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"plural": "crontabs", "kind": "CronTab", "shortNames": ["ct"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "cronSpec": {"type": "string"},
                                        "replicas": {"type": "integer", "default": 1},
                                    },
                                },
                                "status": {"type": "object", "properties": {"runs": {"type": "integer"}}},
                            },
                        }
                    },
                }
            ],
        },
    }
)
for _ in range(200):
    crd = ext.read_custom_resource_definition("crontabs.stable.example.com")
    conditions = (crd.status.conditions or []) if crd.status else []
    if any(c.type == "Established" and c.status == "True" for c in conditions):
        break
    time.sleep(0.05)
else:
    check(False, "the CRD never became Established")
group, version, plural = "stable.example.com", "v1", "crontabs"
created = custom.create_namespaced_custom_object(
    group,
    version,
    ns,
    plural,
    {
        "apiVersion": "stable.example.com/v1",
        "kind": "CronTab",
        "metadata": {"name": "nightly"},
        "spec": {"cronSpec": "0 3 * * *"},
    },
)
check(created["spec"]["replicas"] == 1, "schema default on create")
listed = custom.list_namespaced_custom_object(group, version, ns, plural)
check([o["metadata"]["name"] for o in listed["items"]] == ["nightly"], "custom object list")
custom.patch_namespaced_custom_object(group, version, ns, plural, "nightly", {"spec": {"replicas": 3}})
got = custom.get_namespaced_custom_object(group, version, ns, plural, "nightly")
check(got["spec"]["replicas"] == 3, "custom object merge patch")
custom.patch_namespaced_custom_object_status(group, version, ns, plural, "nightly", {"status": {"runs": 7}})
got = custom.get_namespaced_custom_object_status(group, version, ns, plural, "nightly")
check(got["status"]["runs"] == 7 and got["spec"]["replicas"] == 3, "custom object status")
try:
    custom.create_namespaced_custom_object(
        group, version, ns, plural,
        {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "bad"},
         "spec": {"replicas": "many"}},
    )
    check(False, "an invalid custom object was accepted")
except ApiException as e:
    check(e.status == 422, f"invalid custom object: {e.status}")
custom.delete_namespaced_custom_object(group, version, ns, plural, "nightly")
check(custom.list_namespaced_custom_object(group, version, ns, plural)["items"] == [], "custom object delete")
ext.delete_custom_resource_definition("crontabs.stable.example.com")

# Delete.
apps.delete_namespaced_deployment("web", ns)
for name in ["cm-0", "cm-1", "cm-2", "cm-late"]:
    core.delete_namespaced_config_map(name, ns)
left = core.list_namespaced_config_map(ns, label_selector="app=py").items
check(left == [], f"left after delete: {[c.metadata.name for c in left]}")
print("python client: all steps passed")
