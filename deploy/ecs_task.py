"""Start an ECS task definition of ecs/templates/adfilter-fleet.yaml as podman containers, as ECS would.

What is taken from the template, unchanged: each container's image, EntryPoint (absent: the image's own)
and Command (ECS `Command` replaces only the image's CMD), Environment, Secrets (values given here, as ECS
injects them from Secrets Manager), MountPoints on the task's shared volume, DependsOn conditions (START,
COMPLETE, SUCCESS, HEALTHY), HealthCheck, Ulimits and LinuxParameters.SharedMemorySize.
What stands in for AWS: awsvpc's shared network namespace is one network container (slirp4netns) that
every container joins, so they share localhost as in a task; the host's loopback (SeaweedFS as S3) is
10.0.2.2 from inside; task-role credentials and the S3 endpoint are given as environment variables.
"""
from __future__ import annotations

import resource
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.targets.ecs.template import load_template
from deploy.cfn import Context, resolve
from deploy.podman import Container, podman, run_detached

HOST_FROM_TASK = "10.0.2.2"  # slirp4netns with allow_host_loopback: the host's 127.0.0.1
NETWORK_IMAGE_COMMAND = ("sleep", "infinity")


class TaskFailed(RuntimeError):
    """A container of the task did what ECS would treat as a failure; the message carries its logs."""


def task_containers(task: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's container definitions with every intrinsic function evaluated for these parameters."""
    template = load_template()
    ctx = Context(template, parameters, resources={"Cluster": "adfilter-cluster"})
    properties = resolve(template["Resources"][task]["Properties"], ctx)
    return properties["ContainerDefinitions"]


def _nofile(limit: int) -> int:
    return min(limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


@dataclass
class EcsTaskRun:
    """One task: `start()` brings it up honouring DependsOn; `stop()` removes every container."""

    containers: list[dict[str, Any]]
    secrets: dict[str, str] = field(default_factory=dict)
    platform_env: dict[str, str] = field(default_factory=dict)  # task-role credentials, S3 endpoint
    volume_root: Path | None = None
    name: str = field(default_factory=lambda: f"ecs-task-{uuid.uuid4().hex[:8]}")
    started: dict[str, Container] = field(default_factory=dict, init=False)
    network: Container | None = field(default=None, init=False)
    ports: dict[int, int] = field(default_factory=dict, init=False)

    def definition(self, name: str) -> dict[str, Any]:
        return next(c for c in self.containers if c["Name"] == name)

    def start_network(self) -> None:
        if self.network is not None:
            return
        image = self.containers[0]["Image"]
        published = sorted({p["ContainerPort"] for c in self.containers for p in c.get("PortMappings", [])})
        extra = ["--network", "slirp4netns:allow_host_loopback=true"]
        for port in published:
            extra += ["-p", f"127.0.0.1::{port}"]
        self.network = run_detached(image, f"{self.name}-net", NETWORK_IMAGE_COMMAND[1:],
                                    entrypoint=NETWORK_IMAGE_COMMAND[:1], extra=extra)
        for port in published:
            host = podman("port", self.network.name, str(port)).stdout.strip().rsplit(":", 1)[1]
            self.ports[port] = int(host)

    def _volume(self, source: str) -> Path:
        root = self.volume_root or Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.volume_root = root
        path = root / source
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        return path

    def run_container(self, definition: dict[str, Any]) -> Container:
        env = {e["Name"]: str(e["Value"]) for e in definition.get("Environment", [])}
        for secret in definition.get("Secrets", []):
            env[secret["Name"]] = self.secrets[secret["Name"]]
        env.update(self.platform_env)
        mounts = [f"{self._volume(m['SourceVolume'])}:{m['ContainerPath']}" + (":ro" if m.get("ReadOnly") else "")
                  for m in definition.get("MountPoints", [])]
        extra = ["--network", f"container:{self.network.name}"]
        shm = definition.get("LinuxParameters", {}).get("SharedMemorySize")
        if shm:
            extra += ["--shm-size", f"{int(shm)}m"]
        for limit in definition.get("Ulimits", []):
            if limit["Name"] == "nofile":
                extra += ["--ulimit", f"nofile={_nofile(limit['SoftLimit'])}:{_nofile(limit['HardLimit'])}"]
        check = definition.get("HealthCheck")
        if check:
            kind, *argv = check["Command"]
            extra += ["--health-cmd", argv[0] if kind == "CMD-SHELL" else " ".join(argv),
                      "--health-interval", f"{check.get('Interval', 30)}s",
                      "--health-retries", str(check.get("Retries", 3))]
        container = run_detached(definition["Image"], f"{self.name}-{definition['Name']}",
                                 definition.get("Command", []), entrypoint=definition.get("EntryPoint"),
                                 env=env, mounts=mounts, extra=extra)
        self.started[definition["Name"]] = container
        return container

    def _dependency_met(self, condition: dict[str, str]) -> bool:
        container = self.started.get(condition["ContainerName"])
        if container is None:
            return False
        wanted = condition["Condition"]
        if wanted == "START":
            return True
        code = container.exit_code()
        if wanted == "COMPLETE":
            return code is not None
        if wanted == "SUCCESS":
            if code not in (None, 0):
                raise TaskFailed(f"{condition['ContainerName']} exited {code}; ECS stops the task. Logs:\n"
                                 f"{container.logs()[-3000:]}")
            return code == 0
        if wanted == "HEALTHY":
            return container.state().get("Health", {}).get("Status") == "healthy"
        raise ValueError(f"unknown DependsOn condition {wanted}")

    def start(self, timeout_s: float = 300) -> EcsTaskRun:
        """Start every container once its dependencies are met (ECS's order); TaskFailed if one fails."""
        self.start_network()
        deadline = time.monotonic() + timeout_s
        pending = [c for c in self.containers if c["Name"] not in self.started]
        while pending:
            ready = [c for c in pending if all(self._dependency_met(d) for d in c.get("DependsOn", []))]
            for definition in ready:
                self.run_container(definition)
                pending.remove(definition)
            if pending and time.monotonic() > deadline:
                waiting = {c["Name"]: c.get("DependsOn") for c in pending}
                logs = {n: c.logs()[-1500:] for n, c in self.started.items()}
                raise TimeoutError(f"containers still waiting on dependencies: {waiting}; logs: {logs}")
            if pending and not ready:
                time.sleep(0.5)
        return self

    def stop(self) -> None:
        for container in reversed(list(self.started.values())):
            container.remove()
        if self.network is not None:
            self.network.remove(grace_s=0)  # `sleep` as PID 1 ignores SIGTERM
