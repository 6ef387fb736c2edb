"""The runbook's compile Job (k8s/jobs/inf2-compile.yaml, docs/eks.md step 7c) is valid Kubernetes, runs in
the image that serves inf2, lands where the inf2 servers do, and calls the CLI with arguments it accepts."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click
import yaml

from control_plane.targets.eks.manifests import K8S_ROOT
from fleet.cli import main

JOB = K8S_ROOT / "jobs" / "inf2-compile.yaml"
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"


def _job() -> dict:
    return yaml.safe_load(JOB.read_text())


def _pod() -> dict:
    return _job()["spec"]["template"]["spec"]


def test_the_job_is_strictly_valid(tmp_path: Path):
    rendered = tmp_path / "job.yaml"
    rendered.write_text(JOB.read_text().replace("REGISTRY", "111122223333.dkr.ecr.us-east-1.amazonaws.com"))
    for version in ("1.30.0", "1.33.0"):
        done = subprocess.run([str(VALIDATOR), "-k", version, "--strict", str(rendered)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0 and f"{rendered} passed" in done.stdout, done.stdout + done.stderr


def test_it_runs_in_the_inf2_server_image_on_an_inf2_node_with_a_neuron_device():
    pod = _pod()
    container = pod["containers"][0]
    assert container["image"].endswith("/triton-fleet/server-inf2:0.1.0")
    family = yaml.safe_load((K8S_ROOT / "modules" / "triton-inf2" / "family.yaml").read_text())["spec"]["template"]
    assert pod["nodeSelector"] == family["spec"]["nodeSelector"]
    assert pod["tolerations"] == family["spec"]["tolerations"]
    assert container["resources"]["limits"]["aws.amazon.com/neuron"] == "1"
    assert pod["serviceAccountName"] == "control-plane"  # the role that may write the repository prefix


def test_its_fleet_commands_parse_with_the_real_cli(tmp_path: Path):
    script = " ".join(_pod()["containers"][0]["args"])
    script = script.replace("$(REPOSITORY_BUCKET)", "bucket").replace("$(REPOSITORY_PREFIX)", "prefix")
    assert "/work/repository" in script and _pod()["containers"][0]["volumeMounts"][0]["mountPath"] == "/work"
    script = script.replace("/work/repository", str(tmp_path))  # compile needs the folder sync made
    commands = [shlex.split(part) for part in script.split("&&")]
    assert [c[:2] for c in commands] == [["fleet", "sync"], ["fleet", "compile"]]
    for argv in commands:
        context = main.make_context("fleet", argv[1:])  # raises click.UsageError on a wrong argument
        sub = main.get_command(context, argv[1])
        sub.make_context(argv[1], argv[2:], parent=context)
    sync_ctx = main.get_command(click.Context(main), "sync").make_context("sync", commands[0][2:])
    compile_ctx = main.get_command(click.Context(main), "compile").make_context("compile", commands[1][2:])
    assert sync_ctx.params["server"] is None  # the whole repository: every pack gets compiled
    assert str(compile_ctx.params["repository"]) == str(sync_ctx.params["repository"])
    assert compile_ctx.params["family"] == "inf2"
    assert compile_ctx.params["publish_uri"] == sync_ctx.params["uri"] == "s3://bucket/prefix"
