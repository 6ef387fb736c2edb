"""An embedded PostgreSQL server (the pgserver wheel's binaries) for several control-plane replicas on one
machine: `fleet up --control-planes N` and the tests. It listens on a Unix socket in its data folder only."""
from __future__ import annotations

import uuid
from pathlib import Path


class EmbeddedPostgres:
    """Start (or reuse) the server of one data folder; hand out SQLAlchemy URLs and fresh databases."""

    def __init__(self, pgdata: Path, cleanup_mode: str | None = "stop"):
        try:
            import pgserver
        except ImportError as error:  # pragma: no cover - the dev extra installs it
            raise RuntimeError("several control planes need PostgreSQL: install the 'pgserver' package "
                               "(pip install -e '.[dev]'), or run one control plane on SQLite") from error
        Path(pgdata).mkdir(parents=True, exist_ok=True)
        self.pgdata = Path(pgdata).resolve()
        self.server = pgserver.get_server(self.pgdata, cleanup_mode=cleanup_mode)

    def url(self, database: str = "postgres") -> str:
        return self.server.get_uri(database).replace("postgresql://", "postgresql+psycopg://", 1)

    def create_database(self, name: str | None = None) -> str:
        name = name or f"fleet_{uuid.uuid4().hex[:12]}"
        exists = self.server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self.server.psql(f"CREATE DATABASE {name};")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server now (fast shutdown: open sessions are cut, as in a crash or a failover)."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.server.system_user)

    def start(self) -> None:
        """Start it again on the same socket, so URLs handed out before keep working."""
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()
