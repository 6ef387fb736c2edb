"""Puts what `fleet compile` added back into the repository the control plane publishes, without racing it.

Why not `fleet upload`: it replaces the whole index and deletes what the local copy lacks, so run beside a
control plane that publishes packs it could drop a pack published in between. This writes only the
compiled packs: for each, the new `members/<id>.inf2.pt` files, then `members.json` with a conditional
write (S3 If-Match on the ETag it just checked), then the index entries of those files with a conditional
write too, retried on conflict (the control plane's writes use the same conditions). A pack whose
members.json changed on S3 since it was synced (the control plane rebuilt it) is left alone and reported:
run the compile again. The control plane does not carry inf2 artifacts over when it rebuilds a pack, so
after registrations the compile runs again (docs/eks.md, step 7c).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import ClientError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from model_repository.s3_sync import INDEX_KEY, S3Location, file_sha256, verified_index_path

MEMBERS = "1/members.json"
CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict")


class IndexConflict(RuntimeError):
    pass


@dataclass
class PublishReport:
    published: list[str] = field(default_factory=list)  # packs whose compiled members are now on S3
    skipped: dict[str, str] = field(default_factory=dict)  # pack -> why it was left alone
    bytes: int = 0


def _conflict(error: ClientError) -> bool:
    return error.response["Error"]["Code"] in CONFLICT_CODES


def _read_index(client, location: S3Location) -> tuple[dict[str, dict], str]:
    response = client.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))
    return json.loads(response["Body"].read())["files"], response["ETag"]


@retry(retry=retry_if_exception_type(IndexConflict), stop=stop_after_attempt(8),
       wait=wait_random_exponential(multiplier=0.05, max=1), reraise=True)
def _merge(client, location: S3Location, entries: dict[str, dict]) -> None:
    files, etag = _read_index(client, location)
    files.update(entries)
    try:
        client.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY), IfMatch=etag,
                          Body=json.dumps({"format": 1, "files": files}, sort_keys=True).encode())
    except ClientError as error:
        if _conflict(error):
            raise IndexConflict("the index changed meanwhile") from None
        raise


def publish_compiled(repository: Path, uri: str, client) -> PublishReport:
    """Publish every pack whose local members.json differs from the one `fleet sync` verified."""
    repository = Path(repository)
    location = S3Location.parse(uri)
    synced = json.loads(verified_index_path(repository).read_text())
    remote, _ = _read_index(client, location)
    report = PublishReport()
    for members_file in sorted(repository.glob(f"*/{MEMBERS}")):
        pack = members_file.parent.parent.name
        key = f"{pack}/{MEMBERS}"
        local_sha = file_sha256(members_file)
        if key not in synced or synced[key]["sha256"] == local_sha:
            continue  # not synced here, or nothing compiled
        if remote.get(key, {}).get("sha256") != synced[key]["sha256"]:
            report.skipped[pack] = "the control plane changed this pack after it was synced; compile again"
            continue
        head = client.head_object(Bucket=location.bucket, Key=location.key(key))
        entries = {}
        for path in sorted((repository / pack).rglob("*")):
            relative = path.relative_to(repository).as_posix()
            if not path.is_file() or relative == key:
                continue
            sha = file_sha256(path)
            if remote.get(relative, {}).get("sha256") != sha:
                client.upload_file(str(path), location.bucket, location.key(relative),
                                   ExtraArgs={"Metadata": {"sha256": sha}})
                entries[relative] = {"sha256": sha, "size": path.stat().st_size}
                report.bytes += path.stat().st_size
        try:
            client.put_object(Bucket=location.bucket, Key=location.key(key), Body=members_file.read_bytes(),
                              IfMatch=head["ETag"], Metadata={"sha256": local_sha})
        except ClientError as error:
            if not _conflict(error):
                raise
            report.skipped[pack] = "the control plane rewrote this pack while it was published; compile again"
            continue
        entries[key] = {"sha256": local_sha, "size": members_file.stat().st_size}
        _merge(client, location, entries)
        report.published.append(pack)
    return report
