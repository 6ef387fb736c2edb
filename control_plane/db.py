"""The registry's tables. Declared state (which models should be servable) and observed state (what
each server has loaded) live side by side so the reconciler can compare them."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    false,
    true,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Model(Base):
    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    family: Mapped[str] = mapped_column(String(16), default="cpu")
    current_version: Mapped[int] = mapped_column(Integer, default=1)
    desired: Mapped[str] = mapped_column(String(16), default="loaded")  # loaded | unloaded
    pack: Mapped[str | None] = mapped_column(ForeignKey("packs.name"), nullable=True, index=True)
    joined_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    model: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    s3_key: Mapped[str] = mapped_column(String(512))
    signature: Mapped[dict] = mapped_column(JSON)
    # How the artifact was saved, detected from the archive: torchscript (torch.jit.save) or
    # torch_export (torch.export.save, a .pt2 ExportedProgram).
    format: Mapped[str] = mapped_column(String(32), default="torchscript", server_default="torchscript")
    pack_kind: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Architecture families (model_repository/families.py): the architecture this version's program belongs
    # to and its weights file in S3; or, when the artifact could not be split, why (whole-artifact path).
    architecture: Mapped[str | None] = mapped_column(ForeignKey("architectures.id"), nullable=True, index=True)
    weights_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weights_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    split_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # False for a member registered as a weights file against an architecture: it has no whole artifact.
    whole_artifact: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class Architecture(Base):
    """A program shared by every member of one architecture, stored once in S3 (content-addressed)."""

    __tablename__ = "architectures"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # families.architecture_id
    format: Mapped[str] = mapped_column(String(32))
    program_key: Mapped[str] = mapped_column(String(512))
    program_sha256: Mapped[str] = mapped_column(String(64))
    program_bytes: Mapped[int] = mapped_column(BigInteger)
    parameter_bytes: Mapped[int] = mapped_column(BigInteger)  # one member's weights (its tensor table's bytes)
    tensors: Mapped[list] = mapped_column(JSON)  # the tensor table: name, kind, dtype, shape, requires_grad
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Pack(Base):
    __tablename__ = "packs"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    family: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer, default=0)  # bumped on every membership change
    built_generation: Mapped[int] = mapped_column(Integer, default=-1)  # last generation uploaded
    # Observed by the reconciler: requests per second over all replicas, the bytes one replica costs
    # (stub plus the members recent traffic keeps resident), and why it has fewer replicas than it wants.
    request_rate: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    working_set_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pending_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Server(Base):
    __tablename__ = "servers"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    family: Mapped[str] = mapped_column(String(16))
    http_url: Mapped[str] = mapped_column(String(256))
    grpc_url: Mapped[str] = mapped_column(String(256))
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)  # host RAM budget for pack replicas
    repository_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A draining server gets no new replicas; its replicas are placed elsewhere before they are unloaded.
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    metrics_url: Mapped[str | None] = mapped_column(String(256), nullable=True)
    instance_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Tier budgets besides host RAM (capacity_bytes): the disk cache the sync keeps, GPU memory for the
    # gpu family, NeuronCores for inf2. Stored and served here; the sync and the runtime enforce them.
    disk_budget_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    gpu_budget_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    neuron_cores: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What each tier held at the reconciler's last scrape of the server's metrics (control_plane/traffic.py
    # TierUsage, per tier) and, as tier "disk", its sync's last status (control_plane/assignments.py), so
    # any control-plane replica can show it; None: neither read yet.
    tier_usage: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Placement(Base):
    __tablename__ = "placements"
    pack: Mapped[str] = mapped_column(ForeignKey("packs.name", ondelete="CASCADE"), primary_key=True)
    server: Mapped[str] = mapped_column(ForeignKey("servers.name", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|loaded|failed
    loaded_generation: Mapped[int] = mapped_column(Integer, default=-1)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Bytes the placement reserved on its server; the pack's residency budget there is this less the stub.
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The residency budget the loaded replica was read back to run with (its config's max_resident_bytes).
    residency_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The device tier budget (max_device_bytes) it was read back to run with; 0: none or unknown.
    device_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # No longer in the target assignment: served until the pack's other replicas are loaded, then unloaded.
    retiring: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class LoadTest(Base):
    __tablename__ = "loadtests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|succeeded|failed
    results: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)


def make_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True,
                           connect_args={"timeout": 30, "check_same_thread": False}
                           if url.startswith("sqlite") else {})
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # WAL: readers never block the writer
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)
