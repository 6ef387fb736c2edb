"""Start a server image on a Triton repository and time its first correct answer.

Why: the Graviton (arm64) server image cannot meet a Graviton here, but under qemu emulation it runs, and
what matters is whether the image as built serves a pack the project made (its own CMD: explicit model
control, the wheel's tritonserver, the Python backend, the pack runtime, torch) over KServe v2 from the
host. tests/containers/test_arm64_server.py checks the answer; benchmarks/arm64_image.py times it against
the amd64 image on the same machine.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from deploy.podman import Container, emulation_volumes, image_architecture, podman, run_detached


@dataclass(frozen=True)
class FirstAnswer:
    image: str
    architecture: str  # what the image says it is built for (podman image inspect)
    ready_s: float  # container start -> /v2/health/ready (no model loaded yet: explicit mode)
    loaded_s: float  # container start -> the pack loaded (the stub imported torch)
    answered_s: float  # container start -> the first inference answered
    output: np.ndarray


def _host_port(container: Container, port: int) -> int:
    return int(podman("port", container.name, str(port)).stdout.strip().splitlines()[0].rsplit(":", 1)[1])


def _until(deadline: float, container: Container, what: str, probe) -> None:
    """Poll `probe()` until true; fail at once (with the logs) if the container stopped."""
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except requests.RequestException:
            pass
        if container.exit_code() is not None:
            raise RuntimeError(f"{container.name} exited ({container.exit_code()}) before {what}; "
                               f"logs:\n{container.logs()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{container.name}: no {what} in time; logs:\n{container.logs()[-3000:]}")


def first_answer(image: str, repository: Path, pack: str, member: str, inputs: np.ndarray,
                 timeout_s: float = 900) -> FirstAnswer:
    """Run `image` with its own CMD on `repository` (read-only at /models), load `pack`, ask `member` once.

    The ports are published on the host's loopback at free ports (slirp4netns), so this can run beside
    anything else. The container is removed whatever happens.
    """
    import tritonclient.grpc as grpcclient

    name = f"first-answer-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    deadline = started + timeout_s
    container = run_detached(image, name, mounts=[f"{repository}:/models:ro"],
                             extra=["--network", "slirp4netns", "-p", "127.0.0.1::8000", "-p", "127.0.0.1::8001",
                                    "--shm-size", "256m", *emulation_volumes(image_architecture(image))])
    try:
        http = f"http://127.0.0.1:{_host_port(container, 8000)}"
        _until(deadline, container, "ready server",
               lambda: requests.get(f"{http}/v2/health/ready", timeout=5).status_code == 200)
        ready = time.monotonic() - started
        loaded = requests.post(f"{http}/v2/repository/models/{pack}/load",
                               timeout=max(1.0, deadline - time.monotonic()))
        if loaded.status_code != 200:
            raise RuntimeError(f"loading {pack} answered {loaded.status_code}: {loaded.text}; "
                               f"logs:\n{container.logs()[-3000:]}")
        loaded_at = time.monotonic() - started
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{_host_port(container, 8001)}")
        try:
            dtype = {np.float32: "FP32", np.int64: "INT64"}[inputs.dtype.type]
            tensor = grpcclient.InferInput("INPUT__0", list(inputs.shape), dtype)
            tensor.set_data_from_numpy(inputs)
            result = client.infer(pack, [tensor], parameters={"model_id": member},
                                  client_timeout=max(1.0, deadline - time.monotonic()))
            output = result.as_numpy("OUTPUT__0")
        finally:
            client.close()
        answered = time.monotonic() - started
        return FirstAnswer(image, image_architecture(image), ready, loaded_at, answered, output)
    finally:
        container.remove(grace_s=5)
