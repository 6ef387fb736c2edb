"""S3 is the source of truth for the model repository; servers keep a local copy in step with it.

Why not point Triton at `s3://` directly: Triton downloads a model file by file on every load, with no
cache, so thousands of members would be fetched again at each reload. Instead:

* `upload` writes changed files, then an index (`.fleet/index.json`: path -> sha256, size) last, so a
  reader never sees an index that names files not yet written;
* `sync` diffs that index against the local files, downloads only what changed into a staging folder,
  verifies every object's sha256 and moves complete Triton models into place atomically. An object that
  fails verification is refused and its model keeps its last good version.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)
INDEX_KEY = ".fleet/index.json"
# Written last inside a model, so the pack runtime never reads a members.json naming missing files.
LAST_FILES = ("members.json", "config.pbtxt")


class SyncError(RuntimeError):
    """Sync cannot proceed at all (no index, no access); the message says how to fix it."""


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


@dataclass
class SyncReport:
    downloaded: list[str] = field(default_factory=list)
    bytes: int = 0
    changed_models: set[str] = field(default_factory=set)
    removed_models: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def ok(self) -> bool:
        return not self.refused


def s3_client(endpoint_url: str | None = None):
    """boto3 S3 client: default credential chain and region; any S3 endpoint with `endpoint_url`
    (AWS_ENDPOINT_URL_S3 is honoured by boto3 itself)."""
    return boto3.client("s3", endpoint_url=endpoint_url, config=Config(
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60,
        max_pool_connections=16))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_index(repository: Path) -> dict[str, dict]:
    """path (posix, relative) -> {sha256, size} for every file under a repository."""
    repository = Path(repository)
    index = {}
    for path in sorted(repository.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            index[path.relative_to(repository).as_posix()] = {"sha256": file_sha256(path),
                                                              "size": path.stat().st_size}
    return index


def _model_of(relative: str) -> str:
    return PurePosixPath(relative).parts[0]


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


@retry(retry=retry_if_exception_type((IntegrityError, BotoCoreError, ClientError)),
       stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
def _download_verified(client, location: S3Location, relative: str, expected: str, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    body = client.get_object(Bucket=location.bucket, Key=location.key(relative))["Body"].read()
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise IntegrityError(f"{relative}: sha256 {actual[:12]}... does not match the index's "
                             f"{expected[:12]}... (corrupt or partially written object)")
    target.write_bytes(body)
    return len(body)


def _staging_dir(repository: Path) -> Path:
    # A sibling, so renames stay on one filesystem and Triton never lists it as a model.
    return repository.parent / f".{repository.name}.staging"


def sync(uri: str, repository: Path, client=None,
         on_progress: Callable[[int], None] | None = None) -> SyncReport:
    """Bring `repository` in step with the S3 prefix; see the module docstring for the guarantees."""
    client = client or s3_client()
    location = S3Location.parse(uri)
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    remote = read_remote_index(client, location)
    if remote is None:
        raise SyncError(f"no repository index at {location}/{INDEX_KEY}: run `fleet upload` first")
    local = local_index(repository)
    report = SyncReport()
    wanted = [p for p, meta in remote.items() if local.get(p, {}).get("sha256") != meta["sha256"]]
    staging = _staging_dir(repository) / uuid.uuid4().hex
    staging.mkdir(parents=True)

    def fetch(relative: str) -> tuple[str, str | None, int]:
        try:
            size = _download_verified(client, location, relative, remote[relative]["sha256"],
                                      staging / relative)
            if on_progress:
                on_progress(size)
            return relative, None, size
        except (IntegrityError, BotoCoreError, ClientError, OSError) as error:
            return relative, str(error), 0

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(fetch, wanted))
        for relative, problem, size in results:
            if problem:
                report.refused[relative] = problem
            else:
                report.downloaded.append(relative)
                report.bytes += size
        bad_models = {_model_of(p) for p in report.refused}
        for model in sorted({_model_of(p) for p in report.downloaded} - bad_models):
            _apply_model(repository, staging, model, remote)
            report.changed_models.add(model)
        for model in sorted(bad_models):
            log.error("model %s keeps its last good version: %s", model,
                      "; ".join(f"{p}: {r}" for p, r in report.refused.items() if _model_of(p) == model))
        report.removed_models = _remove_vanished(repository, local, remote, bad_models, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _apply_model(repository: Path, staging: Path, model: str, remote: dict[str, dict]) -> None:
    """Move one model's staged files into the live repository without exposing a half-written model."""
    live, staged = repository / model, staging / model
    if not live.exists():
        os.rename(staged, live)  # a whole new model appears at once
        return
    files = sorted((p for p in staged.rglob("*") if p.is_file()),
                   key=lambda p: (p.name in LAST_FILES, p.as_posix()))
    for path in files:
        target = live / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _remove_vanished(repository: Path, local: dict, remote: dict, keep: set[str],
                     report: SyncReport) -> set[str]:
    removed_models = set()
    remote_models = {_model_of(p) for p in remote}
    for relative in sorted(set(local) - set(remote)):
        model = _model_of(relative)
        if model in keep:
            continue
        if model not in remote_models:
            shutil.rmtree(repository / model, ignore_errors=True)
            removed_models.add(model)
        else:
            (repository / relative).unlink(missing_ok=True)
            report.changed_models.add(model)
    return removed_models
