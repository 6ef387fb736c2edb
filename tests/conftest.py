"""Shared fixtures: real servers on 127.0.0.1, each stopped by the fixture that started it."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from fleet.seaweedfs import SeaweedS3

# Subprocesses the tests start (`python -m locust`, `python -m fleet.cli`) must not put the repository
# root on sys.path: its triton/ folder would import as a `triton` namespace package and break torch.
os.environ.setdefault("PYTHONSAFEPATH", "1")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server (SeaweedFS) for the whole test session."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket("models")
        yield server


@pytest.fixture
def s3_uri(seaweed: SeaweedS3) -> str:
    """A fresh prefix in the session's bucket, so tests never see each other's objects."""
    return f"s3://models/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def generated_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 generated models (20 per architecture), shared read-only by fast tests."""
    from model_repository.generator import generate

    out = tmp_path_factory.mktemp("generated")
    generate(60, out, seed=7)
    return out
