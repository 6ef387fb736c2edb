"""Schema migrations with Alembic, applied at start-up so a new release upgrades the registry in place.

Several control-plane replicas may start at once on one fresh PostgreSQL database; each would create
alembic's own table and fail on the other's ("duplicate key ... alembic_version"). So on PostgreSQL the
upgrade runs under a transaction-scoped advisory lock: the first replica migrates, the others wait and
then find the schema at head. (SQLite has one writer and one replica.)
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_ID = 0x666C65656D  # the advisory lock key migrations take ("fleem"); the leader's is another


def upgrade(engine: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # released at commit: DDL is transactional there
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
