"""Images for the container tests: built once per run (podman's layer cache makes reruns fast).

They need root (podman with runc, as on CI) and apt-get for podman, runc and debootstrap when missing;
otherwise the tests skip and say why. Building from scratch takes a few minutes (debootstrap, torch),
a rebuild after a code change seconds.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from adfilter.synthetic import generate_bid_requests
from adfilter.train import TrainConfig, train
from adfilter.triton_repo import TritonSettings, build_triton_model


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Tags of the images built here; skips (with the reason) where podman cannot run."""
    from deploy import images as builder
    from deploy.podman import PodmanUnavailable, ensure_tools

    if os.geteuid() != 0:
        pytest.skip("container tests need root (podman with runc and cgroupfs, as in CI)")
    try:
        ensure_tools()
    except PodmanUnavailable as error:
        pytest.skip(str(error))
    return {name: builder.build(name) for name in ("server-cpu", "control-plane")}


@pytest.fixture(scope="session")
def adfilter_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton repository holding `adfilter`, trained small (the point is that it serves, not accuracy)."""
    model = tmp_path_factory.mktemp("adfilter-model")
    train(TrainConfig(rows=4_000, seed=5, epochs=2), model)
    repository = tmp_path_factory.mktemp("adfilter-repo")
    build_triton_model(model, repository, TritonSettings(instances=1))
    return repository


@pytest.fixture
def bid_request() -> bytes:
    import json

    return json.dumps(next(iter(generate_bid_requests(1, seed=3))), separators=(",", ":")).encode()


@pytest.fixture
def fresh_prefix() -> str:
    return f"deploy-{uuid.uuid4().hex[:10]}"
