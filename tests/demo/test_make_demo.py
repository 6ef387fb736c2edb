"""The main job, as `make demo` runs it: `fleet up` brings up SeaweedFS, two tritonservers and the control
plane, registers 1,000 unique models over the REST API (the last five real-size: three 42 MiB BERT-mini
fine-tunes of one architecture, a 98 MiB ResNet-50 and a 109 MiB BERT-small), waits until all are servable,
answers each real-size model, runs a 20 s locust load test through `POST /api/v1/loadtests`, and `fleet down`
leaves nothing running."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow
MODELS = 1000
FLEET = Path(sys.executable).with_name("fleet")


def _ours(pids: dict[str, int]) -> list[str]:
    return [name for name, pid in pids.items() if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_fleet_up_serves_1000_models_load_tests_them_and_fleet_down_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    up = subprocess.run([str(FLEET), "up", "--models", str(MODELS), "--loadtest-seconds", "20"], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=1200)
    stack = json.loads((tmp_path / ".fleet" / "stack.json").read_text()) \
        if (tmp_path / ".fleet" / "stack.json").exists() else {"pids": {}}
    try:
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        summary = json.loads((tmp_path / ".fleet" / "summary.json").read_text())
        assert summary["models_servable"] == MODELS
        test = summary["loadtest"]
        assert test["status"] == "succeeded", test
        aggregated = test["results"]["aggregated"]
        assert aggregated["requests"] > 1000 and aggregated["failures"] == 0
        assert test["results"]["models_hit"] > 300, "a Zipf mix over 1,000 models reaches hundreds of them"
        largest = summary["largest_model"]
        assert largest["name"] == "bert-small-00999" and largest["bytes"] > 100 * 2**20
        assert summary["served_bytes"] > 320 * 2**20, "the five real-size models alone are ~330 MiB"
        real = {row["name"]: row for row in summary["real_size"]}
        assert set(real) == {"bert-mini-00995", "bert-mini-00996", "bert-mini-00997", "resnet50-00998",
                             "bert-small-00999"}
        assert all(row["first_s"] > 0 and row["warm_ms"] > 0 for row in real.values())
        family = {real[f"bert-mini-0099{k}"]["architecture"] for k in (5, 6, 7)}
        assert len(family) == 1 and None not in family, "the BERT-mini fine-tunes are one architecture"
        assert real["bert-mini-00995"]["family_members"] == 3
        printed = up.stdout
        for line in ("wall time", "models servable", "bytes served", "real-size model", "API token",
                     "control plane"):
            assert line in printed
        assert set(stack["pids"]) == {"seaweedfs", "triton-a", "triton-b", "control-plane"}
        assert _ours(stack["pids"]) == list(stack["pids"]), "everything is still up after `fleet up`"
    finally:
        down = subprocess.run([str(FLEET), "down"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert _ours(stack["pids"]) == [], "fleet down stops every process it started"
    assert not (tmp_path / ".fleet" / "stack.json").exists()
