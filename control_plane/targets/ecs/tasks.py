"""The Triton service's tasks: which are serving, their addresses, and why the others are not.

Why look at tasks rather than the service's runningCount: a running task is not a ready server. Ready
means the `triton` container's health check (`/v2/health/ready`) passes, and that the task runs the
task definition of the service's current (PRIMARY) deployment, so old tasks draining during a rolling
update do not count.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from control_plane.targets.base import Progress, TargetError

TRITON_CONTAINER = "triton"
_DESCRIBE_BATCH = 100  # describe_tasks accepts at most 100 tasks per call


def _task_id(task: dict[str, Any]) -> str:
    return task["taskArn"].rsplit("/", 1)[-1]


def _task_arns(ecs: Any, cluster: str, **filters: str) -> Iterator[str]:
    request: dict[str, Any] = {"cluster": cluster, **filters}
    while True:
        page = ecs.list_tasks(**request)
        yield from page["taskArns"]
        if not page.get("nextToken"):
            return
        request["nextToken"] = page["nextToken"]


def describe_tasks(ecs: Any, cluster: str, arns: list[str]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for start in range(0, len(arns), _DESCRIBE_BATCH):
        tasks += ecs.describe_tasks(cluster=cluster, tasks=arns[start:start + _DESCRIBE_BATCH])["tasks"]
    return tasks


def service_tasks(ecs: Any, cluster: str, service: str, desired_status: str) -> list[dict[str, Any]]:
    """The service's tasks with that desired status (RUNNING or STOPPED).

    The group check keeps locust tasks out even where list_tasks ignores its serviceName filter (moto
    does); ECS puts every task a service starts in the group "service:NAME".
    """
    arns = list(_task_arns(ecs, cluster, serviceName=service, desiredStatus=desired_status))
    return [task for task in describe_tasks(ecs, cluster, arns) if task.get("group") == f"service:{service}"]


def private_ip(task: dict[str, Any]) -> str | None:
    """The task's address on its awsvpc ENI (known once ECS attached the ENI, before the task runs)."""
    for attachment in task.get("attachments", []):
        if attachment.get("type") == "ElasticNetworkInterface":
            for detail in attachment.get("details", []):
                if detail.get("name") == "privateIPv4Address":
                    return detail.get("value")
    return None


def container_health(task: dict[str, Any], name: str = TRITON_CONTAINER) -> str:
    for container in task.get("containers", []):
        if container.get("name") == name:
            return container.get("healthStatus", "UNKNOWN")
    return "UNKNOWN"


def is_ready(task: dict[str, Any]) -> bool:
    return task.get("lastStatus") == "RUNNING" and container_health(task) == "HEALTHY"


def stop_summary(task: dict[str, Any]) -> str:
    """Why a task stopped, with each container that exited badly."""
    parts = [f"task {_task_id(task)} stopped: {task.get('stoppedReason') or 'no reason given'}"]
    for container in task.get("containers", []):
        code, reason = container.get("exitCode"), container.get("reason")
        if reason or (code not in (None, 0)):
            parts.append(f"container {container.get('name')} exit code {code}"
                         + (f" ({reason})" if reason else ""))
    return "; ".join(parts)


def describe_service(ecs: Any, cluster: str, service: str) -> dict[str, Any]:
    found = ecs.describe_services(cluster=cluster, services=[service])
    if not found["services"]:
        raise TargetError(f"service {service} not found in cluster {cluster}: the stack outputs point to "
                          "a service that no longer exists; run deploy")
    return found["services"][0]


def ready_tasks(ecs: Any, cluster: str, service: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The service's ready tasks of its current deployment, and the service itself."""
    described = describe_service(ecs, cluster, service)
    primary = next((d["taskDefinition"] for d in described.get("deployments", [])
                    if d.get("status") == "PRIMARY"), described.get("taskDefinition"))
    running = service_tasks(ecs, cluster, service, "RUNNING")
    return [t for t in running if t["taskDefinitionArn"] == primary and is_ready(t)], described


def _not_ready_report(ecs: Any, cluster: str, service: dict[str, Any], ready: int, timeout_s: float,
                      log_group: str) -> str:
    lines = [f"{ready} of {service['desiredCount']} tasks of service {service['serviceName']} became ready "
             f"(triton container healthy) within {timeout_s:.0f}s"]
    for task in service_tasks(ecs, cluster, service["serviceName"], "RUNNING"):
        if not is_ready(task):
            lines.append(f"task {_task_id(task)} is {task.get('lastStatus')}, triton health "
                         f"{container_health(task)}")
    stopped = service_tasks(ecs, cluster, service["serviceName"], "STOPPED")
    stopped.sort(key=lambda t: str(t.get("stoppedAt", "")), reverse=True)
    lines += [stop_summary(task) for task in stopped[:3]]
    lines += [f"service event: {event['message']}" for event in service.get("events", [])[:3]]
    if len(lines) == 1:
        lines.append("no task of the service has started yet (no capacity, or ECS is still placing it)")
    lines.append(f"Fix: read the triton and init-sync logs in CloudWatch log group {log_group} (streams "
                 "adfilter/<container>/<task id>); a model repository without adfilter, an image that "
                 "cannot be pulled, or no Graviton capacity in the subnets' AZs are the usual causes")
    return "\n".join(lines)


def wait_until_ready(ecs: Any, cluster: str, service: str, progress: Progress, *, timeout_s: float,
                     poll_s: float, log_group: str) -> list[dict[str, Any]]:
    """Wait until the service has desiredCount ready tasks; TargetError with the evidence otherwise."""
    deadline = time.monotonic() + timeout_s
    reported = ""
    while True:
        ready, described = ready_tasks(ecs, cluster, service)
        line = f"{len(ready)} of {described['desiredCount']} adfilter tasks ready"
        if line != reported:
            progress(line)
            reported = line
        if len(ready) >= described["desiredCount"]:
            return ready
        if time.monotonic() >= deadline:
            raise TargetError(_not_ready_report(ecs, cluster, described, len(ready), timeout_s, log_group))
        time.sleep(poll_s)
