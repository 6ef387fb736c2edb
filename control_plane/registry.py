"""Registering, versioning and removing user models: the declared state the reconciler works from.

Invariants: a registration either fully lands (artifact validated and in S3, rows committed, member of a
pack) or leaves nothing behind; registering the same name with the same bytes is a no-op that returns the
existing model; the same name with other bytes is a conflict (use a new version instead).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import AuditEntry, Model, ModelVersion, Pack, Server
from control_plane.errors import ApiError, not_found
from control_plane.placement import PackFill, choose_pack, member_fits_reason
from control_plane.schemas import Signature
from control_plane.settings import Settings
from control_plane.validation import ArtifactRejected, ArtifactValidator
from model_repository.manifest import ModelEntry, TensorSpec
from model_repository.triton_config import pack_kind

ARTIFACTS_PREFIX = "artifacts"


@dataclass(frozen=True)
class Registered:
    model: Model
    version: ModelVersion
    created: bool


def entry_for(model: Model, version: ModelVersion) -> ModelEntry:
    """The data-plane description of a registered model (what goes into a pack's members.json)."""
    signature = version.signature
    return ModelEntry(id=model.name, architecture="custom", file=f"members/{model.name}.pt",
                      sha256=version.sha256, bytes=version.bytes, parameters=0,
                      inputs=[TensorSpec(**s) for s in signature["inputs"]],
                      outputs=[TensorSpec(**s) for s in signature["outputs"]])


class Registry:
    def __init__(self, sessions: sessionmaker, settings: Settings, s3, validator: ArtifactValidator):
        self.sessions, self.settings, self.s3, self.validator = sessions, settings, s3, validator
        # One writer decides membership at a time, so concurrent registrations never overfill a pack or
        # create a name twice; validation and uploads happen outside it.
        self._write_lock = threading.Lock()

    # ---- artifacts -----------------------------------------------------------------------------
    def artifact_key(self, name: str, sha256: str) -> str:
        return f"{ARTIFACTS_PREFIX}/{name}/{sha256}.pt"

    def read_artifact(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as error:
            raise ApiError(503, "object_store_unavailable",
                           f"cannot read s3://{self.settings.bucket}/{key}: {error}") from None

    def fetch_s3_uri(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if bucket != self.settings.bucket or not key or ".." in key.split("/"):
            raise ApiError(400, "s3_uri_outside_bucket",
                           f"'{uri}' is outside the configured bucket s3://{self.settings.bucket}/: upload "
                           "the artifact there first, or register it by upload")
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise ApiError(400, "s3_object_missing", f"'{uri}' does not exist") from None
            raise ApiError(503, "object_store_unavailable", f"cannot read '{uri}': {error}") from None
        except BotoCoreError as error:
            raise ApiError(503, "object_store_unavailable", f"cannot read '{uri}': {error}") from None
        if head["ContentLength"] > self.settings.max_upload_bytes:
            raise ApiError(413, "payload_too_large",
                           f"'{uri}' is {head['ContentLength']} bytes; the limit is "
                           f"{self.settings.max_upload_bytes} (FLEET_MAX_UPLOAD_BYTES)")
        return self.read_artifact(key)

    def _validate(self, data: bytes, signature: Signature) -> None:
        if not data:
            raise ApiError(422, "invalid_artifact", "the artifact is empty")
        try:
            self.validator.validate(data, signature.model_dump(mode="json"))
        except ArtifactRejected as error:
            raise ApiError(422, "invalid_artifact", str(error)) from None

    def _put(self, key: str, data: bytes, sha256: str) -> None:
        try:
            self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=data, Metadata={"sha256": sha256})
        except (ClientError, BotoCoreError) as error:
            raise ApiError(503, "object_store_unavailable",
                           f"cannot write to s3://{self.settings.bucket}: {error}; nothing was registered") \
                from None

    def _delete_object(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.settings.bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass  # an orphaned content-addressed object is harmless and is overwritten on retry

    # ---- registration --------------------------------------------------------------------------
    def register(self, name: str, data: bytes, signature: Signature, family: str) -> Registered:
        sha = hashlib.sha256(data).hexdigest()
        existing = self._existing(name, sha, signature)
        if existing:
            return existing
        self._validate(data, signature)
        self._refuse_unservable(len(data), family)
        key = self.artifact_key(name, sha)
        self._put(key, data, sha)
        try:
            with self._write_lock, self.sessions.begin() as session:
                again = self._existing(name, sha, signature, session)
                if again:
                    return again
                model = Model(name=name, family=family, current_version=1)
                session.add(model)
                version = ModelVersion(model=name, version=1, sha256=sha, bytes=len(data), s3_key=key,
                                       signature=signature.model_dump(mode="json"),
                                       pack_kind=pack_kind(entry_for(model, _stub_version(sha, signature))))
                session.add(version)
                session.flush()
                self._join_pack(session, model, version)
                session.add(AuditEntry(action="model.register", subject=name,
                                       detail={"sha256": sha, "bytes": len(data), "pack": model.pack}))
        except ApiError:
            # A concurrent registration took the name with other content: the object written above
            # belongs to nothing unless an existing version holds the same key.
            if not self._key_in_use(key):
                self._delete_object(key)
            raise
        except Exception:
            self._delete_object(key)
            raise
        return Registered(model, version, created=True)

    def _refuse_unservable(self, size: int, family: str) -> None:
        """A model no registered server of its family could ever hold is refused now, not left pending."""
        with self.sessions() as session:
            budgets = dict(session.execute(select(Server.name, Server.capacity_bytes)
                                           .where(Server.family == family)).all())
        reason = member_fits_reason(size, budgets, family)
        if reason:
            raise ApiError(422, "model_too_large", f"{reason}. Nothing was registered.",
                           {"bytes": size, "largest_budget_bytes": max(budgets.values())})

    def _key_in_use(self, key: str) -> bool:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(ModelVersion)
                                  .where(ModelVersion.s3_key == key)) > 0

    def _existing(self, name: str, sha: str, signature: Signature,
                  session: Session | None = None) -> Registered | None:
        own = session is None
        session = session or self.sessions()
        try:
            model = session.get(Model, name)
            if model is None:
                return None
            version = session.get(ModelVersion, (name, model.current_version))
            if version.sha256 == sha and version.signature == signature.model_dump(mode="json"):
                return Registered(model, version, created=False)
            raise ApiError(409, "name_taken",
                           f"model '{name}' already exists with different content or signature; register a "
                           f"new version with POST /api/v1/models/{name}/versions, or pick another name",
                           {"existing_sha256": version.sha256, "uploaded_sha256": sha})
        finally:
            if own:
                session.close()

    def _join_pack(self, session: Session, model: Model, version: ModelVersion) -> None:
        """Put a model into a pack of its kind and family with room left, or open a new pack."""
        members = (select(Model.pack, func.count().label("n"), func.sum(ModelVersion.bytes).label("b"))
                   .join(ModelVersion, (ModelVersion.model == Model.name)
                         & (ModelVersion.version == Model.current_version))
                   .where(Model.pack.is_not(None), Model.name != model.name).group_by(Model.pack).subquery())
        row = session.execute(
            select(Pack, func.coalesce(members.c.n, 0), func.coalesce(members.c.b, 0))
            .outerjoin(members, members.c.pack == Pack.name)
            .where(Pack.kind == version.pack_kind, Pack.family == model.family)
            .order_by(Pack.name)).all()
        chosen = choose_pack([PackFill(p.name, int(b), int(n)) for p, n, b in row], version.bytes,
                             self.settings.pack_max_bytes, self.settings.pack_size)
        pack = next((p for p, _, _ in row if p.name == chosen), None)
        if pack is None:
            pack = Pack(name=f"{version.pack_kind}-{model.family}-{len(row):04d}".replace("_", "-"),
                        family=model.family, kind=version.pack_kind, generation=0)
            session.add(pack)
            session.flush()
        pack.generation += 1
        model.pack = pack.name
        model.joined_generation = pack.generation

    def add_version(self, name: str, data: bytes, signature: Signature) -> Registered:
        sha = hashlib.sha256(data).hexdigest()
        with self.sessions() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            current = session.get(ModelVersion, (name, model.current_version))
            if current.sha256 == sha and current.signature == signature.model_dump(mode="json"):
                return Registered(model, current, created=False)
        self._validate(data, signature)
        key = self.artifact_key(name, sha)
        self._put(key, data, sha)
        with self._write_lock, self.sessions.begin() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            kind = pack_kind(entry_for(model, _stub_version(sha, signature)))
            version = ModelVersion(model=name, version=model.current_version + 1, sha256=sha, bytes=len(data),
                                   s3_key=key, signature=signature.model_dump(mode="json"), pack_kind=kind)
            session.add(version)
            model.current_version = version.version
            old_pack = session.get(Pack, model.pack) if model.pack else None
            if old_pack is not None and old_pack.kind != kind:
                old_pack.generation += 1
                self._join_pack(session, model, version)
            elif old_pack is not None:
                old_pack.generation += 1
                model.joined_generation = old_pack.generation
            session.add(AuditEntry(action="model.version", subject=name,
                                   detail={"version": version.version, "sha256": sha}))
        return Registered(model, version, created=True)

    def set_desired(self, name: str, desired: str) -> Model:
        with self._write_lock, self.sessions.begin() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            if model.desired != desired:
                model.desired = desired
                pack = session.get(Pack, model.pack)
                pack.generation += 1
                model.joined_generation = pack.generation
                session.add(AuditEntry(action=f"model.{desired[:-2]}", subject=name))
            return model

    def delete(self, name: str) -> None:
        with self._write_lock, self.sessions.begin() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            keys = [v.s3_key for v in session.scalars(select(ModelVersion).where(ModelVersion.model == name))]
            pack = session.get(Pack, model.pack) if model.pack else None
            if pack is not None:
                pack.generation += 1
            session.execute(ModelVersion.__table__.delete().where(ModelVersion.model == name))
            session.delete(model)
            session.add(AuditEntry(action="model.delete", subject=name))
        for key in keys:
            self._delete_object(key)


def _stub_version(sha: str, signature: Signature) -> ModelVersion:
    return ModelVersion(sha256=sha, bytes=0, signature=signature.model_dump(mode="json"))
