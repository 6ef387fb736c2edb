"""A stand-in for the ECS task metadata endpoint v4, on loopback, for tests and local task runs.

ECS injects `ECS_CONTAINER_METADATA_URI_V4` into every container of a task; `GET <uri>/task` answers the
task's metadata, whose `TaskARN` names the task (`fleet sync --server-from ecs-task-metadata` reads it).
This serves a given document at `<uri>/task` with a given status, and records the paths asked for.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/v4/task-metadata-stand-in"


class TaskMetadataEndpoint:
    """`uri` is what ECS would put in ECS_CONTAINER_METADATA_URI_V4 (for this host's loopback)."""

    def __init__(self, document: object, status: int = 200, host: str = "127.0.0.1") -> None:
        self.document, self.status, self.requests = document, status, []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                endpoint.requests.append(self.path)
                known = self.path == f"{PATH}/task"
                body = json.dumps(endpoint.document if known else {"error": "not found"}).encode()
                self.send_response(endpoint.status if known else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.uri = f"http://{host}:{self.port}{PATH}"

    def uri_from(self, host: str) -> str:
        """The URI as a client reaching this host under another address sees it (e.g. from a container)."""
        return f"http://{host}:{self.port}{PATH}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> TaskMetadataEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
