"""`fleet rehearse eks|ecs`: every runbook step that can run on this machine, in the runbook's order.

Why: docs/eks.md and docs/ecs.md go from an empty AWS account to a load-test report; most of that needs
AWS, but rendering, linting, building the images, starting the task/pods as containers and driving the
target code against the emulators (kmock, moto) do not. The rehearsal runs those and then lists, by
runbook step, what it could not run, so a reader knows exactly what is untested before a real run.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    runbook_step: str
    what: str
    run: Callable[[], None]
    arm64: bool = False  # Graviton images under qemu emulation: slow, so only with --arm64


@dataclass(frozen=True)
class _Pytest:
    """A step that runs test files (the spec of a runbook step) in a fresh pytest process."""

    paths: tuple[str, ...]
    marker: str | None = None

    def __call__(self) -> None:
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.paths]
        if self.marker:
            args += ["-m", self.marker]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        if done.returncode != 0:
            raise RuntimeError((done.stdout + done.stderr)[-3000:])
        click.echo(f"    {tail[0]}")


def _pytest(*paths: str, marker: str | None = None) -> Callable[[], None]:
    return _Pytest(paths, marker)


def _cfn_lint() -> None:
    template = ROOT / "ecs" / "templates" / "adfilter-fleet.yaml"
    lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run([str(lint), "--config-file", str(ROOT / "ecs" / ".cfnlintrc"), "--", str(template)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    from control_plane.targets.ecs.template import template_body

    click.echo(f"    cfn-lint clean; TemplateBody {len(template_body().encode()):,} bytes")


def _images() -> None:
    from deploy.images import build_all
    from deploy.podman import ensure_tools

    ensure_tools()
    build_all(log=lambda line: click.echo(f"    {line}"))


def _arm64_images() -> None:
    from deploy.images import build_all
    from deploy.podman import ensure_emulation, ensure_tools

    ensure_tools()
    ensure_emulation("arm64")
    build_all(log=lambda line: click.echo(f"    {line}"), arch="arm64")


def _arm64_steps(runbook_step: str) -> list[Step]:
    return [
        Step(runbook_step, "build the Graviton (arm64) base, server-cpu, control-plane and loadtest images "
             "under qemu emulation", _arm64_images, arm64=True),
        Step(runbook_step, "the arm64 images run: the server answers a pack member as torch on the host does "
             "(KServe v2), the control plane answers /healthz, locust loads the locustfile",
             _pytest("tests/containers/test_arm64_images.py"), arm64=True),
    ]


def _render_all() -> None:
    from control_plane.targets.eks.manifests import K8S_ROOT, render

    for overlay in sorted((K8S_ROOT / "overlays").iterdir()):
        objects = render(overlay)
        click.echo(f"    {overlay.name}: {len(objects)} objects")


STEPS: dict[str, list[Step]] = {
    "ecs": [
        Step("1. Images", "build the base, server-cpu, control-plane and loadtest images (podman)", _images),
        *_arm64_steps("1. Images"),
        Step("2, 5. Buckets, syncs, load-test results", "the task roles' S3 requests under the template's own "
             "IAM policies (moto enforcing them): both sync scopes, sync status, the locust master's upload; "
             "any action removed fails", _pytest("tests/ecs/test_iam_roles.py")),
        Step("3. Deploy", "cfn-lint the template; compact TemplateBody within CloudFormation's limit", _cfn_lint),
        Step("3. Deploy", "template facts: entry points, scaling limits, IAM, capacity, results bucket",
             _pytest("tests/ecs/test_template.py", "tests/ecs/test_capacity.py")),
        Step("2-4. Models and task", "the task definition as containers: init sync waits for the index, then "
             "Triton serves adfilter", _pytest("tests/containers/test_ecs_task.py")),
        Step("3, 5, 7. Deploy, load test, teardown", "EcsTarget against moto (deploy, scale, load test, "
             "teardown with scale-in protection cleared)",
             _pytest("tests/ecs/test_target_moto.py", "tests/ecs/test_loadtest.py",
                     "tests/ecs/test_teardown_protection.py")),
        Step("6. Report", "one connection per user, per-server counts in the report (real Triton, locust)",
             _pytest("tests/loadtest/test_nlb_connections.py")),
    ],
    "eks": [
        Step("2-3. Cluster, autoscaler, device plugins", "the eksctl file against the manifests: node groups, "
             "taints, scale-from-zero tags, the NVIDIA plugin's node label",
             _pytest("tests/k8s/test_cluster_config.py")),
        Step("5-9. Repository, IAM, registration, sync", "the runbook's whole S3 path from an empty prefix under "
             "exactly k8s/iam (moto enforcing it): readiness, empty index, init sync, registration by upload and "
             "with step 7b's loop, packs, assignments, status, deletes; any action removed fails",
             _pytest("tests/k8s/test_iam_roles.py", "tests/control_plane/test_empty_repository.py")),
        Step("6. Images", "build the base, server-cpu, control-plane and loadtest images (podman)", _images),
        *_arm64_steps("6. Images"),
        Step("7. Manifests", "render every overlay with kubectl kustomize", _render_all),
        Step("7. Manifests", "kubernetes-validate --strict, policies",
             _pytest("tests/k8s/test_manifests_validate.py", "tests/k8s/test_manifests_policy.py")),
        Step("7. Pods", "the Triton pod (sync, sidecar, Triton) and the control-plane pod as containers",
             _pytest("tests/containers/test_eks_pods.py")),
        Step("5b, 7-8. Database, deploy, load test", "EksTarget against kmock (deploy, the refusal of two control "
             "planes on SQLite and the one-replica trial, diagnosis, scaling, the locust Job)",
             _pytest("tests/k8s/test_eks_deploy.py", "tests/k8s/test_eks_diagnose.py",
                     "tests/k8s/test_eks_locust.py", "tests/k8s/test_eks_operations.py")),
        Step("7c. Inferentia2 compile", "the compile Job's manifest and CLI args; compile bookkeeping with a "
             "stand-in tracer; publishing beside the control plane (SeaweedFS); inf2 pins vs Neuron's docs",
             _pytest("tests/k8s/test_inf2_compile_job.py", "tests/data_plane/test_neuron_compile.py",
                     "tests/containers/test_image_facts.py")),
        Step("8. Report", "one connection per user, per-server counts in the report (real Triton, locust)",
             _pytest("tests/loadtest/test_nlb_connections.py")),
    ],
}

NOT_HERE = {
    "ecs": [
        "1. push the images to ECR (docker buildx --platform linux/arm64; no registry reachable here)",
        "2. the buckets and fleet upload on AWS (rehearsed against moto with IAM enforced, and SeaweedFS)",
        "3. CloudFormation create-stack on AWS (moto cannot run the real template: NLB TCP listener, "
        "scaling policies, alarms are skipped by it)",
        "4. real ECS scheduling, ENIs, NLB health checks and target registration",
        "5. locust generator tasks on ECS against the NLB; real NLB flow spreading",
        "7. real stack deletion (capacity provider, ASG with protected instances)",
        "service quotas, prices and the Graviton instances themselves (the arm64 images are built and one "
        "answers under qemu emulation here, with --arm64: correctness, not Graviton speed)",
    ],
    "eks": [
        "2. eksctl create cluster (no API server or EC2 here)",
        "2b-4. Cluster Autoscaler, device plugins, Prometheus adapter (helm charts from the internet)",
        "5. the S3 bucket and IRSA roles on AWS (the policies are enforced by moto here, not by AWS IAM)",
        "5b. the RDS database (its commands were not run; the control plane ran on PostgreSQL locally)",
        "6. push the images to ECR (arm64 and amd64 with buildx; the arm64 images are built here under "
        "qemu emulation with --arm64, but from PyPI's CUDA torch: PyTorch's CPU index is out of reach)",
        "c7g nodes themselves: Graviton speed (emulation here is correctness only)",
        "7-8. scheduling on real nodes, HPA scaling, EBS volumes, port-forward to the control plane",
        "8. the locust Job on the cluster against the Triton Service",
        "G4dn and Inf2 servers (NGC and Neuron images cannot be pulled or run here)",
        "7c. the compile Job on an inf2 node: torch_neuronx.trace and the server-inf2 image build",
    ],
}


@click.command("rehearse")
@click.argument("target", type=click.Choice(["eks", "ecs"]))
@click.option("--skip-images", is_flag=True, help="Do not build images (the container steps then build "
              "what they need themselves).")
@click.option("--arm64", is_flag=True, help="Also build the Graviton (arm64) images under qemu emulation and "
              "have the arm64 server answer a pack (slow: tens of minutes cold, minutes cached).")
def rehearse(target: str, skip_images: bool, arm64: bool) -> None:
    """Run every EKS/ECS runbook step that can run here, in order, and list the ones that cannot."""
    results: list[tuple[Step, str, float]] = []
    for step in STEPS[target]:
        if (skip_images and step.run is _images) or (step.arm64 and not arm64):
            results.append((step, "skipped" if not step.arm64 else "opt-in", 0.0))
            continue
        click.echo(f"[{step.runbook_step}] {step.what}")
        started = time.monotonic()
        try:
            step.run()
            outcome = "ok"
        except Exception as error:  # noqa: BLE001  a failed step is reported, the next ones still run
            outcome = "FAILED"
            click.echo(f"    FAILED: {str(error)[-2000:]}", err=True)
        results.append((step, outcome, time.monotonic() - started))
    click.echo(f"\nRehearsal of docs/{target}.md on this machine:")
    for step, outcome, seconds in results:
        click.echo(f"  {outcome:8} {seconds:6.0f}s  [{step.runbook_step}] {step.what}")
    if not arm64:
        click.echo("  (the arm64 steps are opt-in: `fleet rehearse " + target + " --arm64`)")
    click.echo("Not run here (needs AWS):")
    for line in NOT_HERE[target]:
        click.echo(f"  - {line}")
    if any(outcome == "FAILED" for _, outcome, _ in results):
        raise SystemExit(1)
