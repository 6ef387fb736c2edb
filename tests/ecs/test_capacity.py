"""Capacity, scaling and runtime limits of the ECS fleet, read from the template (issue 17's defects).

Each assertion is one that the reviewed template failed: a deployment at MaxTasks that needs more instances
than the ASG may have, a capacity provider that grows 4 instances per warm-up, CPU as the only scaling
signal, Docker's 64 MiB /dev/shm, tasks without AWS_REGION.
"""
from __future__ import annotations

import math
from typing import Any

from control_plane.targets.ecs.template import load_template

T = load_template()
PARAMETERS: dict[str, Any] = T["Parameters"]
RESOURCES: dict[str, Any] = T["Resources"]
VCPUS = {"xlarge": 4, "2xlarge": 8, "4xlarge": 16}  # c7g/c8g/m7g sizes (AWS instance type specs)


def _default(name: str) -> Any:
    return PARAMETERS[name]["Default"]


def _containers(task: str) -> list[dict[str, Any]]:
    out = []
    for definition in RESOURCES[task]["Properties"]["ContainerDefinitions"]:
        out.append(definition["Fn::If"][1] if "Fn::If" in definition else definition)
    return out


def test_one_triton_task_takes_every_vcpu_of_its_instance():
    for size, cpu in ((size, row["Cpu"]) for size, row in T["Mappings"]["TaskSize"].items()):
        assert cpu == VCPUS[size] * 1024, size


def test_the_asg_can_hold_a_deployment_at_max_tasks():
    maximum_percent = RESOURCES["Service"]["Properties"]["DeploymentConfiguration"]["MaximumPercent"]
    needed = math.ceil(_default("MaxTasks") * maximum_percent / 100)  # one task per instance
    assert _default("MaxInstances") >= needed, \
        f"MaxTasks {_default('MaxTasks')} x {maximum_percent}% needs {needed} instances"


def test_one_capacity_provider_step_can_add_every_instance_the_service_may_need():
    scaling = RESOURCES["CapacityProvider"]["Properties"]["AutoScalingGroupProvider"]["ManagedScaling"]
    assert scaling["MaximumScalingStepSize"] == {"Ref": "MaxInstances"}


def test_service_scales_on_request_rate_per_task_with_cpu_as_safety_net():
    policy = RESOURCES["RequestRateScalingPolicy"]
    assert policy["Condition"] == "MetricsEnabled"
    spec = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert spec["TargetValue"] == {"Ref": "TargetRequestsPerTask"}
    metrics = {m["Id"]: m for m in spec["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["requests"]["MetricStat"]["Metric"]["MetricName"] == "nv_inference_request_success"
    assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == "HealthyHostCount"
    assert [m["Id"] for m in metrics.values() if m["ReturnData"]] == ["per_task_rps"]
    assert "requests / 60" in metrics["per_task_rps"]["Expression"]
    assert "CpuScalingPolicy" in RESOURCES


def test_the_request_rate_metric_is_one_the_sidecar_publishes():
    sidecar = next(c for c in _containers("TritonTaskDefinition") if c["Name"] == "metrics")
    config = next(e["Value"]["Fn::Sub"] for e in sidecar["Environment"] if e["Name"] == "CW_CONFIG_CONTENT")
    assert "^nv_inference_request_success$" in config and '"metric_namespace":"TritonFleet"' in config
    assert '[["ClusterName","model"]]' in config


def test_triton_gets_a_shared_memory_size_for_the_python_backend():
    triton = next(c for c in _containers("TritonTaskDefinition") if c["Name"] == "triton")
    assert triton["LinuxParameters"]["SharedMemorySize"] == {"Ref": "SharedMemoryMiB"}
    assert _default("SharedMemoryMiB") >= 256


def test_every_container_that_calls_aws_knows_its_region():
    for task in ("TritonTaskDefinition", "LoadTestTaskDefinition"):
        for container in _containers(task):
            if container["Name"] == "metrics":
                continue  # the agent's region is in its own config (CW_CONFIG_CONTENT)
            env = {e["Name"]: e["Value"] for e in container.get("Environment", [])}
            assert env.get("AWS_REGION") == {"Ref": "AWS::Region"}, container["Name"]


def test_runbook_builds_one_stub_instance_per_task_vcpu():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "ecs.md").read_text()
    instances = re.search(r"fleet adfilter build-triton .*--instances (\d+)", text)
    assert instances, "docs/ecs.md builds adfilter without --instances"
    cpu = T["Mappings"]["TaskSize"][_default("InstanceSize")]["Cpu"]
    assert int(instances.group(1)) == cpu // 1024
