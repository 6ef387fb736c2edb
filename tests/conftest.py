"""Shared fixtures: real servers on 127.0.0.1, each stopped by the fixture that started it."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from fleet.seaweedfs import SeaweedS3
from fleet.settings import DevelopmentSettings

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


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL server for the session (the registry's production database)."""
    pytest.importorskip("pgserver", reason="pgserver (dev extra) provides the PostgreSQL binaries")
    from fleet.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pgdata"))
    yield server
    server.cleanup()


# The registry backends the API, race and reliability stacks run on (FLEET_TEST_DATABASES=sqlite narrows a
# local run to one).
DATABASES = DevelopmentSettings.from_env().test_databases


def database_for(request: pytest.FixtureRequest, backend: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / 'registry.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture(scope="module", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The registry database of one test module's stack, on each backend in turn: SQLite (the embedded
    default) and PostgreSQL (several replicas); a fresh database each time."""
    return database_for(request, request.param, tmp_path_factory.mktemp("sqlite"))
