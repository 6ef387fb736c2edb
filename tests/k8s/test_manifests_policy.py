"""What the rendered manifests promise, family by family: where servers run, what they get, who may
reach them, how they scale, and that they follow the conventions the rest of the project relies on."""
from __future__ import annotations

from typing import Any

import pytest

from control_plane.targets.eks.database import DATABASE_KEY, DATABASE_SECRET
from control_plane.targets.eks.locust import STATS_BEGIN, STATS_END
from control_plane.targets.eks.manifests import ROLE_ARN_ANNOTATION
from control_plane.targets.eks.target import CLUSTER_SCOPED, SECRETS

Manifest = dict[str, Any]
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                   "app.kubernetes.io/part-of", "app.kubernetes.io/version")
TRITON_ARGS = [
    "--model-repository=/models",
    "--model-control-mode=explicit",
    "--disable-auto-complete-config",
    "--metrics-config=summary_latencies=true",  # the dashboards' p99 panels and alarms read these summaries
    "--http-restricted-api=model-repository:triton-admin-key=$(TRITON_ADMIN_KEY)",
    "--grpc-restricted-protocol=model-repository:triton-admin-key=$(TRITON_ADMIN_KEY)",
]
# family -> (image, node selector, toleration key, accelerator resource, memory = pack budget)
FAMILIES = {
    "cpu": ("triton-fleet/server-cpu:0.1.0",
            {"kubernetes.io/arch": "arm64", "node.kubernetes.io/instance-type": "c7g.xlarge"}, None, None, "5Gi"),
    "gpu": ("triton-fleet/server-gpu:0.1.0", {"node.kubernetes.io/instance-type": "g4dn.xlarge"},
            "nvidia.com/gpu", "nvidia.com/gpu", "12Gi"),
    "inf2": ("triton-fleet/server-inf2:0.1.0", {"node.kubernetes.io/instance-type": "inf2.xlarge"},
             "aws.amazon.com/neuron", "aws.amazon.com/neuron", "12Gi"),
}


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}"
    return matches[0]


def container(workload: Manifest, name: str) -> Manifest:
    spec = workload["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def selects(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
    return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())


def port_number(workload: Manifest, container_name: str, port: str | int) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container(workload, container_name)["ports"] if p["name"] == port)


def test_every_object_and_pod_carries_the_standard_labels(all_manifests: list[Manifest]) -> None:
    for obj in all_manifests:
        template = obj.get("spec", {}).get("template")
        for labels in [obj["metadata"].get("labels", {})] + ([template["metadata"]["labels"]] if template else []):
            missing = [key for key in STANDARD_LABELS if key not in labels]
            assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
            assert labels["app.kubernetes.io/part-of"] == "triton-fleet"
            assert labels["app.kubernetes.io/version"] == "0.1.0"
        # A version in a selector would freeze it: StatefulSet selectors are immutable.
        selector = obj.get("spec", {}).get("selector", {})
        assert "app.kubernetes.io/version" not in selector.get("matchLabels", selector)


@pytest.mark.parametrize("family", FAMILIES)
class TestTritonFamily:
    def test_runs_the_agreed_command_with_its_family_config(self, all_manifests, family) -> None:
        triton = container(find(all_manifests, "StatefulSet", f"triton-{family}"), "triton")
        expected = TRITON_ARGS + ([] if family == "cpu" else [f"--model-config-name={family}"])
        assert triton["command"] == ["tritonserver"] and triton["args"] == expected
        assert triton["image"] == FAMILIES[family][0]
        key_ref = next(e for e in triton["env"] if e["name"] == "TRITON_ADMIN_KEY")["valueFrom"]["secretKeyRef"]
        assert key_ref == {"name": "triton-admin-key", "key": "key"}

    def test_probes_use_tritons_health_endpoints_on_port_8000(self, all_manifests, family) -> None:
        sts = find(all_manifests, "StatefulSet", f"triton-{family}")
        triton = container(sts, "triton")
        expected = {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
                    "readinessProbe": "/v2/health/ready"}
        for probe, path in expected.items():
            assert triton[probe]["httpGet"]["path"] == path
            assert port_number(sts, "triton", triton[probe]["httpGet"]["port"]) == 8000
        assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001,
                                                                           "metrics": 8002}

    def test_requests_equal_limits_with_its_accelerator_and_pack_budget(self, all_manifests, family) -> None:
        sts = find(all_manifests, "StatefulSet", f"triton-{family}")
        _, _, _, accelerator, memory = FAMILIES[family]
        for c in sts["spec"]["template"]["spec"]["containers"] + sts["spec"]["template"]["spec"]["initContainers"]:
            assert c["resources"]["requests"] == c["resources"]["limits"], f"{c['name']} is not Guaranteed QoS"
        resources = container(sts, "triton")["resources"]["limits"]
        assert resources["memory"] == memory
        accelerators = {k: v for k, v in resources.items() if k not in ("cpu", "memory")}
        assert accelerators == ({accelerator: "1"} if accelerator else {})

    def test_lands_only_on_its_node_pool(self, all_manifests, family) -> None:
        pod = find(all_manifests, "StatefulSet", f"triton-{family}")["spec"]["template"]["spec"]
        _, node_selector, taint, _, _ = FAMILIES[family]
        assert pod["nodeSelector"] == node_selector
        expected = [{"key": taint, "operator": "Exists", "effect": "NoSchedule"}] if taint else []
        assert pod.get("tolerations", []) == expected

    def test_syncs_the_repository_before_and_beside_triton(self, all_manifests, family) -> None:
        sts = find(all_manifests, "StatefulSet", f"triton-{family}")
        pod = sts["spec"]["template"]["spec"]
        source = "s3://$(REPOSITORY_BUCKET)/$(REPOSITORY_PREFIX)"
        first, sidecar = pod["initContainers"]
        # one full pass; a failed one logs its reason and is retried with back-off (not CrashLoopBackOff)
        assert first["command"][:2] == ["/bin/sh", "-c"]
        assert (f"until fleet sync {source} /repository/models --interval 0 --server eks-$(POD_NAME) "
                "--allow-unassigned;") in " ".join(first["command"][2].split())
        assert "retrying in $d s" in first["command"][2]
        assert "restartPolicy" not in first  # one pass, before anything else starts
        assert sidecar["command"] == ["fleet", "sync", source, "/repository/models", "--interval", "30",
                                      "--server", "eks-$(POD_NAME)"]
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in sidecar["env"]
        assert sidecar["restartPolicy"] == "Always"  # a native sidecar
        assert first["image"] == sidecar["image"] == FAMILIES[family][0]  # the server image has `fleet`
        # The synced folder and fleet sync's sibling staging folder share one volume (renames stay on one
        # filesystem); Triton sees exactly the synced folder, read-only, as /models.
        for sync in (first, sidecar):
            assert {"name": "models", "mountPath": "/repository"} in sync["volumeMounts"]
        assert {"name": "models", "mountPath": "/models", "subPath": "models", "readOnly": True} in \
            container(sts, "triton")["volumeMounts"]
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "models")
        assert pod["serviceAccountName"] == "triton-server"

    def test_is_addressable_per_pod_behind_a_headless_service(self, all_manifests, family) -> None:
        sts = find(all_manifests, "StatefulSet", f"triton-{family}")
        service = find(all_manifests, "Service", f"triton-{family}")
        assert service["spec"]["clusterIP"] == "None"
        assert sts["spec"]["serviceName"] == service["metadata"]["name"]
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert selects(service["spec"]["selector"], pod_labels)
        assert pod_labels["triton-fleet.io/family"] == family
        assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}

    def test_has_a_disruption_budget_and_an_autoscaler_on_triton_metrics(self, all_manifests, family) -> None:
        sts = find(all_manifests, "StatefulSet", f"triton-{family}")
        pdb = find(all_manifests, "PodDisruptionBudget", f"triton-{family}")
        assert pdb["spec"]["maxUnavailable"] == 1
        assert selects(pdb["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
        hpa = find(all_manifests, "HorizontalPodAutoscaler", f"triton-{family}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": f"triton-{family}"}
        metrics = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"]}
        assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])
        assert metrics == {"triton_queue_time_us": {"type": "AverageValue", "averageValue": "2000"},
                           "triton_pending_requests": {"type": "AverageValue", "averageValue": "32"}}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_triton_server_account_has_an_irsa_role(all_manifests: list[Manifest]) -> None:
    for name in ("triton-server", "control-plane"):
        account = find(all_manifests, "ServiceAccount", name)
        assert account["metadata"]["annotations"][ROLE_ARN_ANNOTATION].startswith("arn:aws:iam::")
    assert ROLE_ARN_ANNOTATION not in find(all_manifests, "ServiceAccount", "locust")["metadata"].get(
        "annotations", {})


def test_only_the_control_plane_reaches_tritons_repository_api(all_manifests: list[Manifest]) -> None:
    policy = find(all_manifests, "NetworkPolicy", "triton-server-ingress")
    control_plane = find(all_manifests, "StatefulSet", "control-plane")["spec"]["template"]["metadata"]["labels"]
    locust_worker = find(all_manifests, "Job", "locust-worker")["spec"]["template"]["metadata"]["labels"]
    for family in FAMILIES:
        server = find(all_manifests, "StatefulSet", f"triton-{family}")["spec"]["template"]["metadata"]["labels"]
        assert selects(policy["spec"]["podSelector"]["matchLabels"], server)
    assert policy["spec"]["policyTypes"] == ["Ingress"]

    def peers(port: int) -> list[list[Manifest] | None]:
        return [rule.get("from") for rule in policy["spec"]["ingress"]
                if port in [p["port"] for p in rule["ports"]]]

    (http_peers,) = peers(8000)
    assert http_peers is not None and len(http_peers) == 1
    assert selects(http_peers[0]["podSelector"]["matchLabels"], control_plane)
    assert not selects(http_peers[0]["podSelector"]["matchLabels"], locust_worker)
    assert peers(8001) == [None]  # inference clients from anywhere
    # metrics: the control plane and the locust master (a run's per-server counts, LOCUST_SERVER_METRICS)
    locust_master = find(all_manifests, "Job", "locust-master")["spec"]["template"]["metadata"]["labels"]
    metrics_peers = [peer for rule in peers(8002) for peer in rule or []]
    for labels in (control_plane, locust_master):
        assert any(selects(p.get("podSelector", {}).get("matchLabels", {}), labels) for p in metrics_peers
                   if "podSelector" in p), labels


def test_locust_master_prints_the_stats_block_the_target_reads(all_manifests: list[Manifest]) -> None:
    master = find(all_manifests, "Job", "locust-master")
    worker = find(all_manifests, "Job", "locust-worker")
    script = container(master, "locust")["args"][0]
    assert STATS_BEGIN in script and STATS_END in script and "/tmp/fleet_stats.csv" in script
    assert master["spec"]["suspend"] and worker["spec"]["suspend"]  # applying never starts load
    assert master["spec"]["backoffLimit"] == 0
    service = find(all_manifests, "Service", "locust-master")
    assert selects(service["spec"]["selector"], master["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == 5557
    env = {e["name"]: e.get("value") for e in container(worker, "locust")["env"]}
    assert (env["LOCUST_MASTER_NODE_HOST"], env["LOCUST_MASTER_NODE_PORT"]) == ("locust-master", "5557")
    assert container(master, "locust")["image"] == "triton-fleet/loadtest:0.1.0"


def test_control_plane_reads_secrets_and_the_repository_configmap(all_manifests: list[Manifest]) -> None:
    sts = find(all_manifests, "StatefulSet", "control-plane")
    app = container(sts, "control-plane")
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in app["env"]
               if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {"FLEET_DATABASE_URL": {"name": "fleet-database", "key": "url"},
                       "FLEET_API_TOKEN": {"name": "fleet-api-token", "key": "token"},
                       "FLEET_TRITON_ADMIN_KEY": {"name": "triton-admin-key", "key": "key"}}
    values = {e["name"]: e.get("value") for e in app["env"]}
    # It publishes packs where the servers sync from: the same ConfigMap feeds both.
    assert values["FLEET_REPOSITORY_URI"] == "s3://$(REPOSITORY_BUCKET)/$(REPOSITORY_PREFIX)"
    assert app["command"][-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    # 9102: /metrics without a token, for scrapers only (k8s/modules/observability)
    assert app["ports"] == [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9102}]
    assert (app["livenessProbe"]["httpGet"]["path"], app["readinessProbe"]["httpGet"]["path"]) == \
        ("/healthz", "/readyz")
    assert app["image"] == "triton-fleet/control-plane:0.1.0"


def test_the_target_creates_every_secret_the_pods_read(all_manifests: list[Manifest]) -> None:
    referenced = set()
    for obj in all_manifests:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
    # fleet-database: created for a one-replica SQLite trial, else it must exist (docs/eks.md step 5b)
    assert referenced == {(name, key) for name, (key, _) in SECRETS.items()} | {(DATABASE_SECRET, DATABASE_KEY)}


def test_teardown_knows_every_cluster_scoped_kind(all_manifests: list[Manifest]) -> None:
    cluster_scoped = {(o["apiVersion"], o["kind"]) for o in all_manifests
                      if "namespace" not in o["metadata"] and o["kind"] != "Namespace"}
    assert cluster_scoped == set(CLUSTER_SCOPED)
