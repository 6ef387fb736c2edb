"""The registry runs on PostgreSQL as well as SQLite: the same Alembic migrations build the same schema on
a real PostgreSQL server (pgserver ships its binaries as a wheel), and the constraints the control plane
relies on (unique names, cascades, JSON columns, timezone-aware timestamps) hold there too."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from control_plane.db import Base, Model, ModelVersion, Pack, Placement, Server, make_engine, make_sessionmaker
from control_plane.migrate import upgrade

pgserver = pytest.importorskip("pgserver", reason="pgserver (dev extra) provides the PostgreSQL binaries")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()
    server.cleanup()


def test_migrations_build_exactly_the_declared_schema_on_postgresql(engine: Engine) -> None:
    assert engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], f"the migrations and control_plane/db.py disagree on PostgreSQL: {differences}"
    assert {"models", "model_versions", "packs", "servers", "placements", "loadtests", "deployments",
            "audit_log", "alembic_version"} <= set(inspect(engine).get_table_names())


def test_upgrading_again_is_a_no_op(engine: Engine) -> None:
    upgrade(engine)  # a restarted control plane runs the migrations again
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() is not None


def test_constraints_json_and_cascades_hold_on_postgresql(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    signature = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 16]}]}
    with sessions.begin() as session:
        session.add(Pack(name="pg-pack-0", family="cpu", kind="mlp"))
        session.add(Server(name="pg-server", family="cpu", http_url="http://h:8000", grpc_url="h:8001",
                           capacity_bytes=24 * 2**30))
        session.flush()
        session.add(Model(name="pg-model", pack="pg-pack-0"))
        session.flush()
        session.add(ModelVersion(model="pg-model", version=1, sha256="a" * 64, bytes=10, s3_key="k",
                                 signature=signature, pack_kind="mlp"))
        session.add(Placement(pack="pg-pack-0", server="pg-server"))
    with sessions() as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.model == "pg-model")).one()
        assert version.signature == signature, "JSON round-trips"
        assert version.created_at.tzinfo is not None and version.created_at <= datetime.now(UTC)

    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(Model(name="pg-model"))  # a name is registered once

    with sessions.begin() as session:
        session.delete(session.get(Model, "pg-model"))
        session.delete(session.get(Server, "pg-server"))
    with sessions() as session:
        assert session.scalars(select(ModelVersion).where(ModelVersion.model == "pg-model")).all() == []
        assert session.scalars(select(Placement).where(Placement.server == "pg-server")).all() == []


def test_replicas_migrating_one_fresh_database_at_once_all_succeed(postgres) -> None:
    """Replicas that start together on a fresh database each run the migrations; one migrates, the others
    wait for it and find the schema at head (control_plane/migrate.py), none fails."""
    url = postgres.create_database()
    engines = [make_engine(url) for _ in range(3)]
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def migrate(engine: Engine) -> None:
        barrier.wait()
        try:
            upgrade(engine)
        except Exception as error:  # noqa: BLE001  collected: the assertion below names it
            failures.append(error)

    threads = [threading.Thread(target=migrate, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for engine in engines:
        engine.dispose()
    assert failures == []
    with make_engine(url).connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
