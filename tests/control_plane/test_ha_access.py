"""Who may do what, on a real control-plane process (SQLite and PostgreSQL): every /api/v1 route of the app's
URL map refuses a missing token (401) and a token without its scope (403), /openapi.json names each
route's scope, tokens rotate without a restart, servers outside the allowed networks or repository root
are refused, and load tests are bounded."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from control_plane.app import create_app
from control_plane.auth import SCOPES, scope_for
from control_plane.db import LoadTest, make_engine, make_sessionmaker
from control_plane.settings import Settings

from .conftest import SCOPED_TOKENS, stack_on, write_tokens_file

pytestmark = pytest.mark.slow
ARGUMENT_VALUES = {"name": "scope-probe", "loadtest_id": "1", "deployment_id": "1", "ident": "scope-probe"}


def api_routes(tmp_path_factory) -> list[tuple[str, str, str]]:
    """(method, concrete path, endpoint) for every /api/v1 route, read from the app's own URL map."""
    root = tmp_path_factory.mktemp("urlmap")
    app = create_app(Settings(database_url=f"sqlite:///{root / 'r.db'}", work_dir=root / "w",
                              s3_endpoint_url="http://127.0.0.1:9"), start_reconciler=False)
    app.extensions["fleet"].validator.close()
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = rule.rule
        for argument in rule.arguments:
            start = path.index("<")
            path = path[:start] + ARGUMENT_VALUES[argument] + path[path.index(">", start) + 1:]
        routes += [(method, path, rule.endpoint) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


@pytest.fixture(scope="module")
def bare(tmp_path_factory, seaweed, database_url):
    """A control plane with no Triton servers: enough for access rules, which never reach one."""
    root = tmp_path_factory.mktemp("access")
    stack = stack_on(root, seaweed, "access", servers=(), database=database_url,
                     tokens_file=write_tokens_file(root / "tokens.json", SCOPED_TOKENS), loadtest_max_users=50,
                     loadtest_max_processes=2, loadtest_max_duration_s=60, loadtest_max_concurrent=1)
    with stack.start():
        yield {"cp": stack.control_plane, "root": root, "repos": stack.settings.repository_root,
               "database_url": stack.database_url}


def test_every_route_refuses_a_missing_token_and_a_token_without_its_scope(bare, tmp_path_factory):
    cp = bare["cp"]
    routes = api_routes(tmp_path_factory)
    assert len(routes) >= 15
    for method, path, endpoint in routes:
        needed = scope_for(endpoint, method)
        missing = cp.api(token=None).request(method, cp.url + path, json=[], timeout=30)
        assert missing.status_code == 401, (method, path, missing.text)
        for scope, token in SCOPED_TOKENS.items():
            response = cp.api(token).request(method, cp.url + path, json=[], timeout=30)
            if scope == needed:
                # The right scope gets past authorisation (to validation, 404 or the answer itself).
                assert response.status_code not in (401, 403), (method, path, scope, response.text)
            else:
                assert response.status_code == 403, (method, path, scope, response.text)
                assert response.json()["error"]["details"]["required_scope"] == needed
    # The bootstrap token (FLEET_API_TOKEN) holds every scope.
    assert all(cp.api().request(m, cp.url + p, json=[], timeout=30).status_code not in (401, 403)
               for m, p, _ in routes)


def test_openapi_names_the_scope_of_every_route(bare, tmp_path_factory):
    spec = bare["cp"].api(token=None).get(f"{bare['cp'].url}/openapi.json", timeout=30).json()
    scopes = {(op, path): operation["x-required-scope"] for path, operations in spec["paths"].items()
              if path.startswith("/api/v1") for op, operation in operations.items()}
    routes = api_routes(tmp_path_factory)
    assert len(scopes) == len(routes), "every route of the URL map is documented, and nothing else"
    assert set(scopes.values()) == set(SCOPES)
    for path, operations in spec["paths"].items():
        for operation in operations.values() if path.startswith("/api/v1") else ():
            assert operation["security"] == [{"BearerAuth": []}]
            assert f"`{operation['x-required-scope']}` scope" in operation["description"]


def test_tokens_rotate_without_a_restart(bare):
    cp, path = bare["cp"], bare["root"] / "tokens.json"
    old, new = SCOPED_TOKENS["read"], f"rotated-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    assert cp.api(old).get(f"{cp.url}/api/v1/models", timeout=30).status_code == 200
    try:
        write_tokens_file(path, {**SCOPED_TOKENS, "read": new})
        assert new not in path.read_text() and old not in path.read_text(), "only hashes are stored"
        assert cp.api(new).get(f"{cp.url}/api/v1/models", timeout=30).status_code == 200
        assert cp.api(old).get(f"{cp.url}/api/v1/models", timeout=30).status_code == 403
        # A broken file keeps the last good tokens rather than locking everyone out.
        path.write_text("{not json")
        assert cp.api(new).get(f"{cp.url}/api/v1/models", timeout=30).status_code == 200
    finally:
        write_tokens_file(path, SCOPED_TOKENS)
    assert cp.api(old).get(f"{cp.url}/api/v1/models", timeout=30).status_code == 200


@pytest.mark.parametrize("http_url,grpc_url", [
    ("http://10.0.0.7:8000", "127.0.0.1:8001"),       # a private address outside the allowed networks
    ("http://127.0.0.1:8000", "169.254.169.254:80"),  # the cloud metadata service, via the gRPC address
    ("http://[::ffff:10.0.0.7]:8000", "127.0.0.1:8001"),  # an IPv4 address dressed as IPv6
    ("http://localhost.invalid:8000", "127.0.0.1:8001"),  # a name that does not resolve
])
def test_servers_outside_the_allowed_networks_are_refused_before_being_contacted(bare, http_url, grpc_url):
    cp = bare["cp"]
    response = cp.api(SCOPED_TOKENS["admin"]).post(f"{cp.url}/api/v1/servers", timeout=30, json={
        "name": "outsider", "family": "cpu", "http_url": http_url, "grpc_url": grpc_url,
        "capacity_bytes": 2**30})
    assert response.status_code == 422, response.text
    body = response.json()["error"]
    assert body["code"] == "server_not_allowed"
    assert ("FLEET_ALLOWED_SERVER_NETWORKS" in body["message"]) != ("does not resolve" in body["message"])
    assert cp.api().get(f"{cp.url}/api/v1/servers/outsider", timeout=30).status_code == 404


@pytest.mark.parametrize("repository_path", ["/etc", "relative/repo", "{root}", "{root}/../elsewhere"])
def test_repository_paths_outside_the_root_are_refused_with_the_root_named(bare, repository_path):
    cp, root = bare["cp"], (bare["repos"]).resolve()
    response = cp.api(SCOPED_TOKENS["admin"]).post(f"{cp.url}/api/v1/servers", timeout=30, json={
        "name": "rooted", "family": "cpu", "http_url": "http://localhost:9", "grpc_url": "127.0.0.1:9",
        "capacity_bytes": 2**30, "repository_path": repository_path.format(root=root)})
    assert response.status_code == 422, response.text
    assert str(root) in response.json()["error"]["message"]


def test_an_allowed_address_and_path_pass_the_trust_checks(bare):
    """Inside the networks and below the root, the request goes on to the readiness check (nothing
    answers on port 9, so 503): the checks above refuse what they should and no more."""
    cp = bare["cp"]
    response = cp.api(SCOPED_TOKENS["admin"]).post(f"{cp.url}/api/v1/servers", timeout=30, json={
        "name": "inside", "family": "cpu", "http_url": "http://localhost:9", "grpc_url": "127.0.0.1:9",
        "capacity_bytes": 2**30, "repository_path": str(bare["repos"] / "inside")})
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_unreachable"


@pytest.mark.parametrize("field,value,setting", [("users", 51, "FLEET_LOADTEST_MAX_USERS"),
                                                 ("processes", 3, "FLEET_LOADTEST_MAX_PROCESSES"),
                                                 ("duration_s", 61, "FLEET_LOADTEST_MAX_DURATION_S")])
def test_load_tests_past_their_limits_are_422_naming_the_setting(bare, field, value, setting):
    cp = bare["cp"]
    response = cp.api(SCOPED_TOKENS["loadtest"]).post(f"{cp.url}/api/v1/loadtests", json={field: value},
                                                      timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "loadtest_too_large" and setting in error["message"]
    assert error["details"][field]["limit"] == value - 1


def test_one_load_test_too_many_is_429_with_retry_after(bare):
    engine = make_engine(bare["database_url"])
    try:
        with make_sessionmaker(engine).begin() as session:  # a run in progress (on any replica)
            session.add(LoadTest(target="local", spec={}, status="running", created_at=datetime.now(UTC)))
        cp = bare["cp"]
        response = cp.api(SCOPED_TOKENS["loadtest"]).post(f"{cp.url}/api/v1/loadtests", json={"users": 1},
                                                          timeout=30)
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "too_many_loadtests"
        assert int(response.headers["Retry-After"]) > 0
    finally:
        with engine.begin() as connection:
            connection.execute(text("UPDATE loadtests SET status = 'failed' WHERE status = 'running'"))
        engine.dispose()
