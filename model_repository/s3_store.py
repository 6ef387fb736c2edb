"""The model repository in S3: its layout (the index, each server's assignment and sync status under
.fleet/), the client, and the two moves across it: `upload` (changed files, the index last) and one verified
download (streamed to disk, hashed on the way). model_repository/s3_sync.py builds a server's copy from it."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import RetriesExceededError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from model_repository.local_copy import local_index

log = logging.getLogger(__name__)


INDEX_KEY = ".fleet/index.json"
ASSIGNMENTS_PREFIX = ".fleet/assignments"
STATUS_PREFIX = ".fleet/status"  # each server's last sync status, read by the control plane (disk tier)
# Objects stream to disk in chunks of this size, hashed on the way: one chunk in memory per download.
STREAM_CHUNK_BYTES = 2**20
TRANSFER_ERRORS = (BotoCoreError, ClientError, RetriesExceededError)


class SyncError(RuntimeError):
    """Sync cannot proceed at all (no index, no access); the message says how to fix it."""


class NoAssignment(SyncError):
    """The server has no assignment yet (not registered, or nothing placed on it)."""


class IntegrityError(RuntimeError):
    """An object's bytes do not match the sha256 the index declares."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SyncError(f"'{uri}' is not an S3 URI: use s3://BUCKET/PREFIX")
        return cls(parsed.netloc, parsed.path.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def s3_client(endpoint_url: str | None = None):
    """boto3 S3 client: default credential chain and region; any S3 endpoint with `endpoint_url`
    (AWS_ENDPOINT_URL_S3 is honoured by boto3 itself)."""
    return boto3.client("s3", endpoint_url=endpoint_url, config=Config(
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60,
        max_pool_connections=16))


def read_remote_index(client, location: S3Location) -> dict[str, dict] | None:
    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise _explain(error, location) from None
    except BotoCoreError as error:  # connection refused, DNS, timeouts: after botocore's own retries
        raise SyncError(f"cannot reach S3 for {location} at {client.meta.endpoint_url} ({error}); nothing was "
                        "changed locally: check the endpoint (--endpoint-url) and the network, then sync again") \
            from None
    return json.loads(body)["files"]


def assignment_key(server: str) -> str:
    return f"{ASSIGNMENTS_PREFIX}/{server}.json"


def status_key(server: str) -> str:
    """Where a server's sync publishes its status, next to its assignment (control_plane/assignments.py)."""
    return f"{STATUS_PREFIX}/{server}.json"


def publish_sync_status(client, location: S3Location, server: str, document: dict) -> bool:
    """Write a sync's status document to S3 for the control plane; True if written.

    Never raises for S3 trouble: the status is a report about the sync, and a role without write access
    to `.fleet/status/` (or S3 briefly away) must cost the report, never the models on disk.
    """
    key = location.key(status_key(server))
    try:
        client.put_object(Bucket=location.bucket, Key=key, Body=json.dumps(document, sort_keys=True).encode(),
                          ContentType="application/json")
    except TRANSFER_ERRORS as error:
        log.warning("cannot publish the sync status of server %s to s3://%s/%s (%s); the sync itself is "
                    "unaffected: grant s3:PutObject on that key (k8s/iam/repository-read-policy.json, the ECS "
                    "task role)", server, location.bucket, key, error)
        return False
    return True


def read_assignment(client, location: S3Location, server: str) -> dict | None:
    """A server's assignment ({"server", "packs": {pack: generation}, "updated_at"}), or None if none."""
    try:
        body = client.get_object(Bucket=location.bucket, Key=location.key(assignment_key(server)))["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise _explain(error, location) from None
    except BotoCoreError as error:
        raise SyncError(f"cannot reach S3 for {location} at {client.meta.endpoint_url} ({error}); nothing was "
                        "changed locally: check the endpoint (--endpoint-url) and the network, then sync again") \
            from None
    document = json.loads(body)
    if not isinstance(document.get("packs"), dict):
        raise SyncError(f"the assignment {location}/{assignment_key(server)} has no 'packs' object; it is "
                        "written by the control plane (control_plane.assignments.publish_assignment)")
    return document


def _explain(error: ClientError, location: S3Location) -> SyncError:
    code = error.response["Error"]["Code"]
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return SyncError(f"access to {location} denied ({code}): check the credentials and that the "
                         "role may read (sync) or write (upload) this prefix")
    if code in ("NoSuchBucket",):
        return SyncError(f"bucket '{location.bucket}' does not exist: create it or fix the URI")
    return SyncError(f"S3 error at {location}: {code}: {error.response['Error'].get('Message', '')}")


def upload(repository: Path, uri: str, client=None,
           on_progress: Callable[[int], None] | None = None) -> list[str]:
    """Upload what changed, delete what vanished, write the index last. Returns uploaded paths."""
    client = client or s3_client()
    location = S3Location.parse(uri)
    local = local_index(repository)
    remote = read_remote_index(client, location) or {}
    changed = [p for p, meta in local.items() if remote.get(p, {}).get("sha256") != meta["sha256"]]

    def put(relative: str) -> None:
        client.upload_file(str(Path(repository) / relative), location.bucket, location.key(relative),
                           ExtraArgs={"Metadata": {"sha256": local[relative]["sha256"]}})
        if on_progress:
            on_progress(local[relative]["size"])

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, changed))
        client.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY),
                          Body=json.dumps({"format": 1, "files": local}, sort_keys=True).encode())
        for relative in sorted(set(remote) - set(local)):
            client.delete_object(Bucket=location.bucket, Key=location.key(relative))
    except ClientError as error:
        raise _explain(error, location) from None
    return changed


@retry(retry=retry_if_exception_type((IntegrityError, *TRANSFER_ERRORS)),
       stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
def _download_verified(client, location: S3Location, relative: str, expected: str, target: Path) -> int:
    """Stream the object to `target` in 1 MiB chunks, hashing as they are written: memory stays at one
    chunk per concurrent download, whatever the object's size, and the bytes are read once. (boto3's
    managed download buffers parts: with a non-seekable hashing writer it queued out-of-order parts, a
    417 MiB member peaking at ~400 MiB of RSS; even download_file held ~140 MiB per object.)"""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    body = client.get_object(Bucket=location.bucket, Key=location.key(relative))["Body"]
    with open(target, "wb") as handle:
        for chunk in body.iter_chunks(STREAM_CHUNK_BYTES):
            digest.update(chunk)
            handle.write(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        target.unlink(missing_ok=True)
        raise IntegrityError(f"{relative}: sha256 {actual[:12]}... does not match the index's "
                             f"{expected[:12]}... (corrupt or partially written object)")
    return target.stat().st_size
