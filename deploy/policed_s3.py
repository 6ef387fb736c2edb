"""An S3 server that enforces IAM policies and logs every request: moto's server in its own process.

`PolicedS3` starts `python -m deploy.policed_s3 LOG PORTFILE` with `INITIAL_NO_AUTH_ACTION_COUNT=3`: moto
lets the first three authorised requests through (creating an admin user, its policy and its access key)
and from then on checks every request's signature and the policies of the user whose key signed it
(AccessDenied, 403). Each role of the runbooks becomes an IAM user holding exactly its shipped policy, in
the form moto can enforce (`deploy.iam_policies.moto_policy`); a WSGI wrapper around moto's app writes
each request (method, path, query, copy source, access key, status) to LOG, from which
`deploy.iam_policies.violations` checks what moto cannot (prefix conditions, copy sources, 404s).

Own process, not moto's in-process ThreadedMotoServer: moto's backends and its auth switch are module
globals, shared with any other moto server in the test process (tests/ecs runs one and resets it).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.iam_policies import Policy, S3Call, moto_policy, violations

REGION = "us-east-1"
SETUP_REQUESTS = 3  # create_user, put_user_policy, create_access_key of the admin


@dataclass(frozen=True)
class Role:
    """An IAM user standing for one role (an IRSA role, an ECS task role) with its access key."""

    name: str
    access_key: str
    secret_key: str
    endpoint_url: str

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A process environment whose AWS credentials are this role's (and nothing else's)."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if not k.startswith("AWS_") or k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION, AWS_ENDPOINT_URL_S3=self.endpoint_url,
                   AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        return env

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)


class PolicyViolation(AssertionError):
    """A role made a request that its shipped policy would not allow on AWS."""


class PolicedS3:
    """`with PolicedS3(folder) as s3:` a moto S3 (and IAM) on loopback that enforces IAM from the start."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.log_path = self.folder / "requests.jsonl"
        self.process: subprocess.Popen | None = None
        self.endpoint_url = ""
        self.admin: Role | None = None
        self.roles: dict[str, Role] = {}

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> PolicedS3:
        self.folder.mkdir(parents=True, exist_ok=True)
        port_file = self.folder / "port"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS), "PYTHONSAFEPATH": "1"}
        self._output = open(self.folder / "moto.log", "wb")  # noqa: SIM115  closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "deploy.policed_s3", str(self.log_path),
                                         str(port_file)], env=env, stdout=self._output, stderr=subprocess.STDOUT,
                                        cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {(self.folder / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        with socket.create_connection(("127.0.0.1", port), timeout=10):  # a TCP connect: no request counted
            pass
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.admin = self._create_admin()
        self._check_enforced()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_output", None):
            self._output.close()

    def __enter__(self) -> PolicedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _create_admin(self) -> Role:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint_url, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="operator")
        iam.put_user_policy(UserName="operator", PolicyName="everything", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="operator")["AccessKey"]
        return Role("operator", key["AccessKeyId"], key["SecretAccessKey"], self.endpoint_url)

    def _check_enforced(self) -> None:
        from botocore.exceptions import ClientError

        stranger = Role("stranger", "AKIASTRANGER00000000", "not-a-secret", self.endpoint_url)
        try:
            stranger.client().list_buckets()
        except ClientError:
            return
        raise RuntimeError("moto answered a request signed with an unknown key: IAM enforcement is off "
                           f"(INITIAL_NO_AUTH_ACTION_COUNT={SETUP_REQUESTS} was not honoured)")

    # ---- roles and buckets ---------------------------------------------------------------------
    def role(self, name: str, policy: Policy) -> Role:
        """A new IAM user holding exactly `policy` (in the form moto enforces); `name` gets a unique suffix."""
        iam = self.admin.client("iam")
        user = f"{name}-{uuid.uuid4().hex[:6]}"
        iam.create_user(UserName=user)
        if policy["Statement"]:  # IAM refuses an empty document; a user with no policy may do nothing
            iam.put_user_policy(UserName=user, PolicyName="shipped",
                                PolicyDocument=json.dumps(moto_policy(policy)))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        role = Role(user, key["AccessKeyId"], key["SecretAccessKey"], self.endpoint_url)
        self.roles[user] = role
        return role

    def create_bucket(self, name: str) -> None:
        """As the operator does in the runbooks (`aws s3 mb`)."""
        s3 = self.admin.client()
        if name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=name)

    # ---- the request log -----------------------------------------------------------------------
    def calls(self, role: Role) -> list[S3Call]:
        """Every S3 request signed with `role`'s key, in order."""
        found = []
        for line in self.log_path.read_text().splitlines():
            record = json.loads(line)
            if record["access_key"] == role.access_key and record["service"] == "s3":
                found.append(S3Call(record["method"], record["path"], record["query"], record["status"],
                                    record["access_key"], record["copy_source"]))
        return found

    def check(self, role: Role, policy: Policy, what: str = "") -> list[S3Call]:
        """Raise PolicyViolation naming every request of `role` that AWS would refuse under `policy` (the
        shipped one); return the role's calls otherwise."""
        calls = self.calls(role)
        problems = violations(policy, calls)
        if problems:
            raise PolicyViolation(f"{what or role.name}: {len(problems)} request(s) the policy does not allow:\n  "
                                  + "\n  ".join(problems))
        return calls


class _RequestLog:
    """WSGI middleware: one JSON line per request, written once moto has answered it."""

    def __init__(self, app: Any, path: Path) -> None:
        self.app, self.handle, self.lock = app, open(path, "a", buffering=1), threading.Lock()  # noqa: SIM115

    def __call__(self, environ: dict, start_response: Any) -> Any:
        answered: dict[str, int] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Any:
            answered["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        body = self.app(environ, capture)
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        path, _, query = raw.partition("?")
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        key = authorization.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in authorization else None
        service = authorization.split("Credential=", 1)[1].split("/")[3] if "Credential=" in authorization else None
        record = {"method": environ["REQUEST_METHOD"], "path": path, "query": query,
                  "copy_source": environ.get("HTTP_X_AMZ_COPY_SOURCE"), "access_key": key, "service": service,
                  "status": answered.get("status", 0)}
        with self.lock:
            self.handle.write(json.dumps(record) + "\n")
        return body


def main(log_path: str, port_file: str) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = _RequestLog(DomainDispatcherApplication(create_backend_app), Path(log_path))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    Path(port_file).write_text(str(server.server_port))
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:3])
