"""ECS: the targets of the Triton target group, named after their tasks (ELBv2 + ECS via boto3).

Why the target group: it is what the load balancer already health-checks (Triton's /v2/health/ready),
so a task counts as a server exactly when clients could reach it through the balancer.

A task that ECS stops (scale-in, deployment, a Spot or instance drain) first has its desiredStatus set to
STOPPED and its target deregistered: the target is `draining` for the target group's deregistration delay,
and only then does ECS send SIGTERM. Either sign makes the task `leaving` (drained, placements kept); it is
removed when its target is no longer listed (deregistration done, or the task gone).
"""
from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from control_plane.discovery.base import Discovered, DiscoveryError
from control_plane.targets.ecs.tasks import private_ip
from fleet.settings import DiscoverySettings
from model_repository.server_names import ECS_PREFIX, ServerNameError, ecs_server_name

READY_STATES = ("healthy",)
LEAVING_STATES = ("draining", "unhealthy.draining")  # deregistered: ECS stops the task after the delay
# Registered but not (yet, or no longer) passing health checks: keep what is known, add nothing.
UNREADY_STATES = ("initial", "unhealthy", "unavailable")
log = logging.getLogger(__name__)


class EcsDiscoverer:
    prefix = ECS_PREFIX

    def __init__(self, session, settings: DiscoverySettings) -> None:
        if not settings.cluster or not settings.target_group_arn:
            raise DiscoveryError("ECS discovery needs FLEET_DISCOVERY_CLUSTER and FLEET_DISCOVERY_TARGET_GROUP_ARN "
                                 "(the stack's ClusterName and target group outputs)")
        self.elbv2 = session.client("elbv2", region_name=settings.region)
        self.ecs = session.client("ecs", region_name=settings.region)
        self.settings = settings

    def list_servers(self) -> list[Discovered]:
        settings = self.settings
        try:
            health = self.elbv2.describe_target_health(TargetGroupArn=settings.target_group_arn)
            targets = {t["Target"]["Id"]: (t["Target"].get("Port", settings.grpc_port), t["TargetHealth"]["State"])
                       for t in health["TargetHealthDescriptions"]
                       if t["TargetHealth"]["State"] in READY_STATES + LEAVING_STATES + UNREADY_STATES}
            arns = []
            # Tasks being stopped have desiredStatus STOPPED while they still run (and drain).
            for desired in ("RUNNING", "STOPPED"):
                for page in self.ecs.get_paginator("list_tasks").paginate(cluster=settings.cluster,
                                                                          desiredStatus=desired):
                    arns += page["taskArns"]
            tasks = []
            for start in range(0, len(arns), 100):
                tasks += self.ecs.describe_tasks(cluster=settings.cluster, tasks=arns[start:start + 100])["tasks"]
        except (ClientError, BotoCoreError) as error:
            raise DiscoveryError(f"cannot list the Triton tasks behind {settings.target_group_arn} in cluster "
                                 f"{settings.cluster}: {error}; the control plane's role needs "
                                 "elasticloadbalancing:DescribeTargetHealth, ecs:ListTasks and ecs:DescribeTasks") \
                from None
        found, memory_of = [], {}
        for task in tasks:
            address = private_ip(task)
            if address not in targets or task.get("lastStatus") == "STOPPED":
                continue
            port, target_state = targets[address]
            if target_state in LEAVING_STATES or task.get("desiredStatus") == "STOPPED":
                state = "leaving"
            else:
                state = "ready" if target_state in READY_STATES else "unready"
            memory = task.get("memory") or (task.get("overrides") or {}).get("memory")
            if not memory:  # the task definition's task-level memory, once per definition
                arn = task["taskDefinitionArn"]
                if arn not in memory_of:
                    memory_of[arn] = self._definition_memory(arn)
                memory = memory_of[arn]
            capacity = int(memory) * 2**20 if memory and str(memory).isdigit() else settings.capacity_bytes
            try:
                name = ecs_server_name(task["taskArn"])  # the name the task's own sync derives (server_names)
            except ServerNameError as error:
                log.warning("task at %s skipped: %s", address, error)
                continue
            found.append(Discovered(name=name, family="cpu",
                                    http_url=f"http://{address}:{settings.http_port}",
                                    grpc_url=f"{address}:{port}", capacity_bytes=capacity, state=state))
        return sorted(found, key=lambda s: s.name)

    def _definition_memory(self, arn: str) -> str | None:
        try:
            return self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"].get("memory")
        except (ClientError, BotoCoreError):
            return None
