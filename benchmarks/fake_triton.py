"""Simulated Triton servers for the reconciler's scale benchmark ONLY (never for tests of behaviour).

One process serves many fake servers, one loopback port each, answering the HTTP calls the reconciler
makes with the latency a real server shows on this machine class: readiness and metrics in about a
millisecond, the stub probe's inference in a few, a pack load in `--load-ms` (a real Python-backend pack
load with torch takes seconds; the benchmark uses a shorter figure so a sequential baseline finishes, and
says so). The config read back after a load carries generation 1, which the benchmark's packs have.

    python -m benchmarks.fake_triton --servers 10 --ports-file ports.json --load-ms 20
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from model_repository.contract import PROBE_MEMBER, ErrorCode, tagged

# What a live pack runtime answers the stub probe (model_repository.contract).
PROBE_ANSWER = json.dumps({"error": tagged(ErrorCode.UNKNOWN_MEMBER,
                                           f"model '{PROBE_MEMBER}' is not in pack")}).encode()


def handler(load_s: float, fast_s: float, probe_s: float, resident_bytes: int) -> type[BaseHTTPRequestHandler]:
    overrides: dict[tuple[int, str], dict] = {}  # (port, model) -> config loaded with an override

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body leave in two writes: without this, Nagle plus delayed ACKs add ~40 ms each
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            time.sleep(fast_s)
            if self.path in ("/v2/health/ready", "/v2/health/live"):
                return self._send(200, b"")
            if self.path == "/metrics":
                return self._send(200, b"# no traffic\n")
            match = re.fullmatch(r"/v2/models/([^/]+)/config", self.path)
            if match:
                config = overrides.get((self.server.server_address[1], match.group(1))) or {
                    "name": match.group(1), "parameters": {"generation": {"string_value": "1"},
                                                           "max_resident_bytes": {"string_value": str(resident_bytes)}}}
                return self._send(200, json.dumps(config).encode())
            if re.fullmatch(r"/v2/models/[^/]+/ready", self.path):
                return self._send(200, b"")
            return self._send(404, b'{"error":"not found"}')

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            match = re.fullmatch(r"/v2/repository/models/([^/]+)/(load|unload)", self.path)
            if match:
                config = (body or {}).get("parameters", {}).get("config")
                if config:  # Triton serves an override config as its config
                    overrides[(self.server.server_address[1], match.group(1))] = json.loads(config)
                time.sleep(load_s)
                return self._send(200, b"{}")
            if re.fullmatch(r"/v2/models/[^/]+/infer", self.path):
                time.sleep(probe_s)
                return self._send(400, PROBE_ANSWER)
            return self._send(404, b'{"error":"not found"}')

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, required=True)
    parser.add_argument("--ports-file", type=Path, required=True)
    parser.add_argument("--load-ms", type=float, default=20.0)
    parser.add_argument("--fast-ms", type=float, default=1.0)
    parser.add_argument("--probe-ms", type=float, default=3.0)
    parser.add_argument("--resident-bytes", type=int, default=256 * 2**20,
                        help="max_resident_bytes in each pack's config (as built)")
    args = parser.parse_args()
    handler_class = handler(args.load_ms / 1000, args.fast_ms / 1000, args.probe_ms / 1000, args.resident_bytes)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler_class) for _ in range(args.servers)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = args.ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps([s.server_address[1] for s in servers]))
    tmp.replace(args.ports_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
