"""Registering, versioning and removing user models: the declared state the reconciler works from.

Invariants: a registration either fully lands (artifact validated and in S3, rows committed, member of a
pack) or leaves nothing behind; registering the same name with the same bytes is a no-op that returns the
existing model; the same name with other bytes is a conflict (use a new version instead).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import AuditEntry, Model, ModelVersion, Pack
from control_plane.errors import ApiError, not_found
from control_plane.schemas import Signature
from control_plane.settings import Settings
from control_plane.staging import TRANSFER, StagedArtifact, check_size, inspect_archive, sha256_of
from control_plane.validation import ArtifactRejected, ArtifactValidator, ValidatorUnavailable
from model_repository.formats import SUFFIX, ArtifactFormat
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
    fmt = version.format or "torchscript"
    return ModelEntry(id=model.name, architecture="custom", file=f"members/{model.name}{SUFFIX[fmt]}",
                      format=fmt, sha256=version.sha256, bytes=version.bytes, parameters=0,
                      inputs=[TensorSpec(**s) for s in signature["inputs"]],
                      outputs=[TensorSpec(**s) for s in signature["outputs"]])


class Registry:
    def __init__(self, sessions: sessionmaker, settings: Settings, s3, validator: ArtifactValidator):
        self.sessions, self.settings, self.s3, self.validator = sessions, settings, s3, validator
        # One writer decides membership at a time, so concurrent registrations never overfill a pack or
        # create a name twice; validation and uploads happen outside it.
        self._write_lock = threading.Lock()

    # ---- artifacts -----------------------------------------------------------------------------
    # Artifacts move between S3 and local files only, by boto3's managed (multipart) transfer: the web
    # process never holds a whole one in memory (see control_plane/staging.py).
    def artifact_key(self, name: str, sha256: str, fmt: ArtifactFormat = "torchscript") -> str:
        return f"{ARTIFACTS_PREFIX}/{name}/{sha256}{SUFFIX[fmt]}"

    def download_artifact(self, key: str, target: Path) -> None:
        """Copy a registered artifact from S3 to `target` (written next to it, then renamed)."""
        tmp = target.with_name(target.name + ".part")
        try:
            self.s3.download_file(self.settings.bucket, key, str(tmp), Config=TRANSFER)
        except (ClientError, BotoCoreError) as error:
            tmp.unlink(missing_ok=True)
            raise ApiError(503, "object_store_unavailable",
                           f"cannot read s3://{self.settings.bucket}/{key}: {error}") from None
        tmp.replace(target)

    def fetch_s3_uri(self, uri: str, directory: Path) -> StagedArtifact:
        """Stage an artifact that is already in the bucket: size checked first, then downloaded to a file
        under `directory` (the caller removes it) and hashed there."""
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
        check_size(head["ContentLength"], self.settings.max_upload_bytes, f"'{uri}'")
        path = Path(directory) / "artifact"
        self.download_artifact(key, path)
        size = path.stat().st_size
        check_size(size, self.settings.max_upload_bytes, f"'{uri}'")
        return self.stage(path, sha256_of(path), size)

    def stage(self, path: Path, sha256: str, size: int) -> StagedArtifact:
        """Describe a file on local disk as an artifact, refusing non-models and zip bombs (4xx)."""
        check_size(size, self.settings.max_upload_bytes)
        fmt = inspect_archive(path, size, self.settings.max_upload_bytes)
        return StagedArtifact(path=Path(path), sha256=sha256, bytes=size, format=fmt)

    def _validate(self, artifact: StagedArtifact, signature: Signature) -> None:
        try:
            self.validator.validate(artifact.path, artifact.format, signature.model_dump(mode="json"),
                                    artifact.bytes)
        except ArtifactRejected as error:
            raise ApiError(422, "invalid_artifact", str(error)) from None
        except ValidatorUnavailable as error:
            raise ApiError(503, "validator_unavailable", f"the artifact could not be validated now ({error}); "
                           "nothing was registered, retry later") from None

    def _put(self, key: str, artifact: StagedArtifact) -> None:
        try:
            self.s3.upload_file(str(artifact.path), self.settings.bucket, key, Config=TRANSFER,
                                ExtraArgs={"Metadata": {"sha256": artifact.sha256, "format": artifact.format}})
        except (ClientError, BotoCoreError, S3UploadFailedError) as error:
            raise ApiError(503, "object_store_unavailable",
                           f"cannot write to s3://{self.settings.bucket}: {error}; nothing was registered") \
                from None

    def _delete_object(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.settings.bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass  # an orphaned content-addressed object is harmless and is overwritten on retry

    # ---- registration --------------------------------------------------------------------------
    def register(self, name: str, artifact: StagedArtifact, signature: Signature, family: str) -> Registered:
        sha = artifact.sha256
        existing = self._existing(name, sha, signature)
        if existing:
            return existing
        self._validate(artifact, signature)
        key = self.artifact_key(name, sha, artifact.format)
        self._put(key, artifact)
        try:
            with self._write_lock, self.sessions.begin() as session:
                again = self._existing(name, sha, signature, session)
                if again:
                    return again
                model = Model(name=name, family=family, current_version=1)
                session.add(model)
                version = ModelVersion(model=name, version=1, sha256=sha, bytes=artifact.bytes, s3_key=key,
                                       signature=signature.model_dump(mode="json"), format=artifact.format,
                                       pack_kind=pack_kind(entry_for(model, _stub_version(artifact, signature))))
                session.add(version)
                session.flush()
                self._join_pack(session, model, version)
                session.add(AuditEntry(action="model.register", subject=name,
                                       detail={"sha256": sha, "bytes": artifact.bytes, "format": artifact.format,
                                               "pack": model.pack}))
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
        members = (select(Model.pack, func.count().label("n")).where(Model.pack.is_not(None))
                   .group_by(Model.pack).subquery())
        row = session.execute(
            select(Pack, func.coalesce(members.c.n, 0))
            .outerjoin(members, members.c.pack == Pack.name)
            .where(Pack.kind == version.pack_kind, Pack.family == model.family)
            .order_by(Pack.name)).all()
        pack = next((p for p, n in row if n < self.settings.pack_size), None)
        if pack is None:
            pack = Pack(name=f"{version.pack_kind}-{model.family}-{len(row):04d}".replace("_", "-"),
                        family=model.family, kind=version.pack_kind, generation=0)
            session.add(pack)
            session.flush()
        pack.generation += 1
        model.pack = pack.name
        model.joined_generation = pack.generation

    def add_version(self, name: str, artifact: StagedArtifact, signature: Signature) -> Registered:
        sha = artifact.sha256
        with self.sessions() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            current = session.get(ModelVersion, (name, model.current_version))
            if current.sha256 == sha and current.signature == signature.model_dump(mode="json"):
                return Registered(model, current, created=False)
        self._validate(artifact, signature)
        key = self.artifact_key(name, sha, artifact.format)
        self._put(key, artifact)
        with self._write_lock, self.sessions.begin() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            kind = pack_kind(entry_for(model, _stub_version(artifact, signature)))
            version = ModelVersion(model=name, version=model.current_version + 1, sha256=sha,
                                   bytes=artifact.bytes, s3_key=key, signature=signature.model_dump(mode="json"),
                                   format=artifact.format, pack_kind=kind)
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


def _stub_version(artifact: StagedArtifact, signature: Signature) -> ModelVersion:
    return ModelVersion(sha256=artifact.sha256, bytes=artifact.bytes, format=artifact.format,
                        signature=signature.model_dump(mode="json"))
