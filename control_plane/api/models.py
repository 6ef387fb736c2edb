"""/api/v1/models: register (upload or S3 URI), list, get, delete, versions, load and unload."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apiflask import APIBlueprint
from apiflask.fields import File, String
from apiflask.validators import Regexp
from flask import current_app
from marshmallow import Schema as MSchema
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.db import Model, ModelVersion
from control_plane.errors import ApiError, not_found
from control_plane.schemas import (
    NAME_PATTERN,
    Message,
    ModelListQuery,
    ModelOut,
    ModelPage,
    RegisterFromS3,
    Signature,
    VersionList,
    VersionOut,
)
from control_plane.staging import HashingTempFile, StagedArtifact, copy_to_staging
from control_plane.views import architecture_refs, model_out, pack_facts, status_column
from model_repository.formats import HOW_TO_PRODUCE

bp = APIBlueprint("models", __name__, url_prefix="/api/v1/models", tag="models")


class UploadForm(MSchema):
    name = String(required=True, validate=Regexp(NAME_PATTERN),
                  metadata={"description": "lower-case letters, digits, '.', '_' and '-'; no path separators"})
    signature = String(required=True, metadata={"description": 'JSON: {"inputs": [...], "outputs": [...]}'})
    family = String(load_default="cpu", metadata={"description": "cpu | gpu | inf2"})
    artifact = File(required=True, metadata={"description": "the model: " + HOW_TO_PRODUCE + "; or, with "
                                                            "'architecture', its weights as a safetensors file"})
    architecture = String(load_default=None, metadata={
        "description": "register the model as weights only: the id of a registered architecture "
                       "(GET /api/v1/architectures) whose tensor table the uploaded safetensors file matches "
                       "exactly (names, shapes, dtypes); anything else is refused with what differs"})


class VersionForm(MSchema):
    signature = String(required=True)
    artifact = File(required=True, metadata={"description": "the model: " + HOW_TO_PRODUCE})


def _signature(raw: str) -> Signature:
    try:
        return Signature.model_validate(json.loads(raw))
    except json.JSONDecodeError as error:
        raise ApiError(400, "malformed_json", f"'signature' is not valid JSON: {error}") from None
    except ValidationError as error:
        raise ApiError(422, "invalid_signature", "'signature' does not match the schema",
                       json.loads(error.json(include_url=False))) from None


def _family(raw: str) -> str:
    if raw not in ("cpu", "gpu", "inf2"):
        raise ApiError(422, "invalid_family", f"family '{raw}' is not one of cpu, gpu, inf2")
    return raw


def _state():
    return current_app.extensions["fleet"]


@contextmanager
def _staged(upload, weights: bool = False) -> Iterator[StagedArtifact]:
    """The uploaded file as a staged artifact (or weights file). The app's request class already streamed it
    to a hashed temp file (control_plane/uploads.py); any other stream is copied to one in chunks."""
    state = _state()
    stream = upload.stream
    own = not isinstance(stream, HashingTempFile)
    if own:
        stream = copy_to_staging(stream, state.settings.staging_dir)
    try:
        stream.flush()
        stage = state.registry.stage_weights if weights else state.registry.stage
        yield stage(Path(stream.name), stream.sha256.hexdigest(), stream.size)
    finally:
        if own:
            stream.close()


@contextmanager
def _scratch() -> Iterator[Path]:
    staging = _state().settings.staging_dir
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging, prefix="s3-") as directory:
        yield Path(directory)


def _render(name: str) -> dict:
    state = _state()
    with state.sessions() as session:
        model = session.get(Model, name)
        if model is None:
            raise not_found("model", name)
        version = session.get(ModelVersion, (name, model.current_version))
        return model_out(model, version, pack_facts(session, [model.pack]),
                         architecture_refs(session, [version.architecture]))


@bp.post("")
@bp.input(UploadForm, location="form_and_files", arg_name="form")
@bp.output(ModelOut, status_code=201, description="registered (200 if the same content was already)")
@bp.doc(summary="Register a model by uploading its artifact (TorchScript .pt or torch.export .pt2)",
        responses=[200, 201, 400, 409, 413, 422, 503])
def register(form):
    state = _state()
    signature, family = _signature(form["signature"]), _family(form.get("family", "cpu"))
    architecture = form.get("architecture")
    with _staged(form["artifact"], weights=bool(architecture)) as artifact:
        if architecture:
            registered = state.registry.register_weights(form["name"], artifact, architecture, signature, family)
        else:
            registered = state.registry.register(form["name"], artifact, signature, family)
    state.reconciler.nudge()
    return _render(form["name"]), 201 if registered.created else 200


@bp.post("/from-s3")
@bp.input(RegisterFromS3, arg_name="body")
@bp.output(ModelOut, status_code=201)
@bp.doc(summary="Register a model whose artifact is already in the configured bucket",
        responses=[200, 201, 400, 409, 413, 422, 503])
def register_from_s3(body: RegisterFromS3):
    state = _state()
    with _scratch() as directory:
        artifact = state.registry.fetch_s3_uri(body.s3_uri, directory)
        registered = state.registry.register(body.name, artifact, body.signature, body.family)
    state.reconciler.nudge()
    return _render(body.name), 201 if registered.created else 200


@bp.get("")
@bp.input(ModelListQuery, location="query", arg_name="query")
@bp.output(ModelPage)
@bp.doc(summary="List models, with paging and filters")
def list_models(query: ModelListQuery):
    # One page costs what a page is: the filters (status included, as SQL) pick and count the rows, and
    # only the page's rows and their packs are read and rendered. (A comment: a docstring here would
    # become the operation's description in the OpenAPI document.)
    with _state().sessions() as session:
        _one_snapshot(session)
        live, status = status_column()
        current = (ModelVersion.model == Model.name) & (ModelVersion.version == Model.current_version)

        def filtered(statement):
            statement = statement.join(ModelVersion, current).outerjoin(live, live.c.pack == Model.pack)
            if query.family:
                statement = statement.where(Model.family == query.family)
            if query.pack:
                statement = statement.where(Model.pack == query.pack)
            if query.name_prefix:
                statement = statement.where(Model.name.startswith(query.name_prefix, autoescape=True))
            if query.status:
                statement = statement.where(status == query.status)
            return statement

        total = session.scalar(filtered(select(func.count()).select_from(Model)))
        rows = session.execute(filtered(select(Model, ModelVersion)).order_by(Model.name)
                               .offset((query.page - 1) * query.per_page).limit(query.per_page)).all()
        facts = pack_facts(session, (model.pack for model, _ in rows))
        architectures = architecture_refs(session, (v.architecture for _, v in rows))
        items = [model_out(m, v, facts, architectures) for m, v in rows]
        return {"items": items, "page": query.page, "per_page": query.per_page, "total": total}


def _one_snapshot(session: Session) -> None:
    """Count, page and packs read from one snapshot, so a model counted as servable is rendered servable.
    SQLite's read transaction already is one; PostgreSQL's default (read committed) is not."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


@bp.get("/<string:name>")
@bp.output(ModelOut)
@bp.doc(summary="A model, its status and where it is served", responses=[200, 404])
def get_model(name: str):
    return _render(name)


@bp.delete("/<string:name>")
@bp.output(Message)
@bp.doc(summary="Delete a model: it leaves its pack, its artifacts leave S3", responses=[200, 404])
def delete_model(name: str):
    state = _state()
    state.registry.delete(name)
    state.reconciler.nudge()
    return {"message": f"model '{name}' deleted"}


@bp.get("/<string:name>/versions")
@bp.output(VersionList)
@bp.doc(summary="Versions of a model", responses=[200, 404])
def list_versions(name: str):
    with _state().sessions() as session:
        if session.get(Model, name) is None:
            raise not_found("model", name)
        versions = session.scalars(select(ModelVersion).where(ModelVersion.model == name)
                                   .order_by(ModelVersion.version))
        return {"items": [{"model": v.model, "version": v.version, "sha256": v.sha256, "bytes": v.bytes,
                           "format": v.format, "created_at": v.created_at} for v in versions]}


@bp.post("/<string:name>/versions")
@bp.input(VersionForm, location="form_and_files", arg_name="form")
@bp.output(VersionOut, status_code=201)
@bp.doc(summary="Upload a new version; it becomes current and its pack reloads",
        responses=[200, 201, 404, 413, 422])
def add_version(name: str, form):
    state = _state()
    signature = _signature(form["signature"])
    with _staged(form["artifact"]) as artifact:
        registered = state.registry.add_version(name, artifact, signature)
    state.reconciler.nudge()
    v = registered.version
    return ({"model": v.model, "version": v.version, "sha256": v.sha256, "bytes": v.bytes, "format": v.format,
             "created_at": v.created_at}, 201 if registered.created else 200)


@bp.post("/<string:name>/load")
@bp.output(ModelOut, status_code=202)
@bp.doc(summary="Declare the model servable; the reconciler loads its pack", responses=[202, 404])
def load(name: str):
    state = _state()
    state.registry.set_desired(name, "loaded")
    state.reconciler.nudge()
    return _render(name)


@bp.post("/<string:name>/unload")
@bp.output(ModelOut, status_code=202)
@bp.doc(summary="Declare the model not servable; it leaves its pack's loaded members",
        responses=[202, 404])
def unload(name: str):
    state = _state()
    state.registry.set_desired(name, "unloaded")
    state.reconciler.nudge()
    return _render(name)
