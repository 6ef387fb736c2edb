"""Every S3 request of the EKS runbook is allowed by the role that makes it, as shipped in k8s/iam.

The roles are IAM users of a moto S3 that enforces their policies (deploy/policed_s3.py, one server for
the module); each request is also checked the way AWS evaluates it (deploy/iam_policies.py: prefix
conditions, copy sources, 404s). The path is the real code: the control plane's app and reconciler, the
pods' `model-sync-init` command from the StatefulSet, the runbook's own registration loop (eks_runbook.py).
And the converse: removing any one action from a shipped policy makes that path fail, naming the action.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from deploy.iam_policies import actions_of, allowed, k8s_policy, without
from deploy.policed_s3 import PolicedS3, PolicyViolation
from model_repository.generator import generate

from .eks_runbook import BUCKET, run_eks_runbook

WRITE, READ = "repository-write-policy.json", "repository-read-policy.json"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> PolicedS3:
    with PolicedS3(tmp_path_factory.mktemp("policed-s3")) as server:
        server.create_bucket(BUCKET)  # docs/eks.md step 5: aws s3 mb s3://$BUCKET
        yield server


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """`fleet generate --models 3 --out generated/`"""
    out = tmp_path_factory.mktemp("generated")
    generate(3, out, seed=21)
    return out


def fresh_prefix() -> str:
    return f"repository-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_the_runbook_runs_under_exactly_the_shipped_policies(s3, generated, tmp_path, monkeypatch):
    prefix = fresh_prefix()
    outcome = run_eks_runbook(s3, k8s_policy(WRITE, BUCKET, prefix), k8s_policy(READ, BUCKET, prefix), generated,
                              tmp_path, monkeypatch, prefix)
    assert outcome.disk_tier and outcome.disk_tier["resident_members"] >= 1, outcome.disk_tier
    operations = {call.operation for call in s3.calls(outcome.control_plane)}
    # The path really went through S3 the way AWS will see it: reads, writes, server-side copies, deletes,
    # prefix-scoped listings (an empty set here would mean the test checked nothing).
    assert {"ListObjectsV2", "HeadObject", "GetObject", "PutObject", "CopyObject", "DeleteObject"} <= operations
    server_calls = s3.calls(outcome.server)
    assert {c.operation for c in server_calls} == {"GetObject", "PutObject"}
    writes = [c.key for c in server_calls if c.operation == "PutObject"]
    assert writes == [f"{prefix}/.fleet/status/eks-triton-cpu-0.json"]


@pytest.mark.slow
@pytest.mark.parametrize("policy_file,statement,action", [
    (name, statement, action) for name in (WRITE, READ)
    for statement, action in actions_of(k8s_policy(name, BUCKET, "p"))])
def test_removing_any_action_from_a_shipped_policy_fails_the_runbook_naming_it(
        s3, generated, tmp_path, monkeypatch, policy_file, statement, action):
    """A one-word edit of k8s/iam that drops a needed action makes the runbook above fail at the step that
    needs it, with a PolicyViolation naming the action (so every action in the shipped files is needed)."""
    prefix = fresh_prefix()
    policies = {WRITE: k8s_policy(WRITE, BUCKET, prefix), READ: k8s_policy(READ, BUCKET, prefix)}
    policies[policy_file] = without(policies[policy_file], statement, action)
    with pytest.raises(PolicyViolation) as failure:
        run_eks_runbook(s3, policies[WRITE], policies[READ], generated, tmp_path, monkeypatch, prefix)
    assert action in str(failure.value), str(failure.value)


def test_outside_the_prefix_the_control_plane_is_refused_with_the_place_to_put_artifacts(s3, tmp_path):
    """An artifact left where the old runbook put it (s3://BUCKET/uploads/) is outside the role: the API
    says where to copy it instead of answering 503."""
    from control_plane.errors import ApiError
    from control_plane.registry import Registry
    from control_plane.settings import Settings

    prefix = fresh_prefix()
    role = s3.role("triton-fleet-control-plane", k8s_policy(WRITE, BUCKET, prefix))
    s3.admin.client().put_object(Bucket=BUCKET, Key="uploads/outside.pt", Body=b"PK")
    registry = Registry(None, Settings(repository_uri=f"s3://{BUCKET}/{prefix}"), role.client(), None)
    with pytest.raises(ApiError) as refused:
        registry.fetch_s3_uri(f"s3://{BUCKET}/uploads/outside.pt", tmp_path)
    assert refused.value.status_code == 400 and refused.value.code == "s3_object_not_readable"
    assert f"s3://{BUCKET}/{prefix}/uploads/" in refused.value.message


@pytest.mark.parametrize("key", [".fleet/artifacts/m/abc.pt", "uploads/m.pt", ".fleet/index.json",
                                 ".fleet/assignments/eks-triton-cpu-0.json", "pack-a/1/members/m.pt"])
def test_the_control_plane_may_read_and_write_what_it_keeps_under_the_prefix_and_nothing_else(key):
    policy = k8s_policy(WRITE, "models", "repository")
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert allowed(policy, action, f"arn:aws:s3:::models/repository/{key}", {})
        assert not allowed(policy, action, f"arn:aws:s3:::models/{key}", {})
        assert not allowed(policy, action, f"arn:aws:s3:::other/repository/{key}", {})


def test_the_servers_may_write_only_their_status():
    policy = k8s_policy(READ, "models", "repository")
    assert allowed(policy, "s3:PutObject", "arn:aws:s3:::models/repository/.fleet/status/eks-x.json", {})
    for key in (".fleet/index.json", ".fleet/assignments/eks-x.json", ".fleet/artifacts/m/a.pt", "pack/1/m.py"):
        assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::models/repository/{key}", {})
        assert allowed(policy, "s3:GetObject", f"arn:aws:s3:::models/repository/{key}", {})


def test_listings_are_allowed_only_below_the_prefix():
    """What the evaluator models of IAM for the prefix condition (moto cannot enforce it)."""
    for name in (WRITE, READ):
        policy = k8s_policy(name, "models", "repository")
        bucket = "arn:aws:s3:::models"
        assert allowed(policy, "s3:ListBucket", bucket, {"s3:prefix": "repository/.fleet/assignments/"})
        assert allowed(policy, "s3:ListBucket", bucket, {"s3:prefix": "repository"})
        assert not allowed(policy, "s3:ListBucket", bucket, {"s3:prefix": "other/"})
        assert not allowed(policy, "s3:ListBucket", bucket, {}), "HeadBucket (no prefix) must stay refused"
