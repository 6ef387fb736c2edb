"""Registering, versioning and removing user models: the declared state the reconciler works from.

Invariants: a registration either fully lands (artifact validated and in S3, rows committed, member of a
pack) or leaves nothing behind; registering the same name with the same bytes is a no-op that returns the
existing model; the same name with other bytes is a conflict (use a new version instead).
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import Architecture, AuditEntry, Model, ModelVersion, Pack, Server
from control_plane.errors import ApiError, not_found
from control_plane.families import (
    FamilyFacts,
    FamilyStore,
    file_sha256,
    not_split,
    weights_problems,
    weights_unreadable,
)
from control_plane.locking import lock_pack_choice, retry_on_conflict, write_transaction
from control_plane.placement import PackFill, choose_pack, member_fits_reason
from control_plane.schemas import Signature
from control_plane.settings import Settings
from control_plane.staging import TRANSFER, StagedArtifact, check_size, inspect_archive, sha256_of
from control_plane.validation import ArtifactRejected, ArtifactValidator, ValidatorUnavailable
from model_repository.families import WEIGHTS_SUFFIX
from model_repository.formats import SUFFIX, ArtifactFormat
from model_repository.manifest import ModelEntry, TensorSpec
from model_repository.s3_sync import S3Location
from model_repository.triton_config import pack_kind

# Below the repository prefix, beside the index: the roles of k8s/iam (and the ECS task role) reach only
# s3://BUCKET/PREFIX/*, so everything the control plane writes lives there. `fleet sync` downloads what the
# index names, never these; Triton never sees them (its repository is the synced local folder).
ARTIFACTS_FOLDER = ".fleet/artifacts"


def artifacts_prefix(settings: Settings) -> str:
    """The key prefix (ending in "/") under which the registry stores artifacts, in settings.bucket."""
    return S3Location.parse(settings.repository_uri).key(ARTIFACTS_FOLDER) + "/"


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


def bytes_rule(fills: list[PackFill], new_bytes: int, settings: Settings) -> str | None:
    """Packs sized by bytes and bounded in members, grouping members of one architecture
    (control_plane.placement.choose_pack)."""
    return choose_pack(fills, new_bytes, settings.pack_max_bytes, settings.pack_size, settings.family_pack_max_bytes)


PackRule = Callable[[list[PackFill], int, Settings], "str | None"]


class Registry:
    def __init__(self, sessions: sessionmaker, settings: Settings, s3, validator: ArtifactValidator,
                 choose_pack: PackRule = bytes_rule):
        self.sessions, self.settings, self.s3, self.validator = sessions, settings, s3, validator
        # Which pack a model joins is a plain function of the packs' fill, so a placement-aware rule can
        # replace it; the database (control_plane/locking.py), not a process lock, makes the choice safe
        # across threads and replicas. Validation and uploads happen outside any transaction.
        self.choose_pack = choose_pack
        self.families = FamilyStore(self)

    # ---- artifacts -----------------------------------------------------------------------------
    # Artifacts move between S3 and local files only, by boto3's managed (multipart) transfer: the web
    # process never holds a whole one in memory (see control_plane/staging.py).
    def object_key(self, owner: str, sha256: str, suffix: str) -> str:
        """Where every object the registry stores lies: artifacts, weights files and programs."""
        return f"{artifacts_prefix(self.settings)}{owner}/{sha256}{suffix}"

    def artifact_key(self, name: str, sha256: str, fmt: ArtifactFormat = "torchscript") -> str:
        return self.object_key(name, sha256, SUFFIX[fmt])

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
            code = error.response["Error"]["Code"]
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ApiError(400, "s3_object_missing", f"'{uri}' does not exist") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                location = S3Location.parse(self.settings.repository_uri)
                raise ApiError(400, "s3_object_not_readable",
                               f"the control plane may not read '{uri}' (S3 answered {code}): its role reads only "
                               f"{location}/ (k8s/iam/repository-write-policy.json); copy the artifact below "
                               f"{location}/uploads/ and register it from there. Nothing was registered") from None
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

    def stage_weights(self, path: Path, sha256: str, size: int) -> StagedArtifact:
        """Describe an uploaded weights file (safetensors): its header must be readable (no code runs)."""
        check_size(size, self.settings.max_upload_bytes)
        problem = weights_unreadable(path)
        if problem:
            raise ApiError(422, "invalid_weights", f"the weights file is not a readable safetensors file: {problem}; "
                           "save it with safetensors.torch.save_file")
        return StagedArtifact(path=Path(path), sha256=sha256, bytes=size, format="torchscript")

    def _validate(self, artifact: StagedArtifact, signature: Signature, split_dir: Path | None = None,
                  program: dict | None = None) -> dict | None:
        """The sandboxed check; with `split_dir` also the split into program and weights (its outcome)."""
        try:
            return self.validator.validate(artifact.path, artifact.format, signature.model_dump(mode="json"),
                                           artifact.bytes, split_dir=split_dir, program=program)
        except ArtifactRejected as error:
            raise ApiError(422, "invalid_artifact", str(error)) from None
        except ValidatorUnavailable as error:
            raise ApiError(503, "validator_unavailable", f"the artifact could not be validated now ({error}); "
                           "nothing was registered, retry later") from None

    def _put(self, key: str, artifact: StagedArtifact) -> None:
        self.put_file(key, artifact.path, artifact.sha256, {"format": artifact.format})

    def put_file(self, key: str, path: Path, sha256: str, metadata: dict[str, str] | None = None) -> None:
        try:
            self.s3.upload_file(str(path), self.settings.bucket, key, Config=TRANSFER,
                                ExtraArgs={"Metadata": {"sha256": sha256, **(metadata or {})}})
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
    @contextmanager
    def _split_dir(self, artifact: StagedArtifact) -> Iterator[Path | None]:
        """A folder the validator splits the artifact into (None: this artifact is not split)."""
        if not self.settings.split_architectures or artifact.bytes < self.settings.split_min_bytes:
            yield None
            return
        staging = self.settings.staging_dir
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging, prefix="split-") as directory:
            yield Path(directory)

    def _checked_and_split(self, name: str, artifact: StagedArtifact, signature: Signature) -> FamilyFacts:
        """Validate the artifact in the sandbox, splitting it on the way, and store its program and weights."""
        with self._split_dir(artifact) as directory:
            split = self._validate(artifact, signature, directory)
            if directory is None:
                return not_split("not split: splitting is off or the artifact is below split_min_bytes")
            return self.families.store(name, artifact.format, split, directory)

    def register(self, name: str, artifact: StagedArtifact, signature: Signature, family: str) -> Registered:
        sha = artifact.sha256
        existing = self._existing(name, sha, signature)
        if existing:
            return existing
        self._refuse_unservable(artifact.bytes, family)
        facts = self._checked_and_split(name, artifact, signature)
        key = self.artifact_key(name, sha, artifact.format)
        self._put(key, artifact)
        return self._commit_new(name, family, signature, facts, [key, *facts.written],
                                dict(sha256=sha, bytes=artifact.bytes, s3_key=key, format=artifact.format))

    def _commit_new(self, name: str, family: str, signature: Signature, facts: FamilyFacts, keys: list[str],
                    fields: dict) -> Registered:
        """The rows of a new model (its first version, its architecture if new, its pack), or nothing: the
        objects this registration wrote are removed again when no committed version holds them."""
        sha = fields["sha256"]
        try:
            def attempt() -> Registered:
                with write_transaction(self.sessions) as session:
                    again = self._existing(name, sha, signature, session)
                    if again:
                        return again
                    FamilyStore.record(session, facts)
                    model = Model(name=name, family=family, current_version=1)
                    session.add(model)
                    stub = ModelVersion(signature=signature.model_dump(mode="json"), **fields)
                    version = ModelVersion(model=name, version=1, signature=signature.model_dump(mode="json"),
                                           pack_kind=pack_kind(entry_for(model, stub)), **fields,
                                           **facts.version_fields())
                    session.add(version)
                    session.flush()  # a replica that inserted the same name first: IntegrityError, retried
                    self._join_pack(session, model, version)
                    session.add(AuditEntry(action="model.register", subject=name,
                                           detail={"sha256": sha, "bytes": fields["bytes"], "format": fields["format"],
                                                   "pack": model.pack, "architecture": facts.architecture}))
                return Registered(model, version, created=True)
            registered = retry_on_conflict(attempt)
            if not registered.created:
                self._forget(keys)
                return registered
        except ApiError:
            # A concurrent registration took the name with other content: the objects written above
            # belong to nothing unless an existing version holds the same keys.
            self._forget(keys)
            raise
        except Exception:
            try:
                self._forget(keys)
            except Exception:  # noqa: BLE001, S110  database unreachable: an orphaned content-addressed object is
                pass  # harmless, deleting one a concurrent registration committed is not
            raise
        return registered

    def _forget(self, keys: list[str]) -> None:
        for key in keys:
            if not self._key_in_use(key):
                self._delete_object(key)

    def register_weights(self, name: str, weights: StagedArtifact, architecture: str, signature: Signature,
                         family: str) -> Registered:
        """A member registered as a weights file (safetensors) for an architecture the registry holds: its
        tensor table must match the architecture's exactly (422 naming what differs), and it is checked in
        the sandbox by binding it to the architecture's program and calling it once."""
        existing = self._existing(name, weights.sha256, signature)
        if existing:
            return existing
        with self.sessions() as session:
            row = session.get(Architecture, architecture)
            if row is None:
                raise ApiError(422, "unknown_architecture",
                               f"architecture '{architecture}' is not registered; register one member as a whole "
                               "artifact first (GET /api/v1/architectures lists them)")
            spec, fmt, program_key = row.tensors, row.format, row.program_key
        problems = weights_problems(weights.path, spec)
        if problems:
            raise ApiError(422, "weights_mismatch",
                           f"the weights do not match architecture {architecture[:12]}: " + "; ".join(problems),
                           {"architecture": architecture, "differences": problems})
        self._refuse_unservable(weights.bytes, family)
        staging = self.settings.staging_dir
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging, prefix="weights-") as directory:
            program = Path(directory) / f"program{SUFFIX[fmt]}"
            self.download_artifact(program_key, program)
            checked = StagedArtifact(path=weights.path, sha256=weights.sha256, bytes=weights.bytes, format=fmt)
            # The sandbox binds the weights to the program and calls it once, and rewrites them as the runtime
            # serves weights: in the program's order, each tensor 64-byte aligned (pack_weights.py).
            split = self._validate(checked, signature, Path(directory), program={"path": program, "spec": spec})
            aligned = Path(directory) / str((split or {}).get("weights") or f"weights{WEIGHTS_SUFFIX}")
            problems = weights_problems(aligned, spec) if aligned.exists() else ["the validator wrote no weights"]
            if problems:
                raise ApiError(503, "validator_unavailable", "the validator's rewrite of the weights does not match "
                               f"the architecture ({problems[0]}); nothing was registered, retry later")
            aligned_sha, aligned_bytes = file_sha256(aligned)
            key = self.object_key(name, aligned_sha, WEIGHTS_SUFFIX)
            self.put_file(key, aligned, aligned_sha, {"architecture": architecture})
        facts = FamilyFacts(architecture=architecture, weights_key=key, weights_sha256=aligned_sha,
                            weights_bytes=aligned_bytes)
        return self._commit_new(name, family, signature, facts, [key],
                                dict(sha256=weights.sha256, bytes=weights.bytes, s3_key=key, format=fmt,
                                     whole_artifact=False))

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
                                  .where((ModelVersion.s3_key == key) | (ModelVersion.weights_key == key))) > 0

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
        """Put a model into a pack of its kind and family with room left (self.choose_pack), or open a new
        pack. Holds the (kind, family) pack lock and the chosen pack's row lock until the commit."""
        lock_pack_choice(session, version.pack_kind, model.family)
        # Only the members of this kind and family's packs are counted (through ix_models_pack), not every
        # model in the registry: the count runs under the write lock, so it bounds registrations per second.
        candidates = select(Pack.name).where(Pack.kind == version.pack_kind, Pack.family == model.family)
        current = (select(Model.pack, func.count().label("n"), func.sum(ModelVersion.bytes).label("b"))
                   .join(ModelVersion, (ModelVersion.model == Model.name) &
                         (ModelVersion.version == Model.current_version))
                   .where(Model.pack.in_(candidates), Model.name != model.name)
                   .group_by(Model.pack).subquery())
        rows = session.execute(
            select(Pack.name, func.coalesce(current.c.n, 0), func.coalesce(current.c.b, 0))
            .outerjoin(current, current.c.pack == Pack.name)
            .where(Pack.kind == version.pack_kind, Pack.family == model.family)
            .order_by(Pack.name)).all()
        kin: dict[str, int] = {}
        if version.architecture:  # members of its architecture per candidate pack
            kin = dict(session.execute(
                select(Model.pack, func.count())
                .join(ModelVersion, (ModelVersion.model == Model.name) &
                      (ModelVersion.version == Model.current_version))
                .where(Model.pack.in_(candidates), Model.name != model.name,
                       ModelVersion.architecture == version.architecture)
                .group_by(Model.pack)).all())
        chosen = self.choose_pack([PackFill(name, int(b), int(n), int(kin.get(name, 0))) for name, n, b in rows],
                                  version.bytes, self.settings)
        if chosen is None:
            base = f"{version.pack_kind}-{model.family}-".replace("_", "-")
            taken = [int(m.group(1)) for (name, _, _) in rows
                     if (m := re.fullmatch(re.escape(base) + r"(\d+)", name))]
            pack = Pack(name=f"{base}{max(taken, default=-1) + 1:04d}", family=model.family,
                        kind=version.pack_kind, generation=0)
            session.add(pack)
            session.flush()  # a name taken meanwhile (only without the pack lock): IntegrityError, retried
        else:
            pack = self._locked_pack(session, chosen)
        pack.generation += 1
        model.pack = pack.name
        model.joined_generation = pack.generation

    @staticmethod
    def _locked_pack(session: Session, name: str) -> Pack:
        """The pack row, locked until commit, so concurrent generation bumps never lose one."""
        return session.get(Pack, name, with_for_update=True, populate_existing=True)

    @staticmethod
    def _locked_model(session: Session, name: str) -> Model | None:
        return session.get(Model, name, with_for_update=True, populate_existing=True)

    def add_version(self, name: str, artifact: StagedArtifact, signature: Signature) -> Registered:
        sha = artifact.sha256
        with self.sessions() as session:
            model = session.get(Model, name)
            if model is None:
                raise not_found("model", name)
            current = session.get(ModelVersion, (name, model.current_version))
            if current.sha256 == sha and current.signature == signature.model_dump(mode="json"):
                return Registered(model, current, created=False)
        facts = self._checked_and_split(name, artifact, signature)
        key = self.artifact_key(name, sha, artifact.format)
        self._put(key, artifact)

        def attempt() -> tuple[Model, ModelVersion]:
            with write_transaction(self.sessions) as session:
                model = self._locked_model(session, name)
                if model is None:
                    raise not_found("model", name)
                FamilyStore.record(session, facts)
                kind = pack_kind(entry_for(model, _stub_version(artifact, signature)))
                version = ModelVersion(model=name, version=model.current_version + 1, sha256=sha,
                                       bytes=artifact.bytes, s3_key=key, signature=signature.model_dump(mode="json"),
                                       format=artifact.format, pack_kind=kind, **facts.version_fields())
                session.add(version)
                model.current_version = version.version
                old_pack = self._locked_pack(session, model.pack) if model.pack else None
                if old_pack is not None and old_pack.kind != kind:
                    old_pack.generation += 1
                    self._join_pack(session, model, version)
                elif old_pack is not None:
                    old_pack.generation += 1
                    model.joined_generation = old_pack.generation
                session.add(AuditEntry(action="model.version", subject=name,
                                       detail={"version": version.version, "sha256": sha}))
            return model, version

        model, version = retry_on_conflict(attempt)
        return Registered(model, version, created=True)

    def set_desired(self, name: str, desired: str) -> Model:
        def attempt() -> Model:
            with write_transaction(self.sessions) as session:
                model = self._locked_model(session, name)
                if model is None:
                    raise not_found("model", name)
                if model.desired != desired:
                    model.desired = desired
                    pack = self._locked_pack(session, model.pack)
                    pack.generation += 1
                    model.joined_generation = pack.generation
                    session.add(AuditEntry(action=f"model.{desired[:-2]}", subject=name))
                return model
        return retry_on_conflict(attempt)

    def delete(self, name: str) -> None:
        def attempt() -> list[str]:
            with write_transaction(self.sessions) as session:
                model = self._locked_model(session, name)
                if model is None:
                    raise not_found("model", name)
                keys = [key for v in session.scalars(select(ModelVersion).where(ModelVersion.model == name))
                        for key in (v.s3_key, v.weights_key) if key]
                pack = self._locked_pack(session, model.pack) if model.pack else None
                if pack is not None:
                    pack.generation += 1
                session.execute(ModelVersion.__table__.delete().where(ModelVersion.model == name))
                session.delete(model)
                session.add(AuditEntry(action="model.delete", subject=name))
            return keys
        keys = retry_on_conflict(attempt)
        for key in keys:
            self._delete_object(key)


def _stub_version(artifact: StagedArtifact, signature: Signature) -> ModelVersion:
    return ModelVersion(sha256=artifact.sha256, bytes=artifact.bytes, format=artifact.format,
                        signature=signature.model_dump(mode="json"))
