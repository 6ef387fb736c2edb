"""Commands started in the repository root, where the `triton/` folder would shadow OpenAI's `triton` and
break torch (model_repository/checkout.py says why): the documented `python -m` commands work there without
PYTHONSAFEPATH, and where the guard cannot help it says what to do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_repository import checkout

ROOT = Path(__file__).resolve().parents[2]


def in_root(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` started in the repository root the way a person types it: no PYTHONSAFEPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def test_a_documented_benchmark_command_starts_in_the_repository_root():
    done = in_root("-m", "benchmarks.validation", "--help")  # docs/benchmarks-validation.md
    assert done.returncode == 0 and "--repeats" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_torch_export_works_in_a_python_m_command_started_in_the_repository_root(tmp_path):
    """`python -m fleet.cli generate --format torch_export` (the `fleet generate` of the README) runs
    torch.export, which fails in the root unless the root leaves sys.path before torch looks for triton."""
    done = in_root("-m", "fleet.cli", "generate", "--models", "1", "--format", "torch_export", "--out",
                   str(tmp_path / "zoo"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert list((tmp_path / "zoo").rglob("*.pt2")), "a torch.export artifact was written"


def test_a_script_that_imports_a_project_package_first_keeps_torch_working():
    done = in_root("-c", "import fleet, torch; from torch.utils._triton import has_triton; "
                         "print('triton', has_triton())")
    assert done.returncode == 0 and "triton False" in done.stdout, done.stderr[-2000:]


def test_a_root_on_sys_path_that_cannot_be_removed_fails_with_what_to_do(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(ROOT), *sys.path])
    monkeypatch.setattr(checkout, "_installed_without", lambda path: False)  # a checkout nobody installed
    with pytest.raises(checkout.CheckoutOnPath, match=r"make install.*PYTHONSAFEPATH=1"):
        checkout.keep_checkout_root_off_path()


def test_the_root_leaves_sys_path_when_the_project_is_installed(monkeypatch):
    monkeypatch.setattr(sys, "path", ["", str(ROOT), *sys.path])
    monkeypatch.chdir(ROOT)
    checkout.keep_checkout_root_off_path()
    assert not any(entry in ("", str(ROOT)) for entry in sys.path)
