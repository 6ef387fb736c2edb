"""Loaded means loaded: the reconciler's load step against a real tritonserver 2.51.

A placement is `loaded` only when Triton's config for the pack, read back after the load, carries the
generation the control plane built; a server whose copy is older stays pending with the reason. The
residency budget a placement sets reaches the pack runtime through Triton's config override, with the
pack's files kept.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from control_plane.reconcile import load_and_verify, resize
from fleet.client import infer_at
from fleet.triton_server import TritonServer
from model_repository.contract import samples
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest
from model_repository.packing import PackPlan, write_triton_model
from model_repository.triton_admin import TritonAdmin
from model_repository.triton_config import PackSettings

pytestmark = pytest.mark.slow
ADMIN_KEY = "lml-admin-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("lml") / "repository"
    repo.mkdir()
    with TritonServer(repo, admin_key=ADMIN_KEY) as triton:
        yield triton


def write_pack(server: TritonServer, models_dir, generation: int, members: int = 2, name: str = "lml-pack"):
    entries = [m for m in Manifest.read(models_dir).models if m.architecture == "mlp"][:members]
    write_triton_model(PackPlan(name, "mlp", tuple(entries)), models_dir, server.repository,
                       PackSettings(generation=generation))
    return entries


def triton(server: TritonServer) -> TritonAdmin:
    """Loading and verifying talk to Triton only: its admin client is all they need."""
    return TritonAdmin(server.http_url, ADMIN_KEY, server.metrics_url)


def infer(server: TritonServer, pack: str, entry) -> np.ndarray:
    (x,) = example_inputs(entry, batch=1)
    return infer_at(server.grpc_url, pack, {"INPUT__0": x}, entry.id,
                    datatypes={"INPUT__0": entry.inputs[0].dtype}).as_numpy("OUTPUT__0")


def test_a_server_with_an_older_copy_stays_pending_with_the_reason(server, generated_models):
    write_pack(server, generated_models, generation=3, name="lml-late")
    result = load_and_verify(triton(server), "lml-late", generation=4, residency=None)
    assert result.state == "pending"
    assert result.generation == 3, "what the server serves now is recorded: members of generation 3 stay servable"
    assert result.error == "server has generation 3, waiting for 4: its sync is behind"
    # the server's copy catches up: the next attempt verifies generation 4
    write_pack(server, generated_models, generation=4, members=3, name="lml-late")
    result = load_and_verify(triton(server), "lml-late", generation=4, residency=None)
    assert (result.state, result.generation, result.error) == ("loaded", 4, None)


def test_the_residency_budget_reaches_the_runtime_through_a_config_override(server, generated_models):
    entries = write_pack(server, generated_models, generation=7, members=2, name="lml-budget")
    # a budget that differs from the config's: the override reaches the runtime, which reports it
    budget = 3 * 2**20 + 12345
    result = load_and_verify(triton(server), "lml-budget", generation=7, residency=budget)
    assert (result.state, result.generation, result.residency_bytes) == ("loaded", 7, budget)
    config = triton(server).config("lml-budget").config
    assert config.parameter("max_resident_bytes") == str(budget)
    assert config.parameter("generation") == "7", "the override kept the server's generation"
    for entry in entries + entries:  # the files are still the pack's: both members answer
        assert infer(server, "lml-budget", entry).shape[0] == 1

    def runtime_budget() -> float | None:
        found = [s.value for s in samples(triton(server).metrics_text())
                 if s.name == "fleet_pack_budget_bytes" and s.labels.get("pack") == "lml-budget"]
        return found[0] if found else None
    deadline = time.monotonic() + 30
    while runtime_budget() != budget and time.monotonic() < deadline:
        infer(server, "lml-budget", entries[0])  # the runtime flushes its metrics on requests
    assert runtime_budget() == budget, "the runtime runs with the overridden budget"

    # a loaded pack's budget changes (its reservation grew with traffic): one reload with the new budget
    resized = resize(triton(server), "lml-budget", generation=7, residency=64 * 2**20)
    assert (resized.state, resized.generation, resized.residency_bytes) == ("loaded", 7, 64 * 2**20)
    assert infer(server, "lml-budget", entries[0]).shape[0] == 1
