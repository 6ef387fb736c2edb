"""/api/v1/loadtests: start a locust run against the served models, then read its status and results."""
from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import select

from control_plane.db import LoadTest
from control_plane.errors import not_found
from control_plane.schemas import LoadTestIn, LoadTestList, LoadTestOut

bp = APIBlueprint("loadtests", __name__, url_prefix="/api/v1/loadtests", tag="loadtests")


def _out(test: LoadTest) -> dict:
    return {"id": test.id, "target": test.target, "status": test.status, "spec": test.spec,
            "results": test.results, "error": test.error, "created_at": test.created_at,
            "finished_at": test.finished_at}


@bp.post("")
@bp.input(LoadTestIn, arg_name="body")
@bp.output(LoadTestOut, status_code=202)
@bp.doc(summary="Start a load test (locust, headless) over the servable models", responses=[202, 422])
def start(body: LoadTestIn):
    state = current_app.extensions["fleet"]
    with state.sessions.begin() as session:
        test = LoadTest(target=body.target, spec=body.model_dump(mode="json"), status="pending")
        session.add(test)
        session.flush()
        result = _out(test)
    state.loadtests.start(result["id"])
    return result, 202


@bp.get("")
@bp.output(LoadTestList)
def list_loadtests():
    with current_app.extensions["fleet"].sessions() as session:
        return {"items": [_out(t) for t in session.scalars(select(LoadTest).order_by(LoadTest.id.desc()))]}


@bp.get("/<int(max=9223372036854775807):loadtest_id>")  # ids fit SQL BIGINT; larger: 404
@bp.output(LoadTestOut)
@bp.doc(summary="Status and results of a load test", responses=[200, 404])
def get_loadtest(loadtest_id: int):
    with current_app.extensions["fleet"].sessions() as session:
        test = session.get(LoadTest, loadtest_id)
        if test is None:
            raise not_found("loadtest", str(loadtest_id))
        return _out(test)
