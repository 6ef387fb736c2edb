"""HTTP side of artifact uploads: one body limit for Flask and waitress, and files staged as they arrive.

Why here: waitress buffers a request body before Flask sees it and refuses one whose Content-Length is
over its own limit before reading it, with a plain-text answer. So both servers get the same limit
(`body_limit`), and waitress's refusal is rendered as the API's JSON error, naming the setting. Flask's
request class writes each uploaded file straight into a hashed temporary file in the staging folder, so
the upload is read once and never held in memory.
"""
from __future__ import annotations

import json

from flask import Request, current_app
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge

from control_plane.settings import Settings
from control_plane.staging import HashingTempFile

# Room for the multipart framing and the form's other fields (name, signature JSON) around the artifact.
FORM_OVERHEAD_BYTES = 2**20


def body_limit(settings: Settings) -> int:
    """The largest request body either server accepts: the artifact limit plus the form around it."""
    return settings.max_upload_bytes + FORM_OVERHEAD_BYTES


def too_large_message(settings: Settings) -> str:
    return (f"upload too large: artifacts may be at most {settings.max_upload_bytes} bytes (setting "
            "max_upload_bytes, FLEET_MAX_UPLOAD_BYTES); raise it or upload a smaller model")


class StagingRequest(Request):
    """A Flask request whose uploaded files go to hashed temp files under the configured staging folder."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return HashingTempFile(current_app.extensions["fleet"].settings.staging_dir)


def channel_class(settings: Settings) -> type[HTTPChannel]:
    """A waitress channel whose 413 (Content-Length over the limit, refused before the body is read) is
    the API's JSON error instead of waitress's plain text."""
    body = json.dumps({"error": {"code": "payload_too_large", "message": too_large_message(settings),
                                 "details": {"limit_bytes": settings.max_upload_bytes}}}).encode()

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            if not isinstance(self.request.error, RequestEntityTooLarge):
                super().execute()
                return
            self.status = "413 Request Entity Too Large"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class FleetChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return FleetChannel
