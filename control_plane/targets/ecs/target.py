"""The `ecs` deployment target: the ad-filter fleet on an EC2 (Graviton) ECS cluster behind an NLB.

Everything lives in one CloudFormation stack (ecs/templates/adfilter-fleet.yaml); this class creates or
updates it, waits for the Triton tasks to be ready, and reads the stack's outputs for everything else, so
a restarted control plane needs nothing but the stack name. Only the `cpu` family runs here: GPU and
Inferentia2 servers are the eks target's job.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import boto3

from control_plane.targets.base import (
    ComputeFamily,
    DeploymentSpec,
    LoadTestResult,
    LoadTestSpec,
    Progress,
    ServerEndpoint,
    TargetError,
    TargetName,
)
from control_plane.targets.ecs.aws import GuardedClient, aws_errors, make_client
from control_plane.targets.ecs.loadtest import LoadTestPlace, LoadTestRun
from control_plane.targets.ecs.stack import (
    delete_stack,
    deploy_stack,
    describe_stack,
    release_scale_in_protection,
    stack_outputs,
)
from control_plane.targets.ecs.tasks import private_ip, ready_tasks, wait_until_ready
from control_plane.targets.ecs.template import DEFAULT_TEMPLATE, template_body


def _quiet(_: str) -> None:
    """Progress sink for callers that pass none."""


@dataclass(frozen=True)
class EcsConfig:
    """Where and how the fleet is deployed; `parameters` passes further template parameters through
    (VpcId, PrivateSubnetIds, InstanceSize, LoadBalancerScheme, ...)."""

    image_registry: str  # ACCOUNT.dkr.ecr.REGION.amazonaws.com, holding triton-fleet/server-cpu and loadtest
    stack_name: str = "triton-fleet-ecs"
    region: str | None = None
    results_bucket: str | None = None  # default: the model repository's bucket (under loadtests/)
    parameters: Mapping[str, str] = field(default_factory=dict)
    max_tasks: int = 12
    template: Path = DEFAULT_TEMPLATE
    endpoint_url: str | None = None  # an AWS-compatible endpoint (moto in tests)
    poll_s: float = 10.0
    stack_timeout_s: float = 3600.0
    ready_timeout_s: float = 900.0
    task_start_timeout_s: float = 900.0  # a task may wait for managed scaling to launch an instance
    loadtest_grace_s: float = 300.0  # after run-time: locust's shutdown and the CSV upload
    # Template parameter SyncScope: "whole" (each task syncs the whole repository and serves adfilter: the
    # ad-filter stack without a control plane) or "assigned" (each task syncs only the packs a control plane
    # that discovers ECS tasks placed on it). make_target picks "assigned" when FLEET_DISCOVERY_TARGET=ecs.
    sync_scope: Literal["whole", "assigned"] = "whole"


def _repository(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    prefix = parsed.path.strip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not prefix:
        raise TargetError(f"repository_uri '{uri}' must be s3://BUCKET/PREFIX with a non-empty prefix: the "
                          "task role may read only that prefix")
    return parsed.netloc, prefix


def _cpu_replicas(replicas: Mapping[ComputeFamily, int]) -> int:
    others = {family: count for family, count in replicas.items() if family != "cpu" and count}
    if others:
        raise TargetError(f"the ecs target runs only the cpu family (Graviton); {others} asked for other "
                          "families: deploy those with the eks target")
    count = replicas.get("cpu", 0)
    if count < 0:
        raise TargetError(f"replicas must be >= 0, got {count}")
    return count


def stack_parameters(config: EcsConfig, spec: DeploymentSpec) -> dict[str, str]:
    """The template parameters for `spec`: the config's pass-through ones, then what the spec decides."""
    replicas = _cpu_replicas(spec.replicas)
    bucket, prefix = _repository(spec.repository_uri)
    return {
        **config.parameters,
        "ImageRegistry": config.image_registry,
        "ImageTag": spec.image_tag,
        "RepositoryBucket": bucket,
        "RepositoryPrefix": prefix,
        "ResultsBucket": config.results_bucket or bucket,
        "SyncScope": config.sync_scope,
        "DesiredCount": str(replicas),
        # The requested count is a floor for CPU auto scaling, which may add tasks above it.
        "MinTasks": str(replicas),
        "MaxTasks": str(max(config.max_tasks, replicas)),
    }


class EcsTarget:
    """DeploymentTarget for ECS on EC2 Graviton instances (see docs/ecs.md)."""

    name: TargetName = "ecs"

    def __init__(self, config: EcsConfig, session: boto3.Session | None = None) -> None:
        self.config = config
        self._session = session
        self._region = config.region
        self._clients: dict[str, GuardedClient] = {}

    def _client(self, service: str) -> GuardedClient:
        if service not in self._clients:
            self._clients[service] = make_client(service, self._region, self.config.endpoint_url, self._session)
        return self._clients[service]

    def _outputs(self) -> dict[str, str]:
        stack = describe_stack(self._client("cloudformation"), self.config.stack_name)
        if stack is None:
            raise TargetError(f"no stack {self.config.stack_name} in region {self._region or 'default'}: "
                              "run deploy first (or set EcsConfig.stack_name/region to the deployed one)")
        return stack_outputs(stack)

    def deploy(self, spec: DeploymentSpec, progress: Progress | None = None) -> None:
        progress = progress or _quiet
        parameters = stack_parameters(self.config, spec)
        if spec.region and spec.region != self._region:
            self._region, self._clients = spec.region, {}
        try:
            body = template_body(self.config.template)
        except ValueError as error:
            raise TargetError(str(error)) from error
        with aws_errors(f"deploying stack {self.config.stack_name}"):
            outputs = deploy_stack(self._client("cloudformation"), self.config.stack_name, body, parameters,
                                   progress, timeout_s=self.config.stack_timeout_s, poll_s=self.config.poll_s)
            wait_until_ready(self._client("ecs"), outputs["ClusterName"], outputs["ServiceName"], progress,
                             timeout_s=self.config.ready_timeout_s, poll_s=self.config.poll_s,
                             log_group=outputs["LogGroupName"])
        progress(f"ad-filter fleet ready: gRPC at {outputs['GrpcEndpoint']}")

    def discover_servers(self) -> list[ServerEndpoint]:
        with aws_errors("discovering Triton tasks"):
            outputs = self._outputs()
            ready, _ = ready_tasks(self._client("ecs"), outputs["ClusterName"], outputs["ServiceName"])
        return [ServerEndpoint(name=f"ecs-{task['taskArn'].rsplit('/', 1)[-1]}", family="cpu", host=address)
                for task in ready if (address := private_ip(task))]

    def scale(self, family: ComputeFamily, replicas: int) -> None:
        count = _cpu_replicas({family: replicas})
        with aws_errors(f"scaling the {family} servers to {replicas}"):
            outputs = self._outputs()
            cluster, service = outputs["ClusterName"], outputs["ServiceName"]
            autoscaling = self._client("application-autoscaling")
            resource = f"service/{cluster}/{service}"
            targets = autoscaling.describe_scalable_targets(
                ServiceNamespace="ecs", ResourceIds=[resource],
                ScalableDimension="ecs:service:DesiredCount")["ScalableTargets"]
            # Move auto scaling's floor first, or its next evaluation would undo the new count.
            for target in targets:
                autoscaling.register_scalable_target(
                    ServiceNamespace="ecs", ResourceId=resource, ScalableDimension="ecs:service:DesiredCount",
                    MinCapacity=count, MaxCapacity=max(target["MaxCapacity"], count))
            self._client("ecs").update_service(cluster=cluster, service=service, desiredCount=count)

    def run_loadtest(self, spec: LoadTestSpec, progress: Progress | None = None) -> LoadTestResult:
        progress = progress or _quiet
        if spec.workers < 1:
            raise TargetError(f"a load test needs at least one worker, got workers={spec.workers}")
        with aws_errors("running the locust load test"):
            outputs = self._outputs()
            run = LoadTestRun(self._client("ecs"), self._client("s3"), LoadTestPlace.from_outputs(outputs),
                              spec, spec.host or outputs["GrpcEndpoint"], progress,
                              start_timeout_s=self.config.task_start_timeout_s,
                              grace_s=self.config.loadtest_grace_s, poll_s=self.config.poll_s)
            return run.run()

    def teardown(self, progress: Progress | None = None) -> None:
        with aws_errors(f"deleting stack {self.config.stack_name}"):
            release_scale_in_protection(self._client("cloudformation"), self._client("autoscaling"),
                                        self.config.stack_name, progress or _quiet)
            delete_stack(self._client("cloudformation"), self.config.stack_name, progress or _quiet,
                         timeout_s=self.config.stack_timeout_s, poll_s=self.config.poll_s)
