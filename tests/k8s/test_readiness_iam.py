"""The control plane's readiness probe makes only S3 calls that its IAM policy (k8s/iam) allows.

The reviewed /readyz called head_bucket, which needs s3:ListBucket on the bucket without an s3:prefix;
the policy grants ListBucket only with a prefix condition, so on EKS the pod stayed NotReady forever.
Here /readyz runs against a real S3 server (SeaweedFS, which does not enforce IAM), every S3 request it
sends is recorded, and each is evaluated against the policy the way IAM evaluates Allow statements.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from control_plane.app import create_app
from control_plane.settings import Settings

IAM = Path(__file__).resolve().parents[2] / "k8s" / "iam"
# The IAM action and resource of each S3 operation (AWS's "Actions, resources and condition keys for S3").
ACTIONS = {"ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
           "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject",
           "DeleteObject": "s3:DeleteObject"}


def _request_context(operation: str, params: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    action = ACTIONS[operation]
    if action == "s3:ListBucket":
        return action, f"arn:aws:s3:::{params['Bucket']}", {"s3:prefix": params.get("Prefix", "")}
    return action, f"arn:aws:s3:::{params['Bucket']}/{params['Key']}", {}


def allowed(policy: dict[str, Any], action: str, resource: str, keys: dict[str, str]) -> bool:
    """IAM's answer for identity-policy Allow statements with StringLike/StringEquals conditions."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] != "Allow" or not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        ok = True
        for operator, conditions in statement.get("Condition", {}).items():
            for key, values in conditions.items():
                values = values if isinstance(values, list) else [values]
                if key not in keys:  # a condition on a key the request lacks does not match
                    ok = False
                elif operator == "StringLike":
                    ok &= any(fnmatch.fnmatchcase(keys[key], v) for v in values)
                elif operator == "StringEquals":
                    ok &= keys[key] in values
                else:
                    raise AssertionError(f"condition operator {operator} not modelled here")
        if ok:
            return True
    return False


def _policy(name: str, bucket: str, prefix: str) -> dict[str, Any]:
    text = (IAM / name).read_text().replace("REPOSITORY_BUCKET", bucket).replace("REPOSITORY_PREFIX", prefix)
    return json.loads(text)


def test_the_policy_model_denies_what_iam_denies():
    policy = _policy("repository-write-policy.json", "models", "fleet")
    assert not allowed(policy, *_request_context("HeadBucket", {"Bucket": "models"}))
    assert allowed(policy, *_request_context("ListObjectsV2", {"Bucket": "models", "Prefix": "fleet/"}))
    assert not allowed(policy, *_request_context("ListObjectsV2", {"Bucket": "models", "Prefix": "other/"}))
    assert allowed(policy, *_request_context("GetObject", {"Bucket": "models", "Key": "fleet/a/b"}))


@pytest.mark.parametrize("policy_file", ["repository-write-policy.json"])
def test_readiness_probe_passes_under_the_control_planes_policy(seaweed, s3_uri: str, tmp_path, policy_file,
                                                               monkeypatch):
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params, model, **_):
        calls.append((model.name, dict(params)))

    events = boto3._get_default_session().events  # clients made after this inherit the handler
    events.register("provide-client-params.s3", record)
    try:
        settings = Settings(database_url=f"sqlite:///{tmp_path}/registry.db", repository_uri=s3_uri,
                            s3_endpoint_url=seaweed.endpoint_url, work_dir=tmp_path / "work")
        for key, value in seaweed.environment().items():
            monkeypatch.setenv(key, value)  # undone after the test: later tests talk to other S3s
        app = create_app(settings, start_reconciler=False)
        response = app.test_client().get("/readyz")
    finally:
        events.unregister("provide-client-params.s3", record)
    assert response.status_code == 200, response.get_json()
    policy = _policy(policy_file, settings.bucket, settings.prefix)
    assert calls, "readyz made no S3 call: it does not check the object store"
    for operation, params in calls:
        assert allowed(policy, *_request_context(operation, params)), \
            f"{operation}({params}) is denied by k8s/iam/{policy_file}"


def test_a_servers_sync_makes_only_calls_the_servers_read_policy_allows(seaweed, s3_uri: str, tmp_path):
    """`fleet sync --server` reads its assignment and share, and writes its status: all within the
    server's role (repository-read-policy.json), which cannot touch models or assignments."""
    from control_plane.assignments import publish_assignment
    from model_repository.s3_sync import S3Location, status_key, sync, upload

    source = tmp_path / "source"
    (source / "pack-a" / "1").mkdir(parents=True)
    (source / "pack-a" / "config.pbtxt").write_text('name: "pack-a"\n')
    (source / "pack-a" / "1" / "model.py").write_text("# a pack\n")
    client = seaweed.client()
    upload(source, s3_uri, client)
    publish_assignment(client, Settings(repository_uri=s3_uri), "eks-triton-cpu-0", {"pack-a": 1})
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params, model, **_):
        calls.append((model.name, dict(params)))

    client.meta.events.register("provide-client-params.s3", record)
    report = sync(s3_uri, tmp_path / "repo", client, server="eks-triton-cpu-0", publish_status=True)
    assert report.status_published and (tmp_path / "repo" / "pack-a" / "config.pbtxt").exists()
    location = S3Location.parse(s3_uri)
    policy = _policy("repository-read-policy.json", location.bucket, location.prefix)
    writes = [params["Key"] for operation, params in calls if operation == "PutObject"]
    assert writes == [location.key(status_key("eks-triton-cpu-0"))]
    for operation, params in calls:
        assert allowed(policy, *_request_context(operation, params)), \
            f"{operation}({params}) is denied by k8s/iam/repository-read-policy.json"
    for key in (location.key(".fleet/assignments/eks-triton-cpu-0.json"), location.key("pack-a/1/model.py")):
        assert not allowed(policy, *_request_context("PutObject", {"Bucket": location.bucket, "Key": key}))
