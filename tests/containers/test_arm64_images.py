"""The Graviton (arm64) server image, built here under qemu-user emulation, serves a pack the project built.

What runs: `deploy.images` builds the arm64 base and server-cpu images (debootstrap --arch=arm64, podman
build --platform linux/arm64, torch 2.13.0 and nvidia-pytriton 0.7.0 for aarch64); the image starts with
its own CMD (the wheel's aarch64 tritonserver, explicit model control) on a repository that
`fleet generate` + `fleet pack` code made on the host; the host loads the pack and asks a member over
KServe v2 gRPC; the answer must equal the same TorchScript file run by torch on the host (x86, other
kernels: a small tolerance). The arm64 control-plane image starts and answers /healthz, and the arm64
loadtest image's locust loads the locustfile. Emulation makes it slow (minutes, much more for a cold
build): marked `slow` and `arm64`; `make test-arm64` runs it, `make test` does not.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from deploy import images as builder
from deploy.first_answer import first_answer
from deploy.podman import (
    ULIMITS,
    PodmanUnavailable,
    emulation_volumes,
    ensure_emulation,
    ensure_tools,
    image_architecture,
    podman,
    run_detached,
)
from model_repository.generator import ModelEntry, example_inputs, generate
from model_repository.packing import build_repository

# A cold build (debootstrap and pip under emulation) alone takes longer than the suite's 900 s default.
pytestmark = [pytest.mark.slow, pytest.mark.arm64, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def arm64() -> None:
    """podman and arm64 emulation ready (installed as root when missing); skips saying what is missing."""
    if os.geteuid() != 0:
        pytest.skip("arm64 images need root: podman with runc, and qemu-user-static registered with binfmt_misc")
    try:
        ensure_tools()
        ensure_emulation("arm64")
    except PodmanUnavailable as error:
        pytest.skip(f"arm64 images cannot be built or run here: {error}")


@pytest.fixture(scope="module")
def arm64_server_image(arm64) -> str:
    """localhost/triton-fleet/server-cpu:<version>-arm64 (plain tag on an arm64 machine), built if missing."""
    return builder.build("server-cpu", arch="arm64")


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelEntry, str]:
    """One generated model per architecture, packed; the MLP member and the name of its pack."""
    root = tmp_path_factory.mktemp("arm64-pack")
    manifest = generate(3, root / "models", seed=21)
    plans = build_repository(root / "models", root / "repository", pack_size=8)
    entry = next(m for m in manifest.models if m.architecture == "mlp")
    pack = next(p.name for p in plans if any(m.id == entry.id for m in p.members))
    return root, entry, pack


def test_the_arm64_image_is_built_for_arm64(arm64_server_image: str):
    assert image_architecture(arm64_server_image) == "arm64"


def test_the_arm64_server_image_answers_a_pack_member_as_torch_on_the_host_does(
        arm64_server_image: str, packed: tuple[Path, ModelEntry, str]):
    root, entry, pack = packed
    (x,) = example_inputs(entry, batch=4, seed=5)
    answer = first_answer(arm64_server_image, root / "repository", pack, entry.id, x)
    with torch.inference_mode():
        expected = torch.jit.load(str(root / "models" / entry.file))(torch.from_numpy(x)).numpy()
    assert answer.output.shape == expected.shape
    np.testing.assert_allclose(answer.output, expected, rtol=1e-4, atol=1e-5)
    print(f"\n{arm64_server_image} ({answer.architecture}): ready {answer.ready_s:.1f}s, pack loaded "
          f"{answer.loaded_s:.1f}s, first answer {answer.answered_s:.1f}s after container start")


def test_the_arm64_control_plane_image_starts_and_answers_healthz(arm64):
    image = builder.build("control-plane", arch="arm64")
    assert image_architecture(image) == "arm64"
    container = run_detached(image, f"arm64-control-plane-{uuid.uuid4().hex[:8]}",
                             extra=["--network", "slirp4netns", "-p", "127.0.0.1::8080", *emulation_volumes("arm64")])
    try:
        port = podman("port", container.name, "8080").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        deadline = time.monotonic() + 600  # emulated: flask, sqlalchemy, boto3 and torch import slowly
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {"status": "ok"}:
                    return
            except requests.RequestException:
                pass
            assert container.exit_code() is None, container.logs()[-3000:]
            time.sleep(1)
        pytest.fail(f"no /healthz within 600 s; logs:\n{container.logs()[-3000:]}")
    finally:
        container.remove(grace_s=5)


def test_the_arm64_loadtest_image_loads_the_locustfile(arm64):
    image = builder.build("loadtest", arch="arm64")
    assert image_architecture(image) == "arm64"
    listed = podman("run", "--rm", *ULIMITS, *emulation_volumes("arm64"), image,
                    "-f", "loadtest/triton_models.py", "--list", check=False, timeout=600)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "TritonModelsUser" in listed.stdout + listed.stderr
