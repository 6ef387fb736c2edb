"""Each server's share of the repository, published to S3 where the server's sync reads it.

Why S3 and not an API call: the sync container already reads S3 and needs no token or route to the
control plane; an object per server means one server's assignment is written without touching another's.
Layout: `<repository prefix>/.fleet/assignments/<server>.json` =
`{"server": name, "packs": {pack: generation}, "updated_at": iso}`, written by the control plane; and
`<repository prefix>/.fleet/status/<server>.json`, written back by that server's sync after each pass
(`fleet sync --server`: the document of `<repo>.sync-status.json`, model_repository/s3_sync.py). The
control plane reads the latter as the server's disk tier (`disk_tier`), so on EKS and ECS, where the
file sits in the pod's or task's volume, the disk is shown and exported like the other tiers.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from control_plane.settings import Settings
from model_repository.s3_sync import (
    ASSIGNMENTS_PREFIX,
    S3Location,
    SyncError,
    assignment_key,
    read_assignment,
    status_key,
)

DISK_TIER = "disk"


class AssignmentError(RuntimeError):
    """An assignment could not be written or read; the message says where and why."""


def _location(settings: Settings) -> S3Location:
    return S3Location.parse(settings.repository_uri)


def publish_assignment(s3, settings: Settings, server: str, packs: dict[str, int]) -> dict:
    """Write (replace) one server's assignment; returns the document written."""
    location = _location(settings)
    document = {"server": server, "packs": {str(p): int(g) for p, g in sorted(packs.items())},
                "updated_at": datetime.now(UTC).isoformat()}
    try:
        s3.put_object(Bucket=location.bucket, Key=location.key(assignment_key(server)),
                      Body=json.dumps(document, sort_keys=True).encode(), ContentType="application/json")
    except (ClientError, BotoCoreError) as error:
        raise AssignmentError(f"cannot write the assignment of server '{server}' to {location}/"
                              f"{assignment_key(server)}: {error}") from None
    return document


def read_server_assignment(s3, settings: Settings, server: str) -> dict | None:
    """The assignment a server's sync would read now, or None if none was published."""
    try:
        return read_assignment(s3, _location(settings), server)
    except SyncError as error:
        raise AssignmentError(str(error)) from None


def assigned_servers(s3, settings: Settings) -> set[str]:
    """Every server that has an assignment in S3, registered or not (one LIST per 1,000 servers)."""
    location = _location(settings)
    folder = location.key(ASSIGNMENTS_PREFIX) + "/"
    names: set[str] = set()
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                name = item["Key"][len(folder):]
                if name.endswith(".json") and "/" not in name:
                    names.add(name[:-len(".json")])
    except (ClientError, BotoCoreError) as error:
        raise AssignmentError(f"cannot list the assignments under s3://{location.bucket}/{folder}: {error}") from None
    return names


def forget_server(s3, settings: Settings, server: str) -> None:
    """Delete what S3 holds for a server that left: its assignment (a sync still running there then stops
    with a clear 'no assignment' message) and its published sync status. Deleting a missing key is no error."""
    location = _location(settings)
    try:
        for key in (assignment_key(server), status_key(server)):
            s3.delete_object(Bucket=location.bucket, Key=location.key(key))
    except (ClientError, BotoCoreError) as error:
        raise AssignmentError(f"cannot delete the assignment and status of server '{server}': {error}") from None


def read_sync_status(s3, settings: Settings, server: str) -> dict | None:
    """The status a server's sync last published (`.fleet/status/<server>.json`), or None if there is none
    (the server has not synced yet, or its sync does not publish: not an error)."""
    location = _location(settings)
    key = location.key(status_key(server))
    try:
        body = s3.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise AssignmentError(f"cannot read the sync status of server '{server}' at s3://{location.bucket}/{key}: "
                              f"{error}") from None
    except BotoCoreError as error:
        raise AssignmentError(f"cannot read the sync status of server '{server}': {error}") from None
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise AssignmentError(f"the sync status s3://{location.bucket}/{key} is not a JSON object; it is written "
                              "by `fleet sync --server` (model_repository/s3_sync.py publish_sync_status)")
    return document


def _number(value: Any, kind: type = int) -> Any:
    try:
        return kind(value) if value is not None else kind(0)
    except (TypeError, ValueError):
        return kind(0)


def disk_tier(status: dict) -> dict:
    """A sync status document as the disk tier, in the shape of the other tiers (schemas.TierStateOut).

    Members are packs (the disk holds whole packs); hits, misses, evictions and fill seconds are the
    sync's totals since its state file was created (they survive restarts of the sync, not a new volume);
    loads are the packs downloaded, i.e. the misses. A budget of -1 means the whole repository is synced.
    """
    totals = status.get("totals") if isinstance(status.get("totals"), dict) else {}
    budget = status.get("budget_bytes")
    return {"resident_bytes": _number(status.get("resident_bytes")),
            "resident_members": _number(status.get("resident_packs")),
            "budget_bytes": _number(budget) if budget is not None else -1,
            "hits": _number(totals.get("hits")), "misses": _number(totals.get("misses")),
            "evictions": _number(totals.get("evictions")), "loads": _number(totals.get("misses")),
            "load_seconds": round(_number(totals.get("fill_seconds"), float), 3)}


def with_disk_tier(usage: dict | None, status: dict) -> dict:
    """A server's stored tier_usage with its disk tier replaced from a sync status; other tiers kept."""
    merged = dict(usage or {"scraped_at": None})
    merged["tiers"] = {**(merged.get("tiers") or {}), DISK_TIER: disk_tier(status)}
    synced = status.get("updated_at")
    merged["disk_synced_at"] = datetime.fromtimestamp(float(synced), UTC).isoformat() \
        if isinstance(synced, int | float) else None
    return merged


def keep_disk_tier(previous: dict | None, scraped: dict) -> dict:
    """The Triton scrape's tier_usage (host, gpu, neuron), keeping the disk tier the sync reported."""
    previous = previous or {}
    disk = (previous.get("tiers") or {}).get(DISK_TIER)
    if disk is None:
        return scraped
    return {**scraped, "tiers": {**scraped.get("tiers", {}), DISK_TIER: disk},
            "disk_synced_at": previous.get("disk_synced_at")}
