"""The eksctl cluster and the IAM policy agree with what the manifests expect of them."""
from __future__ import annotations

import json
from typing import Any

import yaml

from control_plane.targets.eks.manifests import K8S_ROOT

CLUSTER_FILE = K8S_ROOT / "cluster" / "eksctl-cluster.yaml"
Manifest = dict[str, Any]


def node_groups() -> dict[str, Manifest]:
    config = yaml.safe_load(CLUSTER_FILE.read_text())
    return {group["name"]: group for group in config["managedNodeGroups"]}


def test_cluster_has_irsa_enforced_network_policies_and_ebs() -> None:
    config = yaml.safe_load(CLUSTER_FILE.read_text())
    assert config["kind"] == "ClusterConfig" and config["apiVersion"] == "eksctl.io/v1alpha5"
    assert config["iam"]["withOIDC"] is True
    addons = {addon["name"]: addon for addon in config["addons"]}
    assert json.loads(addons["vpc-cni"]["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert "aws-ebs-csi-driver" in addons
    assert set(node_groups()) == {"system", "graviton", "g4dn", "inf2"}
    assert node_groups()["system"]["instanceType"].startswith(("m7g.", "m6i."))


def test_every_server_family_has_a_node_group_it_can_schedule_on(all_manifests: list[Manifest]) -> None:
    groups = {group["instanceType"]: group for group in node_groups().values()}
    for sts in (o for o in all_manifests if o["kind"] == "StatefulSet" and o["metadata"]["name"].startswith("triton-")):
        pod = sts["spec"]["template"]["spec"]
        group = groups[pod["nodeSelector"]["node.kubernetes.io/instance-type"]]
        tolerated = {(t["key"], t["effect"]) for t in pod.get("tolerations", [])}
        taints = {(t["key"], t["effect"]) for t in group.get("taints", [])}
        assert taints == tolerated, sts["metadata"]["name"]


def test_accelerator_groups_are_tainted_for_their_device_plugins() -> None:
    assert node_groups()["g4dn"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert node_groups()["inf2"]["taints"] == [
        {"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}]
    text = CLUSTER_FILE.read_text()
    assert "NVIDIA device plugin" in text and "nvdp/nvidia-device-plugin" in text
    assert "Neuron device plugin" in text and "neuron-helm-chart" in text


def test_workloads_pinned_to_the_system_group_name_it(all_manifests: list[Manifest]) -> None:
    pinned = {o["spec"]["template"]["spec"]["nodeSelector"].get("eks.amazonaws.com/nodegroup")
              for o in all_manifests if o["kind"] in ("StatefulSet", "Job")
              and "eks.amazonaws.com/nodegroup" in o["spec"]["template"]["spec"].get("nodeSelector", {})}
    assert pinned == {"system"}


def test_repository_read_policy_allows_only_reading_the_repository_prefix_and_writing_sync_status() -> None:
    policy = json.loads((K8S_ROOT / "iam" / "repository-read-policy.json").read_text())
    statements = {s["Action"]: s for s in policy["Statement"]}
    assert set(statements) == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}
    assert statements["s3:PutObject"]["Resource"] == \
        "arn:aws:s3:::REPOSITORY_BUCKET/REPOSITORY_PREFIX/.fleet/status/*"
    assert all(s["Effect"] == "Allow" for s in statements.values())
    assert statements["s3:GetObject"]["Resource"] == "arn:aws:s3:::REPOSITORY_BUCKET/REPOSITORY_PREFIX/*"
    listing = statements["s3:ListBucket"]
    assert listing["Resource"] == "arn:aws:s3:::REPOSITORY_BUCKET"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["REPOSITORY_PREFIX", "REPOSITORY_PREFIX/*"]}}


# vCPU and memory of the instance types the groups use (AWS instance type specifications).
INSTANCE_SHAPES = {"c7g.xlarge": (4, 8), "m7g.xlarge": (4, 16), "m6i.xlarge": (4, 16), "g4dn.xlarge": (4, 16),
                   "inf2.xlarge": (4, 16)}
# Standard-support windows on EKS (release on EKS, end of standard support), from the EKS version calendar.
EKS_STANDARD_SUPPORT = {"1.33": ("2025-05-28", "2026-07-29"), "1.34": ("2025-10-06", "2026-12-02"),
                        "1.35": ("2026-01-28", "2027-03-27")}
CHECKED_ON = "2026-11-30"


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_cluster_version_is_in_eks_standard_support_on_the_date_the_prices_were_checked() -> None:
    version = yaml.safe_load(CLUSTER_FILE.read_text())["metadata"]["version"]
    released, ends = EKS_STANDARD_SUPPORT[version]
    assert released <= CHECKED_ON < ends, f"EKS {version} is out of standard support ($0.60/h) on {CHECKED_ON}"


def test_every_node_group_can_be_grown_by_the_cluster_autoscaler() -> None:
    for name, group in node_groups().items():
        assert group["iam"]["withAddonPolicies"]["autoScaler"] is True, name
        assert group["tags"]["k8s.io/cluster-autoscaler/enabled"] == "true", name
        assert group["tags"]["k8s.io/cluster-autoscaler/triton-fleet"] == "owned", name
        assert group["propagateASGTags"] is True, name


def test_server_groups_hold_the_replicas_the_runbook_and_the_hpa_ask_for(all_manifests: list[Manifest]) -> None:
    groups = {group["instanceType"]: group for group in node_groups().values()}
    hpas = {o["spec"]["scaleTargetRef"]["name"]: o for o in all_manifests if o["kind"] == "HorizontalPodAutoscaler"}
    for sts in (o for o in all_manifests if o["kind"] == "StatefulSet" and o["metadata"]["name"].startswith("triton-")):
        pod = sts["spec"]["template"]["spec"]
        group = groups[pod["nodeSelector"]["node.kubernetes.io/instance-type"]]
        vcpus, _ = INSTANCE_SHAPES[group["instanceType"]]
        requested = sum(_cpu(c["resources"]["requests"]["cpu"]) for c in pod["containers"])
        # native sidecars run for the pod's lifetime and count too (init pass runs before, alone)
        requested += sum(_cpu(c["resources"]["requests"]["cpu"]) for c in pod.get("initContainers", [])
                         if c.get("restartPolicy") == "Always")
        per_node = int((vcpus - 0.3) // requested)  # ~0.3 vCPU for kubelet, CNI and kube-proxy
        assert per_node >= 1, f"{sts['metadata']['name']} requests {requested} vCPU, {group['name']} has {vcpus}"
        hpa = hpas[sts["metadata"]["name"]]
        assert group["maxSize"] * per_node >= hpa["spec"]["maxReplicas"], sts["metadata"]["name"]
    graviton = node_groups()["graviton"]
    assert graviton["desiredCapacity"] >= 2  # docs/eks.md starts two CPU servers


def _device_requests(sts: Manifest) -> dict[str, str]:
    triton = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    return {k: str(v) for k, v in triton["resources"]["limits"].items() if "/" in k}


def test_accelerator_groups_tell_the_autoscaler_their_devices_so_they_scale_up_from_zero(
        all_manifests: list[Manifest]) -> None:
    """At 0 nodes the Cluster Autoscaler knows a group's extended resources only from its node-template
    tags: a pending pod that needs aws.amazon.com/neuron would otherwise never scale inf2 up."""
    groups = {group["instanceType"]: group for group in node_groups().values()}
    checked = set()
    for sts in (o for o in all_manifests if o["kind"] == "StatefulSet" and o["metadata"]["name"].startswith("triton-")):
        group = groups[sts["spec"]["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]]
        assert group["minSize"] == 0 or not _device_requests(sts), group["name"]
        assert group.get("propagateASGTags") is True, group["name"]
        for resource, count in _device_requests(sts).items():
            assert group["tags"][f"k8s.io/cluster-autoscaler/node-template/resources/{resource}"] == count
            checked.add(resource)
    assert checked == {"nvidia.com/gpu", "aws.amazon.com/neuron"}


def test_the_nvidia_device_plugin_runs_only_on_the_gpu_group() -> None:
    """eksctl's DaemonSet has no nodeSelector (it crash-loops on CPU and Inferentia nodes); the runbook pins
    it to the label only the g4dn group carries, which NVIDIA's chart also selects by default."""
    labelled = [name for name, group in node_groups().items()
                if group.get("labels", {}).get("nvidia.com/gpu.present") == "true"]
    assert labelled == ["g4dn"]
    runbook = (K8S_ROOT.parent / "docs" / "eks.md").read_text()
    assert ("kubectl -n kube-system patch daemonset nvidia-device-plugin-daemonset --type merge \\\n"
            """    -p '{"spec":{"template":{"spec":{"nodeSelector":{"nvidia.com/gpu.present":"true"}}}}}'""") in runbook
