"""Each server's share of the repository, published to S3 where the server's sync reads it.

Why S3 and not an API call: the sync container already reads S3 and needs no token or route to the
control plane; an object per server means one server's assignment is written without touching another's.
Layout: `<repository prefix>/.fleet/assignments/<server>.json` =
`{"server": name, "packs": {pack: generation}, "updated_at": iso}`.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError

from control_plane.settings import Settings
from model_repository.s3_sync import S3Location, SyncError, assignment_key, read_assignment


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


def delete_assignment(s3, settings: Settings, server: str) -> None:
    """Forget a server that left; its sync then stops with a clear 'no assignment' message."""
    location = _location(settings)
    try:
        s3.delete_object(Bucket=location.bucket, Key=location.key(assignment_key(server)))
    except (ClientError, BotoCoreError) as error:
        raise AssignmentError(f"cannot delete the assignment of server '{server}': {error}") from None
