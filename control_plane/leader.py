"""Which control-plane replica runs the reconciler: exactly one at a time.

On PostgreSQL the leader is the replica holding a session advisory lock (`pg_try_advisory_lock`) on a
connection of its own, outside the request pool. PostgreSQL frees that lock the moment the connection
ends, so when the leader dies (SIGKILL included: the kernel closes its socket) a follower's next attempt,
at most `leader_heartbeat_s` later, takes over. The leader checks its connection on the same beat; a check
that fails (database restarted, network lost) drops leadership at once, so a replica cut off from the
database stops reconciling before anyone else can take the lock. TCP keepalives on the lock connection let
the server notice a half-open connection from a vanished host.

On SQLite there is one process by construction (the database is a local file), so it always leads.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)


class Leadership(Protocol):
    """What the reconciler asks before each tick; what /readyz reports."""

    def is_leader(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def describe(self) -> dict: ...


class AlwaysLeader:
    """The single process on SQLite (or a test that wants the reconciler unconditionally)."""

    def is_leader(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def describe(self) -> dict:
        return {"leader": True, "mechanism": "single process (SQLite)"}


class AdvisoryLockLeadership:
    """A PostgreSQL session advisory lock held on a dedicated connection, checked every heartbeat."""

    def __init__(self, engine: Engine, lock_id: int, heartbeat_s: float = 1.0):
        self.engine, self.lock_id, self.heartbeat_s = engine, lock_id, heartbeat_s
        self._connection: Connection | None = None
        self._leader_since: float | None = None
        self._last_ok = float("-inf")
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- what others ask ---------------------------------------------------------------------------
    def is_leader(self) -> bool:
        """True only while the lock is held AND was confirmed within two heartbeats (a stuck heartbeat
        thread must not leave a replica believing it leads)."""
        with self._lock:
            return self._leader_since is not None and time.monotonic() - self._last_ok < 2 * self.heartbeat_s

    def describe(self) -> dict:
        with self._lock:
            since = self._leader_since
            return {"leader": self._leading_now(), "mechanism": "postgresql advisory lock",
                    "lock_id": self.lock_id, "leader_for_s": round(time.monotonic() - since, 1) if since else None,
                    "last_error": self._last_error}

    def _leading_now(self) -> bool:  # callers hold self._lock
        return self._leader_since is not None and time.monotonic() - self._last_ok < 2 * self.heartbeat_s

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.beat()  # the first replica up leads from its first request on, not one heartbeat later
        self._thread = threading.Thread(target=self._run, name="leader-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Release the lock at once (a clean shutdown hands over without waiting for a heartbeat)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._drop("stopped")

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.beat()

    # ---- one heartbeat -----------------------------------------------------------------------------
    def beat(self) -> None:
        try:
            if self._connection is None:
                self._connection = self._connect()
            if self._leader_since is None:
                held = bool(self._connection.execute(text("SELECT pg_try_advisory_lock(:id)"),
                                                     {"id": self.lock_id}).scalar())
                self._connection.commit()
                with self._lock:
                    self._last_ok, self._last_error = time.monotonic(), None
                    if held:
                        self._leader_since = time.monotonic()
                        log.warning("this replica is now the reconciler leader (advisory lock %d)", self.lock_id)
            else:
                # Still ours? pg_locks shows the lock only while our backend holds it.
                held = bool(self._connection.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND objid::bigint = (CAST(:id AS bigint) & 4294967295) "
                    "AND classid::bigint = (CAST(:id AS bigint) >> 32)"), {"id": self.lock_id}).scalar())
                self._connection.commit()
                if not held:
                    self._drop("the advisory lock is no longer held by this connection")
                    return
                with self._lock:
                    self._last_ok, self._last_error = time.monotonic(), None
        except Exception as error:  # noqa: BLE001  any failure of the lock connection ends leadership
            self._drop(f"lock connection failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")

    def _connect(self) -> Connection:
        connection = self.engine.connect()
        # Keepalives let the server drop a half-open lock connection (and so the lock) within ~15 s of a
        # vanished host; statement_timeout bounds a heartbeat against a hung server.
        for statement in ("SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2",
                          "SET tcp_keepalives_count = 3", "SET statement_timeout = 5000"):
            connection.execute(text(statement))
        connection.commit()
        return connection

    def _drop(self, reason: str) -> None:
        with self._lock:
            was_leader = self._leader_since is not None
            self._leader_since, self._last_error = None, reason
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                if was_leader:
                    connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": self.lock_id})
                    connection.commit()
            except Exception:  # noqa: BLE001  a broken connection frees the lock by ending
                pass
            try:
                connection.invalidate()  # never hand a lock-holding connection back to a pool
                connection.close()
            except Exception:  # noqa: BLE001
                pass
        if was_leader:
            log.warning("this replica is no longer the reconciler leader: %s", reason)


def leadership_for(engine: Engine, lock_id: int, heartbeat_s: float) -> Leadership:
    if engine.dialect.name == "postgresql":
        return AdvisoryLockLeadership(engine, lock_id, heartbeat_s)
    return AlwaysLeader()
