"""The local stack on real parts, built one way for `fleet up`, the benchmarks and the tests: SeaweedFS (S3 on
loopback), N tritonservers, M control planes (`fleet control-plane serve` under waitress) and the registry's
database (SQLite; an embedded PostgreSQL when several control planes share one, or when asked).

Layout under `root`, which is what `fleet up` leaves in .fleet/:

    s3/                          SeaweedFS data and weed.log
    servers/NAME/repository      each tritonserver's repository (FLEET_REPOSITORY_ROOT is servers/)
    servers/NAME/tritonserver.log
    control-plane[-k]/           each control plane's work folder;  control-plane[-k].log its log
    registry.db  or  postgres/   the registry's database

The control planes' environment is rendered from fleet/settings.py (`ControlPlaneSettings.environment()`),
the one place FLEET_* variables are defined. With `record`, every process is written to stack.json as it
starts, so `fleet down` (`down`) stops them after the process that built the stack is gone.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType

import requests

from fleet.client import register, signature_of
from fleet.postgres import EmbeddedPostgres
from fleet.processes import stop_group
from fleet.seaweedfs import SeaweedS3
from fleet.settings import ControlPlaneSettings, ObservabilitySettings
from fleet.triton_server import TritonServer, free_port
from fleet.waiting import wait_for

STATE_DIR = Path(".fleet")
STACK_FILE = STATE_DIR / "stack.json"


class StackError(RuntimeError):
    """A part of the stack did not start or answer; the message says which and where its log is."""


@dataclass
class ControlPlane:
    """One control-plane process (`python -m fleet.cli control-plane serve`) on 127.0.0.1."""

    url: str
    env: dict[str, str]
    log: Path
    token: str | None = None
    process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def work_dir(self) -> Path:
        return Path(self.env[ControlPlaneSettings.env_name("work_dir")])

    @property
    def metrics_url(self) -> str | None:
        """Its /metrics without a token, when it was given a metrics port (StackSpec.metrics_port)."""
        port = self.env.get(ObservabilitySettings.env_name("metrics_port"))
        return f"http://127.0.0.1:{port}/metrics" if port else None

    def start(self, wait: bool = True, timeout_s: float = 120.0) -> ControlPlane:
        """Start the process (again, after a stop); with `wait`, return once it answers /readyz."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli", "control-plane", "serve", "--port", str(self.port)],
                env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        return self.wait_ready(timeout_s) if wait else self

    def wait_ready(self, timeout_s: float = 120.0) -> ControlPlane:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(f"the control plane at {self.url} exited with {self.process.returncode}; "
                                 f"last log lines:\n{self.log_tail()}")
            return self.ready()

        try:
            wait_for(ready, timeout_s, interval_s=0.3, what=f"control plane {self.url} ready")
        except AssertionError as error:
            raise StackError(f"{error}; last log lines:\n{self.log_tail()}") from None
        return self

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def leads(self) -> bool:
        """Whether this replica says it leads the reconciler (GET /readyz)."""
        try:
            return bool(requests.get(f"{self.url}/readyz", timeout=5).json().get("leader"))
        except (requests.RequestException, ValueError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def api(self, token: str | None | EllipsisType = ...) -> requests.Session:
        """A session that sends `token` (by default the stack's token; None: no token)."""
        token = self.token if token is ... else token
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        return session

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None:
            stop_group(self.process, timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL the control plane and its validation workers (its own process group)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class StackSpec:
    """What to start. `settings`: further ControlPlaneSettings fields for every control plane (e.g.
    reconcile_interval_s=0.5); `observability`: ObservabilitySettings fields (a metrics port is given one
    free port per control plane with metrics_port=True). `database`: sqlite, postgresql or a SQLAlchemy URL."""

    root: Path
    servers: tuple[str, ...] = ("triton-a", "triton-b")
    control_planes: int = 1
    database: str = "sqlite"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    admin_key: str | None = field(default_factory=lambda: secrets.token_urlsafe(24))
    bucket: str = "fleet-models"
    prefix: str = "repository"
    settings: Mapping[str, object] = field(default_factory=dict)
    observability: Mapping[str, object] = field(default_factory=dict)
    metrics_port: bool = False
    triton_args: tuple[str, ...] = ()
    s3_keys: tuple[str, str] | None = None  # (access key, secret key) of SeaweedFS's one identity
    record: bool = False  # write every process to root/stack.json (fleet up / fleet down)


class Stack:
    """Start with `start()` (or `with`); `s3` and `postgres` may be given (a test session's shared ones),
    and are then neither started nor stopped here."""

    def __init__(self, spec: StackSpec, s3: SeaweedS3 | None = None, postgres: EmbeddedPostgres | None = None):
        self.spec, self.root = spec, Path(spec.root).resolve()
        self._own_s3, self.s3 = s3 is None, s3
        self._own_postgres, self.postgres = postgres is None, postgres
        self.servers: dict[str, TritonServer] = {}
        self.control_planes: list[ControlPlane] = []
        self.database_url = ""
        self.settings: ControlPlaneSettings | None = None
        self.record: dict = {"pids": {}}
        self.started = False

    # ---- building ------------------------------------------------------------------------------------
    def start(self, progress: Callable[[str], None] = lambda step: None) -> Stack:
        """Start every part in order (S3, servers, database, control planes), telling `progress` each step;
        returns once every control plane answers /readyz. On a failure what started is stopped (unless
        recorded: `fleet down` stops it then)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.started = True
        try:
            progress("starting SeaweedFS (S3 on loopback)")
            self.start_s3()
            progress(f"starting {len(self.spec.servers)} tritonservers (explicit model control, repository API "
                     "behind a key)")
            for name in self.spec.servers:
                self.start_server(name)
            if not self.spec.control_planes:  # the caller runs its own (in process)
                return self
            several = self.spec.control_planes > 1 or self.spec.database == "postgresql"
            progress(f"starting {self.spec.control_planes} control plane(s) under waitress"
                     + (" on an embedded PostgreSQL" if several and "://" not in self.spec.database else ""))
            self.database_url = self._database()
            self.settings = ControlPlaneSettings.from_env(
                api_token=self.spec.token, triton_admin_key=self.spec.admin_key, database_url=self.database_url,
                repository_uri=f"s3://{self.spec.bucket}/{self.spec.prefix}", s3_endpoint_url=self.s3.endpoint_url,
                repository_root=self.root / "servers", **self.spec.settings)
            # The first one migrates the database before the others start: replicas migrating one fresh
            # database at once race on alembic's own table (as a StatefulSet's ordered start avoids).
            for k in range(self.spec.control_planes):
                plane = self._control_plane(k).start(wait=False)
                self.control_planes.append(plane)
                self._note(plane.log.stem, plane.process.pid)
                if k == 0:
                    plane.wait_ready()
            for plane in self.control_planes[1:]:
                plane.wait_ready()
        except BaseException:
            if not self.spec.record:
                self.stop()
            raise
        return self

    def start_s3(self) -> SeaweedS3:
        if self.s3 is None:
            keys = dict(zip(("access_key", "secret_key"), self.spec.s3_keys, strict=True)) if self.spec.s3_keys else {}
            self.s3 = SeaweedS3(self.root / "s3", **keys).start()
            self._note("seaweedfs", self.s3.process.pid)
        self.s3.create_bucket(self.spec.bucket)
        return self.s3

    def start_server(self, name: str) -> TritonServer:
        repository = self.root / "servers" / name / "repository"
        repository.mkdir(parents=True, exist_ok=True)
        server = TritonServer(repository, admin_key=self.spec.admin_key, extra_args=self.spec.triton_args,
                              log_path=repository.parent / "tritonserver.log").start()
        self.servers[name] = server
        self._note(name, server.process.pid)
        return server

    def _database(self) -> str:
        database = self.spec.database
        if database == "sqlite" and self.spec.control_planes == 1:
            return f"sqlite:///{self.root / 'registry.db'}"
        if database in ("sqlite", "postgresql"):  # several control planes share one PostgreSQL
            if self.postgres is None:
                self.postgres = EmbeddedPostgres(self.root / "postgres",
                                                 cleanup_mode=None if self.spec.record else "stop")
                self.record["postgres_data"] = str(self.postgres.pgdata)
                self._save()
            return self.postgres.create_database()
        return database

    def _control_plane(self, k: int) -> ControlPlane:
        suffix = "" if self.spec.control_planes == 1 else f"-{k}"
        url = f"http://127.0.0.1:{free_port()}"
        settings = self.settings.model_copy(update={"work_dir": self.root / f"control-plane{suffix}"})
        observability = dict(self.spec.observability)
        if self.spec.metrics_port:
            observability["metrics_port"] = free_port()
        env = {**os.environ, **self.s3.environment(), **settings.environment(),
               **ObservabilitySettings(**observability).environment(),
               "PYTHONSAFEPATH": "1"}  # keeps the repository root off sys.path (see Makefile)
        return ControlPlane(url, env, self.root / f"control-plane{suffix}.log", self.spec.token)

    def _note(self, name: str, pid: int) -> None:
        self.record["pids"][name] = pid
        self._save()

    def note(self, **fields: object) -> None:
        """Add fields to the record (stack.json) that `fleet down` and `fleet server` read."""
        self.record.update(fields)
        self._save()

    def _save(self) -> None:
        if self.spec.record:
            (self.root / STACK_FILE.name).write_text(json.dumps(self.record, indent=1))

    def stop(self) -> None:
        for plane in self.control_planes:
            plane.stop()
        for server in self.servers.values():
            server.stop(timeout_s=3)  # a graceful exit is not under test; a request left hanging would hold it
        if self._own_s3 and self.s3 is not None:
            self.s3.stop()
        if self._own_postgres and self.postgres is not None:
            self.postgres.cleanup()

    def __enter__(self) -> Stack:
        """`with Stack(spec) as stack` starts it; `with stack.start():` uses the one started."""
        return self if self.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- using it ------------------------------------------------------------------------------------
    @property
    def control_plane(self) -> ControlPlane:
        return self.control_planes[0]

    @property
    def url(self) -> str:
        return self.control_plane.url

    def api(self, token: str | None | EllipsisType = ...) -> requests.Session:
        return self.control_plane.api(token)

    def register_servers(self, capacity_bytes: int = 8 * 2**30, metrics: bool = False, names=None,
                         family: str = "cpu") -> None:
        """Register the local servers through the API (with their repository, which the control plane syncs;
        with `metrics`, their metrics URL, so the reconciler reads traffic and tiers from them)."""
        api = self.api()
        for name in names or self.servers:
            server = self.servers[name]
            body = {"name": name, "family": family, "http_url": server.http_url, "grpc_url": server.grpc_url,
                    "capacity_bytes": capacity_bytes, "repository_path": str(server.repository)}
            if metrics:
                body["metrics_url"] = server.metrics_url
            response = api.post(f"{self.url}/api/v1/servers", json=body, timeout=60)
            if response.status_code != 201:
                raise StackError(f"registering server {name} failed: HTTP {response.status_code} {response.text}")

    def register(self, models_dir: Path, entry, name: str | None = None, data: bytes | None = None,
                 signature: Mapping | str | None = None, token: str | None | EllipsisType = ...,
                 **options) -> requests.Response:
        """Register a generated model (a manifest entry) by upload (fleet.client.register), under `name`
        (default: its id), with `data` instead of its file and `signature` instead of its own if given."""
        artifact = data if data is not None else Path(models_dir) / entry.file
        return register(self.url, entry.id if name is None else name, artifact,
                        signature_of(entry) if signature is None else signature,
                        token=self.spec.token if token is ... else token, **options)

    def register_models(self, models_dir: Path, count: int, architecture: str = "mlp") -> list:
        """Register the first `count` generated models of an architecture; returns their manifest entries."""
        return register_generated(self.url, self.spec.token, models_dir, count, architecture)

    def model(self, name: str) -> dict | None:
        response = self.api().get(f"{self.url}/api/v1/models/{name}", timeout=30)
        return response.json() if response.status_code == 200 else None

    def servable(self, name: str) -> dict | None:
        body = self.model(name)
        return body if body and body["status"] == "servable" else None


def register_generated(url: str, token: str | None, models_dir: Path, count: int, architecture: str = "mlp") -> list:
    """Register the first `count` models of an architecture from a `fleet generate` folder at the control plane
    `url`; returns their manifest entries (raises StackError naming the first refused one)."""
    from model_repository.manifest import Manifest

    entries = [m for m in Manifest.read(models_dir).models if m.architecture == architecture][:count]
    for entry in entries:
        response = register(url, entry.id, Path(models_dir) / entry.file, signature_of(entry), token=token)
        if response.status_code != 201:
            raise StackError(f"registering {entry.id} failed: HTTP {response.status_code} {response.text}")
    return entries


def down(state_dir: Path = STATE_DIR) -> list[str]:
    """Stop everything a recorded stack (`fleet up`) started; returns what was stopped."""
    stack_file = state_dir / STACK_FILE.name
    if not stack_file.exists():
        return []
    stack = json.loads(stack_file.read_text())
    stopped = []
    for name, pid in reversed(list(stack["pids"].items())):
        _stop_pid_group(pid)
        stopped.append(name)
    if stack.get("postgres_data"):  # the embedded PostgreSQL of --control-planes N (not a process group)
        EmbeddedPostgres(Path(stack["postgres_data"]), cleanup_mode=None).stop()
        stopped.append("postgresql")
    stack_file.unlink()
    return stopped


def stop_server(name: str, state_dir: Path = STATE_DIR) -> bool:
    """Stop one tritonserver of the recorded stack (after it was drained); False if it was not running."""
    stack_file = state_dir / STACK_FILE.name
    if not stack_file.exists():
        return False
    stack = json.loads(stack_file.read_text())
    pid = stack["pids"].pop(name, None)
    if pid is None:
        return False
    _stop_pid_group(pid)
    stack_file.write_text(json.dumps(stack, indent=1))
    return True


def _stop_pid_group(pid: int, timeout_s: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
