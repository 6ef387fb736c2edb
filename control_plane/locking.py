"""Database-enforced serialisation for registry writes, so any number of replicas can share one database.

Nothing here is a process lock. On PostgreSQL a writer locks the rows it changes (SELECT ... FOR UPDATE)
and takes a transaction-scoped advisory lock per (pack kind, family) before deciding which pack a model
joins or opening a new one; the locks end with the transaction, so a crashed replica holds nothing. On
SQLite a write transaction starts with BEGIN IMMEDIATE: it takes the database's single write lock up front,
so two writers never both read "pack has room" and then both fill it.

Whatever still collides (two replicas inserting the same model name, a deadlock between a registration
and the reconciler, a busy SQLite file) is retried a few times with jittered back-off; the retried
transaction re-reads the state and then answers as if it had run second (200 for the same content, 409
for other content).
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")
# The advisory-lock namespace of pack decisions (the two-int4 form: never clashes with the leader's
# single-bigint lock, which PostgreSQL keeps apart).
PACK_LOCK_NAMESPACE = 0x666C74  # "flt"
LOADTEST_LOCK_KEY = 1
RETRYABLE_SQLSTATES = ("40001", "40P01")  # serialization failure, deadlock detected


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, IntegrityError):
        return True
    if isinstance(error, DBAPIError) and not error.connection_invalidated:
        orig = error.orig
        if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        return "database is locked" in str(orig)  # SQLite busy beyond busy_timeout
    return False


def retry_on_conflict(fn: Callable[[], T], attempts: int = 6) -> T:
    """Run `fn` (one whole transaction) again when the database reports a conflict it resolved by aborting."""
    return retry(retry=retry_if_exception(is_retryable), stop=stop_after_attempt(attempts),
                 wait=wait_random_exponential(multiplier=0.02, max=0.5), reraise=True)(fn)()


@contextmanager
def write_transaction(sessions: sessionmaker) -> Iterator[Session]:
    """A session in a transaction that commits on success; on SQLite it holds the write lock from the start."""
    with sessions.begin() as session:
        if session.get_bind().dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        yield session


def lock_pack_choice(session: Session, kind: str, family: str) -> None:
    """Serialise pack choice for one (kind, family) across replicas until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"{kind}/{family}".encode()) - 2**31  # fits int4
        session.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": PACK_LOCK_NAMESPACE, "key": key})


def lock_loadtests(session: Session) -> None:
    """Serialise 'how many load tests are running' checks across replicas until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                        {"ns": PACK_LOCK_NAMESPACE + 1, "key": LOADTEST_LOCK_KEY})
