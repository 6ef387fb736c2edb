"""The contract every deployment target (local, eks, ecs) fulfils.

The control plane speaks to a fleet only through this interface, so the REST API, the reconciler and the
load-test launcher do not care whether Triton runs as local processes, Kubernetes pods or ECS tasks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

# A locust run's result is the load-test package's type (loadtest sits below the control plane).
from loadtest.results import LoadTestResult, LoadTestStat

ComputeFamily = Literal["cpu", "gpu", "inf2"]
TargetName = Literal["local", "eks", "ecs"]
Progress = Callable[[str], None]
__all__ = ["ComputeFamily", "DeploymentSpec", "DeploymentTarget", "LoadTestResult", "LoadTestSpec", "LoadTestStat",
           "Progress", "ServerEndpoint", "TargetError", "TargetName"]


class TargetError(RuntimeError):
    """A deployment problem the user can fix; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class ServerEndpoint:
    """One Triton server as clients and the control plane reach it."""

    name: str
    family: ComputeFamily
    host: str
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


@dataclass(frozen=True)
class DeploymentSpec:
    """What to deploy: server replicas per compute family and where the model repository lives."""

    repository_uri: str  # s3://bucket/prefix
    replicas: dict[ComputeFamily, int] = field(default_factory=lambda: {"cpu": 1})
    image_tag: str = "0.1.0"
    region: str | None = None


@dataclass(frozen=True)
class LoadTestSpec:
    """A locust run, identical for every target: the same locustfile, users and duration."""

    locustfile: str  # path relative to the repository root, e.g. "loadtest/triton_models.py"
    host: str  # what locust's --host gets (a Triton gRPC address, or the NLB's DNS name and port)
    users: int = 32
    spawn_rate: float = 32.0
    duration_s: int = 60
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)


class DeploymentTarget(Protocol):
    """A place where the stack runs."""

    name: TargetName

    def deploy(self, spec: DeploymentSpec, progress: Progress | None = None) -> None:
        """Create or update the fleet and wait until every server is ready (or raise TargetError)."""

    def discover_servers(self) -> list[ServerEndpoint]:
        """The Triton servers that are up now."""

    def scale(self, family: ComputeFamily, replicas: int) -> None:
        """Set the number of servers of one compute family."""

    def run_loadtest(self, spec: LoadTestSpec, progress: Progress | None = None) -> LoadTestResult:
        """Run locust (master and workers) inside the target and collect its stats."""

    def teardown(self, progress: Progress | None = None) -> None:
        """Remove everything deploy created."""
