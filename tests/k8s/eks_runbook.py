"""docs/eks.md's path through S3, run by the real code under the two IRSA roles of k8s/iam.

`run_eks_runbook` plays, in the runbook's order, everything the control plane (role
triton-fleet-control-plane, k8s/iam/repository-write-policy.json) and a Triton pod's sync containers (role
triton-fleet-repository-read, k8s/iam/repository-read-policy.json) do in S3, from an empty prefix:

 7.  the control plane starts (readiness, the empty repository index) and the pods' `model-sync-init`
     (its command from k8s/modules/triton/statefulset.yaml) finds nothing assigned yet and exits 0;
 7b. a model registered by upload (POST /models), the rest as the runbook does it: the operator copies
     `generated/` under s3://$BUCKET/$PREFIX/uploads/ and the runbook's own Python loop (read from
     docs/eks.md) registers each from S3; discovery lists the pod, the control plane builds the packs,
     publishes them, the index and the pod's assignment; the pod's sync downloads its share and publishes
     its status; the control plane reads that status (the disk tier);
     a model is deleted (its artifact and the pack's member leave S3);
 9.  the pod leaves: discovery drops it and the control plane deletes its assignment and status.

After every step each role's requests are checked against its shipped policy (deploy/policed_s3.py):
a denied request fails the step with `PolicyViolation`, naming the request and the IAM action it needs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import requests
import yaml
from werkzeug.serving import make_server

from control_plane.app import create_app
from control_plane.discovery import Discovered, DiscoverySettings
from control_plane.settings import Settings
from deploy.iam_policies import Policy
from deploy.policed_s3 import PolicedS3, Role
from model_repository.s3_sync import INDEX_KEY, assignment_key, status_key
from model_repository.server_names import EKS_PREFIX

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "eks.md"
TRITON_STATEFULSET = ROOT / "k8s" / "modules" / "triton" / "statefulset.yaml"
BUCKET = "models"
TOKEN = "iam-rehearsal-token"
POD = "triton-cpu-0"
SERVER = f"{EKS_PREFIX}{POD}"


@dataclass
class Pods:
    """The Kubernetes API's answer to discovery, as the test sets it (EksDiscoverer's reading of real
    EndpointSlices is tests/k8s/test_discovery.py's subject; the S3 side is this module's)."""

    servers: list[Discovered] = field(default_factory=list)
    prefix: str = EKS_PREFIX

    def list_servers(self) -> list[Discovered]:
        return list(self.servers)


@dataclass
class Outcome:
    prefix: str
    control_plane: Role
    server: Role
    disk_tier: dict | None = None


def init_sync_command(repository: Path, prefix: str) -> str:
    """The `fleet sync` that the model-sync-init container's shell loop retries until it succeeds, with the
    pod's variables as Kubernetes expands them (one pass of it: a failing pass fails at once here)."""
    statefulset = yaml.safe_load(TRITON_STATEFULSET.read_text())
    init = next(c for c in statefulset["spec"]["template"]["spec"]["initContainers"] if c["name"] == "model-sync-init")
    shell, flag, script = init["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    values = {"POD_NAME": POD, "REPOSITORY_BUCKET": BUCKET, "REPOSITORY_PREFIX": prefix}
    script = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], script)
    command = re.fullmatch(r"d=2; until (fleet sync .*?);\s*do .*", script.replace("\n", " "), re.S)
    assert command and "/repository/models" in command.group(1), script
    return command.group(1).replace("/repository/models", str(repository))


def runbook_registration_loop() -> tuple[str, str]:
    """docs/eks.md step 7b: the `aws s3 sync` destination and the Python loop that registers from S3."""
    text = RUNBOOK.read_text()
    sync = re.search(r"^aws s3 sync generated/ (s3://\S+)$", text, re.M)
    loop = re.search(r"^python - <<'PY'\n(.*?)^PY$", text, re.M | re.S)
    assert sync and loop, "docs/eks.md step 7b no longer has the `aws s3 sync generated/` line and its loop"
    return sync.group(1), loop.group(1)


def operator_sync(folder: Path, destination: str, env: dict[str, str], operator: Role) -> None:
    """`aws s3 sync FOLDER DESTINATION` as the operator (the AWS CLI is not installed here)."""
    uri = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], destination)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    s3 = operator.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())


@contextmanager
def control_plane(role: Role, settings: Settings, monkeypatch) -> Iterator[tuple[str, object]]:
    """The control plane in this process with the role's credentials only, served over HTTP; yields its
    URL and app. Its reconciler does not run on its own: the runbook steps tick it."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in role.environment({}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # credentials are read when the client is made
    app = create_app(settings, start_reconciler=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state = app.extensions["fleet"]
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        state.validator.close()
        state.reconciler.pool.shutdown(wait=False, cancel_futures=True)
        state.reconciler.health_pool.shutdown(wait=False, cancel_futures=True)


def run_eks_runbook(s3: PolicedS3, control_plane_policy: Policy, server_policy: Policy, generated: Path,
                    tmp_path: Path, monkeypatch, prefix: str) -> Outcome:
    cp_role = s3.role("triton-fleet-control-plane", control_plane_policy)
    server_role = s3.role("triton-fleet-repository-read", server_policy)
    outcome = Outcome(prefix, cp_role, server_role)

    def checkpoint(step: str) -> None:
        s3.check(cp_role, control_plane_policy, f"control plane, {step}")
        s3.check(server_role, server_policy, f"Triton pod {POD}, {step}")

    repository = tmp_path / "pod" / "repository" / "models"
    repository.parent.mkdir(parents=True)
    script = init_sync_command(repository, prefix)
    bin_dir = str(Path(sys.executable).parent)
    pod_env = {**server_role.environment(), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
               "PYTHONSAFEPATH": "1"}

    def model_sync_init() -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", "-c", script], env=pod_env, capture_output=True, text=True, timeout=180)

    tick_errors: list[str] = []

    def tick() -> None:
        """One reconcile pass; an error is recorded, not raised, as the reconciler's loop logs and retries."""
        try:
            reconciler.tick()
        except Exception as error:  # noqa: BLE001  checked after the step's policy checkpoint
            tick_errors.append(f"{type(error).__name__}: {error}")

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'registry.db'}", api_token=TOKEN,
                        repository_uri=f"s3://{BUCKET}/{prefix}", s3_endpoint_url=s3.endpoint_url,
                        work_dir=tmp_path / "work", validation_workers=1, disk_status_interval_s=0.001)
    pods = Pods()
    with control_plane(cp_role, settings, monkeypatch) as (url, app):
        state = app.extensions["fleet"]
        reconciler = state.reconciler
        reconciler.discovery = DiscoverySettings(target="eks", interval_s=0.001)
        reconciler._discoverer = pods  # the platform listing; see Pods
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {TOKEN}"

        # ---- 7. deploy onto an empty prefix ----------------------------------------------------
        ready = requests.get(f"{url}/readyz", timeout=30)
        checkpoint("readiness (/readyz)")
        assert ready.status_code == 200, ready.text
        tick()
        checkpoint("first reconcile (empty repository index)")
        assert not tick_errors, tick_errors
        assert s3.admin.client().head_object(Bucket=BUCKET, Key=f"{prefix}/{INDEX_KEY}")
        first = model_sync_init()
        checkpoint("model-sync-init before any registration")
        assert first.returncode == 0 and "nothing to sync yet" in first.stdout, first.stdout + first.stderr

        # ---- 7b. register models ---------------------------------------------------------------
        manifest = json.loads((generated / "manifest.json").read_text())
        entry = manifest["models"][0]
        response = api.post(f"{url}/api/v1/models", timeout=300, data={
            "name": entry["id"], "family": "cpu",
            "signature": json.dumps({"inputs": entry["inputs"], "outputs": entry["outputs"]})},
            files={"artifact": ("model.pt", (generated / entry["file"]).read_bytes())})
        checkpoint("registration by upload (POST /models)")
        assert response.status_code == 201, response.text

        destination, loop = runbook_registration_loop()
        runbook_env = {**os.environ, "BUCKET": BUCKET, "PREFIX": prefix, "FLEET": f"{url}/api/v1", "TOKEN": TOKEN}
        operator_sync(generated, destination, runbook_env, s3.admin)
        (tmp_path / "generated").symlink_to(generated, target_is_directory=True)
        done = subprocess.run([sys.executable, "-"], input=loop, env=runbook_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        checkpoint("registration from S3 (docs/eks.md step 7b's loop)")
        assert done.returncode == 0, done.stdout + done.stderr

        pods.servers = [Discovered(name=SERVER, family="cpu", http_url="http://127.0.0.1:9",
                                   grpc_url="127.0.0.1:9", capacity_bytes=5 * 2**30)]
        tick()
        checkpoint("discovery, pack build, index and assignment publish")
        assert not tick_errors, tick_errors
        assert s3.admin.client().head_object(Bucket=BUCKET, Key=f"{prefix}/{assignment_key(SERVER)}")

        second = model_sync_init()
        checkpoint("model-sync-init with an assignment (sync, status publish)")
        assert second.returncode == 0, second.stdout + second.stderr
        assert [p.name for p in repository.iterdir()], "the pod's sync downloaded nothing"

        tick()
        checkpoint("reading the pod's sync status (disk tier)")
        assert not tick_errors, tick_errors
        listed = api.get(f"{url}/api/v1/servers", timeout=30).json()["items"]
        outcome.disk_tier = (listed[0].get("tier_usage") or {}).get("tiers", {}).get("disk")

        deleted = api.delete(f"{url}/api/v1/models/{manifest['models'][1]['id']}", timeout=60)
        tick()
        checkpoint("model delete and pack rebuild")
        assert not tick_errors, tick_errors
        assert deleted.status_code == 200, deleted.text

        # ---- 9. the pod leaves ---------------------------------------------------------------
        pods.servers = []
        tick()
        checkpoint("discovery-driven delete of a departed server's assignment and status")
        assert not tick_errors, tick_errors
        listing = s3.admin.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/.fleet/")
        left = {o["Key"] for o in listing.get("Contents", [])}
        assert f"{prefix}/{assignment_key(SERVER)}" not in left and f"{prefix}/{status_key(SERVER)}" not in left
    return outcome
