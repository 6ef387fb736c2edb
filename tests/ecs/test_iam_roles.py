"""The ECS tasks' S3 requests are allowed by their task roles, as the template ships them.

The roles' policies are read from ecs/templates/adfilter-fleet.yaml (TaskRole with its attached
policies, LoadTestTaskRole), evaluated with the stack's parameters, and held by IAM users of a moto S3
that enforces them (deploy/policed_s3.py, one server for the module); every request is also checked the
way AWS evaluates it (deploy/iam_policies.py). The commands are the template's own: the Triton task's
`init-sync` and `sync` containers in both sync scopes (the ECS task metadata endpoint is a stand-in on
loopback) and the locust master's script from the load-test launcher, run for real.

Roles not exercised here, and why: the execution role is used by the ECS agent (image pulls, log
streams, the admin secret), not by this project's code; MetricsPublisherPolicy is the CloudWatch
agent's. The control plane on ECS runs outside the stack with the deploying identity (docs/ecs.md).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from control_plane.assignments import publish_assignment
from control_plane.settings import Settings
from control_plane.targets.base import LoadTestSpec
from control_plane.targets.ecs.loadtest import LocustCommands
from deploy.ecs_metadata import TaskMetadataEndpoint
from deploy.ecs_task import task_containers
from deploy.iam_policies import Policy, actions_of, ecs_role_policy, without
from deploy.policed_s3 import PolicedS3, PolicyViolation, Role
from fleet.triton_server import free_port
from model_repository.generator import generate
from model_repository.packing import build_repository
from model_repository.s3_sync import upload
from model_repository.server_names import METADATA_ENV

REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
MODELS, RESULTS = "my-models", "my-results"
TASK_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
LOCUSTFILE = Path(__file__).parent / "fixtures" / "fake_adfilter_locustfile.py"


def parameters(prefix: str, scope: str = "whole") -> dict[str, str]:
    return {"ImageRegistry": REGISTRY, "RepositoryBucket": MODELS, "RepositoryPrefix": prefix,
            "ResultsBucket": RESULTS, "SyncScope": scope}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> PolicedS3:
    with PolicedS3(tmp_path_factory.mktemp("policed-s3")) as server:
        for bucket in (MODELS, RESULTS):  # docs/ecs.md step 2: aws s3 mb
            server.create_bucket(bucket)
        yield server


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A packed repository (`fleet generate` + `fleet pack`), what the operator uploads in step 2."""
    generated = tmp_path_factory.mktemp("generated")
    generate(4, generated, seed=5)
    out = tmp_path_factory.mktemp("repository") / "repository"
    build_repository(generated, out, pack_size=2)
    return out


def sync_commands(prefix: str, scope: str, volume: Path) -> list[str]:
    """The init-sync's `fleet sync` (one pass of its retry loop) and the sync container's (one pass:
    --interval 0), as shell commands, writing to `volume` instead of the task's /repository."""
    containers = {c["Name"]: c for c in task_containers("TritonTaskDefinition", parameters(prefix, scope))}
    shell, flag, script = containers["init-sync"]["Command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    init = re.fullmatch(r"d=2; until (fleet sync .*?);\s*do .*", script, re.S)
    assert init, script
    argv = list(containers["sync"]["Command"])
    argv[argv.index("--interval") + 1] = "0"
    sidecar = " ".join(argv)
    return [command.replace("/repository", str(volume)) for command in (init.group(1), sidecar)]


def run(command: str, role: Role, **env: str) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    environment = {**role.environment(), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "PYTHONSAFEPATH": "1",
                   **env}
    return subprocess.run(["/bin/sh", "-c", command], env=environment, capture_output=True, text=True,
                          timeout=180)


def run_triton_task(s3: PolicedS3, policy: Policy, repository: Path, tmp_path: Path, prefix: str,
                    scope: str) -> Role:
    """Step 2 (the operator uploads), then the Triton task's syncs under its task role; checked after each."""
    role = s3.role("TaskRole", policy)
    upload(repository, f"s3://{MODELS}/{prefix}", s3.admin.client())
    init, sidecar = sync_commands(prefix, scope, tmp_path / "volume")
    with TaskMetadataEndpoint({"Cluster": "adfilter-cluster", "KnownStatus": "RUNNING",
                               "TaskARN": f"arn:aws:ecs:us-east-1:123456789012:task/adfilter-cluster/{TASK_ID}"}) \
            as metadata:
        if scope == "assigned":
            first = run(init, role, **{METADATA_ENV: metadata.uri})
            s3.check(role, policy, "init-sync before the control plane assigned the task")
            assert first.returncode == 0 and "nothing to sync yet" in first.stdout, first.stdout + first.stderr
            packs = sorted(p.name for p in repository.iterdir())
            publish_assignment(s3.admin.client(), Settings(repository_uri=f"s3://{MODELS}/{prefix}"),
                               f"ecs-{TASK_ID}", {packs[0]: 1})
        for step, command in (("init-sync", init), ("sync", sidecar)):
            done = run(command, role, **{METADATA_ENV: metadata.uri})
            s3.check(role, policy, f"{scope} scope, {step}")
            assert done.returncode == 0, done.stdout + done.stderr
    return role


@pytest.mark.parametrize("scope", ["whole", "assigned"])
def test_the_triton_tasks_syncs_run_under_exactly_the_task_role(s3, repository, tmp_path, scope):
    prefix = f"fleet-{uuid.uuid4().hex[:8]}"
    role = run_triton_task(s3, ecs_role_policy("TaskRole", parameters(prefix, scope)), repository, tmp_path,
                           prefix, scope)
    models = tmp_path / "volume" / "models"
    expected = sorted(p.name for p in repository.iterdir())
    assert sorted(p.name for p in models.iterdir()) == (expected if scope == "whole" else expected[:1])
    writes = [c.key for c in s3.calls(role) if c.operation == "PutObject"]
    assert writes == ([] if scope == "whole" else [f"{prefix}/.fleet/status/ecs-{TASK_ID}.json"] * 2)


def run_locust_master(s3: PolicedS3, policy: Policy, tmp_path: Path) -> Role:
    """The master and worker scripts the ECS load-test launcher gives its tasks, under the locust task role."""
    role = s3.role("LoadTestTaskRole", policy)
    spec = LoadTestSpec(locustfile=str(LOCUSTFILE), host="nlb.example:8001", users=2, spawn_rate=2, duration_s=1,
                        workers=1)
    commands = LocustCommands(spec, spec.host, workers_max_wait_s=30, master_port=free_port(),
                              results_dir=str(tmp_path / "results"))
    env = {**role.environment(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RESULTS_BUCKET": RESULTS, "RESULTS_PREFIX": "loadtests/run-1/"}
    master = subprocess.Popen(["sh", "-c", commands.master()], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    worker = subprocess.Popen(["sh", "-c", commands.worker("127.0.0.1")], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        output, _ = master.communicate(timeout=120)
        worker.wait(timeout=30)
    finally:
        for process in (master, worker):
            if process.poll() is None:
                process.kill()
    s3.check(role, policy, "locust master uploading its results")
    assert master.returncode == 0, output
    return role


@pytest.mark.slow
def test_the_locust_master_uploads_its_results_under_exactly_the_load_test_role(s3, tmp_path):
    role = run_locust_master(s3, ecs_role_policy("LoadTestTaskRole", parameters("fleet")), tmp_path)
    keys = {c.key for c in s3.calls(role) if c.operation == "PutObject"}
    assert {"loadtests/run-1/adfilter_stats.csv", "loadtests/run-1/adfilter_run.json"} <= keys


TASK_ROLE_ACTIONS = actions_of(ecs_role_policy("TaskRole", parameters("p")))
LOADTEST_ACTIONS = actions_of(ecs_role_policy("LoadTestTaskRole", parameters("p")))


@pytest.mark.parametrize("statement,action", TASK_ROLE_ACTIONS)
def test_removing_any_action_from_the_task_role_fails_the_tasks_sync_naming_it(s3, repository, tmp_path,
                                                                               statement, action):
    prefix = f"fleet-{uuid.uuid4().hex[:8]}"
    policy = without(ecs_role_policy("TaskRole", parameters(prefix, "assigned")), statement, action)
    with pytest.raises(PolicyViolation) as failure:
        run_triton_task(s3, policy, repository, tmp_path, prefix, "assigned")
    assert action in str(failure.value), str(failure.value)


@pytest.mark.slow
@pytest.mark.parametrize("statement,action", LOADTEST_ACTIONS)
def test_removing_any_action_from_the_load_test_role_fails_the_upload_naming_it(s3, tmp_path, statement, action):
    policy = without(ecs_role_policy("LoadTestTaskRole", parameters("fleet")), statement, action)
    with pytest.raises(PolicyViolation) as failure:
        run_locust_master(s3, policy, tmp_path)
    assert action in str(failure.value), str(failure.value)


def test_the_roles_hold_only_their_own_grants():
    assert TASK_ROLE_ACTIONS == [(0, "s3:GetObject"), (1, "s3:ListBucket"), (2, "s3:PutObject")]
    assert LOADTEST_ACTIONS == [(0, "s3:PutObject")]
