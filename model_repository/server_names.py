"""The names servers are registered under, derived in one place for the control plane and the sync.

Why one module below both: the control plane publishes a server's assignment as
`.fleet/assignments/<name>.json` under the name its discovery registered, and the server's `fleet sync`
reads the file under the name it derives for itself. If the two derivations drifted, a task would wait
forever for an assignment written under another name, with nothing failing loudly. So ECS discovery
(control_plane/discovery/ecs.py) and `fleet sync --server-from ecs-task-metadata` both call
`ecs_server_name`; EKS discovery names pods with `eks_server_name`.

On ECS a container learns its own task ARN without configuration from the task metadata endpoint v4:
ECS injects `ECS_CONTAINER_METADATA_URI_V4` into every container, and `GET $ECS_CONTAINER_METADATA_URI_V4/task`
answers a JSON document whose `TaskARN` is e.g. `arn:aws:ecs:us-west-2:111122223333:task/default/8f03...665`
(the long ARN format, with the cluster) or `arn:aws:ecs:us-west-2:111122223333:task/8f03...665` (the old one).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

ECS_PREFIX = "ecs-"
EKS_PREFIX = "eks-"
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
# task/<id> (old format) or task/<cluster>/<id> (long format); the id is the last path segment
_TASK_ARN = re.compile(r"^arn:aws[a-z-]*:ecs:[a-z0-9-]*:[0-9]*:task/(?:[^/]+/)?([A-Za-z0-9_-]+)$")


class ServerNameError(RuntimeError):
    """The server's own name cannot be derived; the message says what was missing and how to fix it."""


def ecs_task_id(task_arn: str) -> str:
    match = _TASK_ARN.match(task_arn or "")
    if not match:
        raise ServerNameError(f"'{task_arn}' is not an ECS task ARN (expected arn:aws:ecs:REGION:ACCOUNT:task/"
                              "[CLUSTER/]TASK_ID, as in the task metadata's TaskARN or ecs:DescribeTasks' taskArn)")
    return match.group(1)


def eks_server_name(pod: str) -> str:
    """The server name of a Triton pod: `eks-<pod>`. Its sync containers cannot call this (they run before
    any Python of ours knows the pod), so they spell it `--server eks-$(POD_NAME)` in
    k8s/modules/triton/statefulset.yaml; tests/k8s/test_discovery.py pins the two together."""
    return f"{EKS_PREFIX}{pod}"


def ecs_server_name(task_arn: str) -> str:
    """The server name of the ECS task with this ARN: `ecs-<task id>`."""
    return f"{ECS_PREFIX}{ecs_task_id(task_arn)}"


@retry(retry=retry_if_exception_type((requests.ConnectionError, requests.Timeout)), stop=stop_after_attempt(3),
       wait=wait_exponential(multiplier=0.2, max=1), reraise=True)
def _get_task_document(url: str, timeout_s: float) -> requests.Response:
    return requests.get(url, timeout=timeout_s)


def ecs_task_arn(environ: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> str:
    """This container's task ARN, read from the task metadata endpoint v4."""
    environ = os.environ if environ is None else environ
    base = environ.get(METADATA_ENV, "").rstrip("/")
    if not base:
        raise ServerNameError(f"{METADATA_ENV} is not set: the server name comes from the ECS task metadata "
                              "endpoint, which ECS injects into every container of a task (agent 1.39+); outside "
                              "ECS pass --server NAME instead")
    url = f"{base}/task"
    try:
        response = _get_task_document(url, timeout_s)
        response.raise_for_status()
        document = response.json()
    except requests.RequestException as error:
        raise ServerNameError(f"cannot read the ECS task metadata at {url} ({error}); the sync needs it to know "
                              "its task's server name: check that the container runs in an ECS task, or pass "
                              "--server NAME") from None
    except ValueError:
        raise ServerNameError(f"the ECS task metadata at {url} is not JSON: {response.text[:200]!r}") from None
    arn = document.get("TaskARN") if isinstance(document, dict) else None
    if not arn:
        raise ServerNameError(f"the ECS task metadata at {url} has no TaskARN field (fields: "
                              f"{sorted(document) if isinstance(document, dict) else type(document).__name__})")
    return str(arn)


def ecs_server_name_from_metadata(environ: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> str:
    """The name ECS discovery registers this container's task under."""
    return ecs_server_name(ecs_task_arn(environ, timeout_s))
