"""Secrets never reach a log or a response: the bearer token, the Triton admin key and the S3 keys.

It provokes what it must see itself (refused tokens and keys, a failed load) and reads every log line the
session's stack has written by then: run with the other reliability modules it also covers their kills,
restarts, reloads and fuzzing, and alone it still holds.
"""
from __future__ import annotations

import json

import pytest
import requests

from model_repository.triton_admin import TritonAdmin

from .conftest import ADMIN_KEY, SECRETS, api, url

pytestmark = pytest.mark.slow


def test_no_secret_appears_in_any_log_or_response(stack):
    base = stack.url
    answers = [
        api(stack, None).get(url(stack, "/models")),
        api(stack, "wrong").get(url(stack, "/models")),
        api(stack, SECRETS["triton admin key"]).get(url(stack, "/servers")),  # another secret as the token
        api(stack).get(url(stack, "/servers")),
        api(stack).get(url(stack, "/placements")),
        api(stack).post(url(stack, "/models/from-s3"), json={"name": "x", "s3_uri": "s3://elsewhere/x"}),
        requests.get(f"{base}/openapi.json", timeout=10),
        requests.get(f"{base}/readyz", timeout=10),
        requests.get(f"{base}/docs", timeout=10),
    ]
    metadata = []  # what each server says about itself (GET /v2)
    for server in stack.servers.values():
        if server.process is None or server.process.poll() is not None:
            continue  # its log is still searched below
        for key in ("wrong", "", ADMIN_KEY):  # the last fails too: no such model
            answers.append(TritonAdmin(server.http_url, key).load("nope", timeout_s=30).response)
        metadata.append(json.dumps(TritonAdmin(server.http_url).server_metadata()))
    logs = [stack.control_plane.log] + [server.log_path for server in stack.servers.values()]
    logs.append(stack.s3.data_dir / "weed.log")
    logs += [p for p in stack.control_plane.work_dir.rglob("*") if p.is_file() and p.suffix in (".pbtxt", ".json")]
    assert all(path.exists() for path in logs[:3])
    leaks = []
    for what, secret in SECRETS.items():
        leaks += [f"{what} in a server's metadata" for text in metadata if secret in text]
        for response in answers:
            if secret in response.text or any(secret in v for v in response.headers.values()):
                leaks.append(f"{what} in the response of {response.request.method} {response.url}")
        for path in logs:
            if secret.encode() in path.read_bytes():
                leaks.append(f"{what} in {path}")
    assert leaks == []
    sizes = {path.name: path.stat().st_size for path in logs[:4]}
    print(f"\nsecrets: 4 secrets absent from {len(answers)} responses and {len(logs)} files "
          f"(log sizes {sizes})")
