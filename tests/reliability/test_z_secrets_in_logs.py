"""Secrets never reach a log or a response: the bearer token, the Triton admin key and the S3 keys.

Named test_z_* so it runs after the other reliability tests and reads every log line they produced
(kills, restarts, reloads, fuzzing); it also provokes the auth failures itself, so it holds alone too.
"""
from __future__ import annotations

import pytest
import requests

from fleet.triton_server import ADMIN_HEADER

from .conftest import ADMIN_KEY, SECRETS, api, url

pytestmark = pytest.mark.slow


def test_no_secret_appears_in_any_log_or_response(stack):
    base = stack["cp"].url
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
    for server, _ in stack["servers"].values():
        if server.process is None or server.process.poll() is not None:
            continue  # its log is still searched below
        for key in ("wrong", ""):
            answers.append(requests.post(f"{server.http_url}/v2/repository/models/nope/load",
                                         headers={ADMIN_HEADER: key}, timeout=30))
        answers.append(requests.post(f"{server.http_url}/v2/repository/models/nope/load",
                                     headers={ADMIN_HEADER: ADMIN_KEY}, timeout=30))  # fails: no such model
        answers.append(requests.get(f"{server.http_url}/v2", timeout=10))
    logs = [stack["cp"].log] + [server.log_path for server, _ in stack["servers"].values()]
    logs.append(stack["root"] / "seaweed" / "weed.log")
    logs += [p for p in (stack["root"] / "work").rglob("*") if p.is_file() and p.suffix in (".pbtxt", ".json")]
    assert all(path.exists() for path in logs[:3])
    leaks = []
    for what, secret in SECRETS.items():
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
