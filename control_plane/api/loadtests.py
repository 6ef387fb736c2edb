"""/api/v1/loadtests: start a locust run against the served models, then read its status and results."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import func, select

from control_plane.db import LoadTest
from control_plane.errors import ApiError, not_found
from control_plane.locking import lock_loadtests, retry_on_conflict, write_transaction
from control_plane.schemas import LoadTestIn, LoadTestList, LoadTestOut

bp = APIBlueprint("loadtests", __name__, url_prefix="/api/v1/loadtests", tag="loadtests")


def _out(test: LoadTest) -> dict:
    return {"id": test.id, "target": test.target, "status": test.status, "spec": test.spec,
            "results": test.results, "error": test.error, "created_at": test.created_at,
            "finished_at": test.finished_at}


@bp.post("")
@bp.input(LoadTestIn, arg_name="body")
@bp.output(LoadTestOut, status_code=202)
@bp.doc(summary="Start a load test (locust, headless) over the servable models",
        description="Bounded by FLEET_LOADTEST_MAX_USERS, _MAX_PROCESSES and _MAX_DURATION_S (422 past them) "
        "and FLEET_LOADTEST_MAX_CONCURRENT runs at once over all replicas (429 with Retry-After past it: the "
        "request is valid and succeeds once a run ends, which is what 429 means; 409 would say the request "
        "itself conflicts with a resource).", responses=[202, 422, 429])
def start(body: LoadTestIn):
    state = current_app.extensions["fleet"]
    settings = state.settings
    over = {field: {"requested": value, "limit": getattr(settings, f"loadtest_max_{field}"),
                    "setting": settings.env_name(f"loadtest_max_{field}")}
            for field, value in (("users", body.users), ("processes", body.processes),
                                 ("duration_s", body.duration_s))
            if value > getattr(settings, f"loadtest_max_{field}")}
    if over:
        raise ApiError(422, "loadtest_too_large", "the load test exceeds this control plane's limits: " + "; ".join(
            f"{field} {o['requested']} > {o['limit']} ({o['setting']})" for field, o in over.items()), over)

    def attempt() -> dict:
        with write_transaction(state.sessions) as session:
            lock_loadtests(session)
            # A run whose replica died stays 'running' in the table; past its longest possible life it no
            # longer counts, so a crash cannot block load tests for ever.
            stale = datetime.now(UTC) - timedelta(seconds=settings.loadtest_max_duration_s + 300)
            active = session.scalar(select(func.count()).select_from(LoadTest).where(
                LoadTest.status.in_(("pending", "running")), LoadTest.created_at > stale))
            if active >= settings.loadtest_max_concurrent:
                busy = ApiError(429, "too_many_loadtests",
                               f"{active} load test(s) already pending or running; the limit is "
                               f"{settings.loadtest_max_concurrent} (FLEET_LOADTEST_MAX_CONCURRENT). Wait for "
                               "one to finish (GET /api/v1/loadtests) and start again",
                               {"active": active, "limit": settings.loadtest_max_concurrent})
                busy.headers = {"Retry-After": str(min(60, settings.loadtest_max_duration_s))}
                raise busy
            test = LoadTest(target=body.target, spec=body.model_dump(mode="json"), status="pending")
            session.add(test)
            session.flush()
            return _out(test)
    result = retry_on_conflict(attempt)
    state.loadtests.start(result["id"])
    return result, 202


@bp.get("")
@bp.output(LoadTestList)
def list_loadtests():
    with current_app.extensions["fleet"].sessions() as session:
        return {"items": [_out(t) for t in session.scalars(select(LoadTest).order_by(LoadTest.id.desc()))]}


@bp.get("/<int(max=2147483647):loadtest_id>")  # ids are SQL INTEGER (int4 on PostgreSQL); larger: 404
@bp.output(LoadTestOut)
@bp.doc(summary="Status and results of a load test", responses=[200, 404])
def get_loadtest(loadtest_id: int):
    with current_app.extensions["fleet"].sessions() as session:
        test = session.get(LoadTest, loadtest_id)
        if test is None:
            raise not_found("loadtest", str(loadtest_id))
        return _out(test)
