"""Code-free actions and the services manager, through real apps and a real upstream.

The upstream is a real HTTP server on a loopback address (tests/upstream.py) that counts
what reaches it; the app is called over its HTTP interface (Flask's test client running
the whole call chain); rows are read back from the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.base.errors import BootError
from core.transports.http import extension
from managers.action_discovery_manager import ActionDiscoveryManager
from managers.db.manager import DatabaseManager
from tests.conftest import MakeApp, WriteModule
from tests.upstream import Answer, Upstream

ALLOW = {"SB_SERVICES__ALLOW_NETWORKS": "127.0.0.1/32"}

# The seed's own example, unchanged.
SEED_ACTIONS = """
actions:
  log_system_activity:
    description: "Log system activity for analytics"
    type: "database"
    operation: "insert"
    collection: "system_activities"
    required_params: ["activity_type", "source"]
    optional_params: ["metadata", "timestamp"]
  send_external_notification:
    description: "Send a notification to external service"
    type: "external_api"
    url: "https://api.notifications.service/send"
    method: "POST"
    required_params: ["message", "recipient"]
    optional_params: ["priority", "channel"]
config:
  default_timeout: 30
  max_retries: 3
  cache_enabled: true
  cache_ttl: 300
"""


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def call(client: FlaskClient, action: str, body: Mapping[str, Any] | None = None, **kw: Any) -> Any:
    return client.post(f"/api/v1/actions/{action}", json=dict(body or {}), **kw)


def data(response: Any) -> Any:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["data"]


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    assert body["type"] == f"/problems/{slug}"
    return body


def database(app: Flask) -> Any:
    return extension(app).app_manager.get(DatabaseManager).documents


Boot = Callable[..., Flask]


@pytest.fixture
def boot(make_app: MakeApp, write_module: WriteModule) -> Boot:
    """An app with module ``name`` written from ``files`` (``{PORT}``/``{URL}`` filled)."""

    def make(
        files: Mapping[str, str],
        env: Mapping[str, str] | None = None,
        *,
        name: str = "shop",
        upstream: Upstream | None = None,
    ) -> Flask:
        filled = {
            f: text.replace("{URL}", upstream.url if upstream else "").replace(
                "{PORT}", str(upstream.port if upstream else 0)
            )
            for f, text in files.items()
        }
        parent = write_module(name, filled, parent=f"modules_of_{name}")
        return make_app({"MODULES_PATH": str(parent), **(env or {})})

    return make


# --- the seed's format ---------------------------------------------------------------


def test_the_seed_example_loads_unchanged_and_runs(boot: Boot) -> None:
    app = boot(
        {
            "actions.yaml": SEED_ACTIONS.replace(
                'description: "Log', 'auth: public\n    description: "Log'
            )
        }
    )
    client = app.test_client()
    registry = extension(app).app_manager.get(ActionDiscoveryManager)
    log, notify_action = (
        registry.lookup(f"shop.{name}")
        for name in ("log_system_activity", "send_external_notification")
    )
    assert log is not None and notify_action is not None
    assert log.spec.describe()["params"]["required"] == ["activity_type", "source"]
    notify = notify_action.spec
    assert notify.timeout == 30 and notify.cache is None  # a POST: never cached

    stored = data(
        call(
            client,
            "shop.log_system_activity",
            {"activity_type": "login", "source": "web", "metadata": {"a": 1}},
        )
    )
    row = database(app).collection("system_activities").find_one({"_id": stored["_id"]})
    assert row == {
        "_id": stored["_id"],
        "_version": 1,
        "activity_type": "login",
        "source": "web",
        "metadata": {"a": 1},
    }
    problem(call(client, "shop.log_system_activity", {"activity_type": "login"}), 422, "validation")
    problem(
        call(client, "shop.log_system_activity", {"activity_type": "a", "source": "b", "extra": 1}),
        422,
        "validation",
    )
    # An untyped param takes any JSON value, but an object never smuggles operators in.
    problem(
        call(client, "shop.log_system_activity", {"activity_type": {"$where": "1"}, "source": "b"}),
        422,
        "validation",
    )
    assert database(app).collection("system_activities").count() == 1

    # The notification host does not resolve on this machine: 503, after max_retries.
    headers = register(client, "ann@example.com")
    unreachable = call(
        client,
        "shop.send_external_notification",
        {"message": "hi", "recipient": "r"},
        headers=headers,
    )
    problem(unreachable, 503, "upstream-unavailable")


SEED_CRUD = """
config:
  cache_enabled: true
  cache_ttl: 300
actions:
  add:
    type: database
    operation: insert
    collection: books
    auth: public
    required_params: [title, shelf]
    parameter_types: {title: string, shelf: int}
  list:
    type: database
    operation: find
    collection: books
    auth: public
    optional_params: [shelf]
    parameter_types: {shelf: int}
  one:
    type: database
    operation: find_one
    collection: books
    auth: public
    required_params: [title]
  how_many:
    type: database
    operation: count
    collection: books
    auth: public
    optional_params: [shelf]
  move:
    type: database
    operation: update
    collection: books
    auth: public
    required_params: [_id]
    optional_params: [shelf, title]
    parameter_types: {shelf: int}
  drop:
    type: database
    operation: delete
    collection: books
    auth: public
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("postgres_url")
    return {"DATABASE_URL": url}


def test_seed_database_operations(boot: Boot, database_env: dict[str, str]) -> None:
    app = boot({"actions.yaml": SEED_CRUD}, database_env)
    client = app.test_client()

    def act(name: str, body: Mapping[str, Any] | None = None) -> Any:
        return call(client, f"shop.{name}", body)

    first = data(act("add", {"title": "Dune", "shelf": 1}))["_id"]
    data(act("add", {"title": "Emma", "shelf": 2}))
    assert sorted(b["title"] for b in data(act("list"))) == ["Dune", "Emma"]
    assert [b["title"] for b in data(act("list", {"shelf": 2}))] == ["Emma"]
    assert data(act("how_many", {"shelf": 1})) == {"count": 1}
    assert data(act("one", {"title": "Dune"}))["_id"] == first
    problem(act("one", {"title": "Nope"}), 404, "not-found")

    # Cached reads (cache_enabled) see code-free writes at once.
    assert data(act("move", {"_id": first, "shelf": 2})) == {"updated": True}
    assert data(act("how_many", {"shelf": 2})) == {"count": 2}
    assert [b["title"] for b in data(act("list", {"shelf": 1}))] == []
    problem(act("move", {"_id": "missing", "shelf": 3}), 404, "not-found")
    problem(act("move", {"_id": first}), 422, "validation")  # nothing to change
    problem(act("move", {"shelf": 3}), 422, "validation")  # _id is required

    assert data(act("drop", {"_id": first})) == {"deleted": True}
    problem(act("drop", {"_id": first}), 404, "not-found")
    assert [b["title"] for b in database(app).collection("books").find({})] == ["Emma"]


# --- the typed format ----------------------------------------------------------------

TYPED_DB = """
actions:
  shelve:
    type: database
    operation: update
    collection: books
    filter: {_id: $params.id, owner: $caller.id}
    changes: {$set: {shelf: $params.shelf}}
    params:
      id: {type: string, required: true}
      shelf: {type: string, maxLength: 40, required: true}
  mine:
    type: database
    operation: find
    collection: books
    filter: {owner: $caller.id, shelf: $params.shelf}
    sort: {title: 1}
    limit: 2
    cache: 60s
    params: {shelf: {type: string}}
  donate:
    type: database
    operation: insert
    collection: books
    document: {title: $params.title, owner: $caller.id, shelf: unsorted}
    params: {title: {type: string, required: true}}
"""


def register(client: FlaskClient, email: str) -> dict[str, str]:
    body = {"email": email, "password": "correct horse battery staple"}
    assert call(client, "auth.register", body).status_code == 200
    token = data(call(client, "auth.login", body))["access_token"]
    return {"Authorization": f"Bearer {token}"}


def test_typed_templates_keep_callers_to_their_own_records(
    boot: Boot, database_env: dict[str, str]
) -> None:
    app = boot({"actions.yaml": TYPED_DB}, database_env)
    client = app.test_client()
    ann, bob = register(client, "ann@example.com"), register(client, "bob@example.com")
    book = data(call(client, "shop.donate", {"title": "Dune"}, headers=ann))["_id"]
    data(call(client, "shop.donate", {"title": "Emma"}, headers=ann))
    data(call(client, "shop.donate", {"title": "Anna"}, headers=ann))
    stored = database(app).collection("books").find_one({"_id": book})
    assert stored is not None and stored["shelf"] == "unsorted" and stored["owner"] != ""

    # Bob cannot move Ann's book: the filter holds his id, so it is not found.
    problem(call(client, "shop.shelve", {"id": book, "shelf": "x"}, headers=bob), 404, "not-found")
    # Operators in a string param are refused by the param's type; they never reach a filter.
    problem(
        call(client, "shop.shelve", {"id": {"$ne": None}, "shelf": "x"}, headers=bob),
        422,
        "validation",
    )
    assert data(call(client, "shop.shelve", {"id": book, "shelf": "sci-fi"}, headers=ann)) == {
        "updated": True
    }
    assert database(app).collection("books").find_one({"_id": book})["shelf"] == "sci-fi"

    # find: sort and limit as declared, per caller (the cache key holds the caller).
    assert [b["title"] for b in data(call(client, "shop.mine", {}, headers=ann))] == [
        "Anna",
        "Dune",
    ]
    assert data(call(client, "shop.mine", {}, headers=bob)) == []
    assert [
        b["title"] for b in data(call(client, "shop.mine", {"shelf": "sci-fi"}, headers=ann))
    ] == ["Dune"]
    problem(call(client, "shop.mine", {}), 401, "unauthenticated")


DB = "type: database, collection: books"
P_X = "params: {x: {type: string}}"


@pytest.mark.parametrize(
    ("declaration", "field", "words"),
    [
        ("type: database, operation: find, collection: sb_users", "collection", "runtime's own"),
        (f"{DB}, operation: insert, cache: 10s, {P_X}", "cache", "only read-only"),
        (f"{DB}, operation: delete, filter: {{_id: $params.x}}, {P_X}", "filter", "widen the"),
        (f"{DB}, operation: find, filter: {{a: $param.x}}, {P_X}", "filter.a", "not a reference"),
        (f"{DB}, operation: find, filter: {{a: $params.y}}, {P_X}", "filter.a", "no param 'y'"),
        (f"{DB}, operation: find, filter: {{a: {{$regex: $params.x}}}}, {P_X}", "filter", "$regex"),
        (f"{DB}, operation: find, auth: public, filter: {{o: $caller.id}}", "auth", "anonymous"),
        (f"{DB}, operation: find, sort: {{title: up}}", "sort", "1 (ascending)"),
        (f"{DB}, operation: count, limit: 5", "limit", "takes no 'limit'"),
        (f"{DB}, operation: update, filter: {{_id: x}}", "changes", "needs changes"),
        ("type: http, service: nowhere, method: GET", "service", "declares no service"),
        ("type: external_api, url: 'http://127.0.0.1:9/x'", "url", "services.allow_networks"),
        ("type: external_api, url: 'http://169.254.169.254/latest'", "url", "link-local"),
        ("type: external_api, url: 'ftp://example.com/x'", "url", "http:// or https://"),
        ("type: external_api, url: 'http://127.1/x'", "url", "loopback"),
        ("type: external_api, url: 'http://0x7f.0.0.1/x'", "url", "loopback"),
        ("type: external_api, url: 'http://[2002:a9fe:a9fe::1]/x'", "url", "link-local"),
        ("type: external_api, url: 'http://[::1'", "url", "not a usable URL"),
        ("type: http, service: s, method: GET, path: '//evil.example/x'", "path", "does not match"),
    ],
)
def test_declaration_mistakes_are_load_errors(
    make_app: MakeApp, write_module: WriteModule, declaration: str, field: str, words: str
) -> None:
    parent = write_module("shop", {"actions.yaml": f"actions:\n  broken: {{{declaration}}}\n"})
    with pytest.raises(BootError) as failed:
        make_app({"MODULES_PATH": str(parent)})
    [found] = [p for p in failed.value.problems if p.action == "shop.broken"]
    assert found.field == field and words in found.message, found


def test_handlers_of_other_modules_cannot_reach_the_runtimes_collections(boot: Boot) -> None:
    handlers = "def peek(ctx):\n    return ctx.db.collection('sb_users').count()\n"
    actions = "actions:\n  peek:\n    handler: handlers:peek\n    auth: public\n"
    app = boot({"actions.yaml": actions, "handlers.py": handlers})
    client = app.test_client()
    register(client, "ann@example.com")
    problem(call(client, "shop.peek"), 500, "internal")
    trusted = boot(
        {"actions.yaml": actions, "handlers.py": handlers, "module.yaml": "requires: [db]\n"},
        name="ops",
    )
    assert data(call(trusted.test_client(), "ops.peek")) == 1  # ann, in the same database


COLUMNS = "(_id TEXT PRIMARY KEY, _version INTEGER NOT NULL, doc TEXT NOT NULL)"


def test_earlier_users_and_audit_collections_are_renamed_with_their_index(
    make_app: MakeApp, tmp_path: Path
) -> None:
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as old:  # what 0.1 left: doc_users with its unique index
        old.execute(f'CREATE TABLE "doc_users" {COLUMNS}')
        old.execute(
            'CREATE UNIQUE INDEX "ix_users_email" ON "doc_users" (json_extract(doc, \'$.email\'))'
        )
        old.execute(
            "INSERT INTO doc_users VALUES (?, 1, ?)",
            ["u1", '{"email": "old@example.com", "roles": []}'],
        )
        old.execute(f'CREATE TABLE "doc_audit" {COLUMNS}')
    app = make_app()
    users = database(app).collection("sb_users")
    assert users.find_one({"_id": "u1"})["email"] == "old@example.com"
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
            )
        }
    assert {"doc_sb_users", "doc_sb_audit"} <= tables and not {"doc_users", "doc_audit"} & tables
    assert "ix_sb_users_email" in indexes and "ix_users_email" not in indexes
    body = {"email": "old@example.com", "password": "correct horse battery staple"}
    problem(call(app.test_client(), "auth.register", body), 409, "conflict")  # still unique


# --- http actions and their protections -----------------------------------------------

SERVICE = """
services:
  supplier:
    base_url: {URL}/v2
    timeout: 1s
    retries: 2
    breaker: {failures: 3, reset: 0.5s}
"""
HTTP_ACTIONS = """
actions:
  price:
    type: http
    service: supplier
    method: GET
    path: /items/{sku}/price
    query: {currency: $params.currency}
    auth: public
    params: {sku: {type: string, required: true}, currency: {type: string, default: EUR}}
  order:
    type: http
    service: supplier
    method: POST
    path: /orders
    auth: public
    params:
      sku: {type: string, required: true}
      count: {type: integer, minimum: 1, required: true}
  quote:
    handler: handlers:quote
    auth: public
    params: {sku: {type: string, required: true}}
"""
HANDLERS = """
def quote(ctx, *, sku):
    answer = ctx.services.supplier.get("/quotes", params={"sku": sku}, deadline=ctx.deadline)
    return {"status": answer.status, "quote": answer.json()}
"""


@pytest.fixture
def shop(boot: Boot, upstream: Upstream) -> Callable[..., FlaskClient]:
    def make(service: str = SERVICE, env: Mapping[str, str] | None = None) -> FlaskClient:
        files = {"module.yaml": service, "actions.yaml": HTTP_ACTIONS, "handlers.py": HANDLERS}
        return boot(files, {**ALLOW, **(env or {})}, upstream=upstream).test_client()

    return make


def test_typed_http_fills_the_path_encoded_and_keeps_the_host(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    client = shop()
    answer = data(call(client, "shop.price", {"sku": "A 1"}))
    assert answer["path"] == "/v2/items/A%201/price" and answer["query"] == {"currency": ["EUR"]}
    for hostile in ("../../admin", "x@evil.example", "a/b?c=d#e", "//evil.example"):
        sent = data(call(client, "shop.price", {"sku": hostile, "currency": "$ne"}))
        assert sent["path"].startswith("/v2/items/") and sent["path"].endswith("/price")
        assert sent["path"].count("/") == 4, sent  # one segment, whatever the value
        assert sent["query"] == {"currency": ["$ne"]}
    for dots in ("..", ".", ""):
        problem(call(client, "shop.price", {"sku": dots}), 422, "validation")
    posted = data(call(client, "shop.order", {"sku": "A1", "count": 2}))
    assert posted["method"] == "POST" and posted["path"] == "/v2/orders"
    assert upstream.seen[-1].json() == {"sku": "A1", "count": 2}
    assert data(call(client, "shop.quote", {"sku": "A1"}))["quote"]["query"] == {"sku": ["A1"]}


def test_what_the_document_says_a_path_param_takes_is_what_it_takes(
    shop: Callable[..., FlaskClient],
) -> None:
    """schemathesis's 'schema-valid request rejected' check over the typed http action: the
    document says a path param cannot be empty, '.' or '..', so no valid case is a 422."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, given
    from schemathesis import Case, GenerationMode
    from schemathesis.checks import positive_data_acceptance

    app = shop().application
    listed = app.test_client().get("/api/v1/actions").get_json()["data"]
    sku = next(a for a in listed if a["name"] == "shop.price")["params"]["properties"]["sku"]
    assert sku == {"type": "string", "minLength": 1, "not": {"enum": ["", ".", ".."]}}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operation = schema["/api/v1/actions/shop.price"]["POST"]

    @hypothesis.seed(7)
    @hypothesis.settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def ask(case: Case[Any]) -> None:
        case.call_and_validate(checks=[positive_data_acceptance])

    ask()


def test_an_upstream_not_json_404_and_4xx(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    client = shop()
    upstream.script = lambda seen: Answer(200, b"plain words", {"Content-Type": "text/plain"})
    assert data(call(client, "shop.price", {"sku": "a"})) == {"status": 200, "text": "plain words"}
    upstream.script = lambda seen: Answer(404, {"error": "upstream-internal-detail"})
    body = problem(call(client, "shop.price", {"sku": "a"}), 404, "not-found")
    assert "upstream-internal-detail" not in str(body)
    upstream.script = lambda seen: Answer(400, {"error": "upstream-internal-detail"})
    body = problem(call(client, "shop.order", {"sku": "a", "count": 1}), 502, "upstream-error")
    assert "upstream-internal-detail" not in str(body)


def test_loopback_is_refused_until_allowed(boot: Boot, upstream: Upstream) -> None:
    files = {"module.yaml": SERVICE, "actions.yaml": HTTP_ACTIONS, "handlers.py": HANDLERS}
    with pytest.raises(BootError) as refused:
        boot(files, upstream=upstream)
    [found] = refused.value.problems
    assert (
        found.field == "services.supplier.base_url" and "services.allow_networks" in found.message
    )
    assert "loopback" in found.message
    assert upstream.count() == 0


def test_a_name_resolving_to_loopback_is_refused_without_a_request(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    # localhost resolves to 127.0.0.1, which is allowed only as a literal network here:
    # the allow list names 127.0.0.2/32, so the address localhost resolves to is refused.
    client = shop(
        SERVICE.replace("{URL}", f"http://localhost:{upstream.port}"),
        {"SB_SERVICES__ALLOW_NETWORKS": "127.0.0.2/32"},
    )
    body = problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
    assert "not an allowed destination" in body["detail"]
    assert upstream.count() == 0


def test_redirects_are_off_and_a_redirect_to_loopback_is_refused(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    hidden = Upstream("127.0.0.2")  # loopback, not in the allow list
    try:
        upstream.script = lambda seen: Answer(302, b"", {"Location": f"{hidden.url}/secret"})
        client = shop()
        body = problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
        assert "redirect" in body["detail"]
        following = shop(SERVICE + "    redirects: 3\n    headers: {X-Api-Key: k-0123456789}\n")
        body = problem(call(following, "shop.price", {"sku": "a"}), 502, "upstream-error")
        assert "another origin" in body["detail"]
        assert hidden.count() == 0
        # Another origin is refused even where the address is allowed: the service's
        # headers never leave it.
        elsewhere = Upstream()
        try:
            upstream.script = lambda seen: Answer(302, b"", {"Location": f"{elsewhere.url}/x"})
            problem(call(following, "shop.price", {"sku": "a"}), 502, "upstream-error")
            assert elsewhere.count() == 0
        finally:
            elsewhere.close()
        # A redirect that stays on allowed ground is followed.
        upstream.script = lambda seen: (
            Answer(302, b"", {"Location": "/v2/moved"})
            if seen.path != "/v2/moved"
            else Answer(body={"moved": True})
        )
        assert data(call(following, "shop.price", {"sku": "a"})) == {"moved": True}
    finally:
        hidden.close()


def test_retries_only_idempotent_methods_on_5xx(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    client = shop()
    answers = iter([Answer(503), Answer(502), Answer(body={"price": 3})])
    upstream.script = lambda seen: next(answers)
    assert data(call(client, "shop.price", {"sku": "a"})) == {"price": 3}
    assert upstream.count() == 3  # two retries, then the answer

    upstream.seen.clear()
    upstream.script = lambda seen: Answer(503, b"upstream stack trace")
    body = problem(call(client, "shop.order", {"sku": "a", "count": 1}), 502, "upstream-error")
    assert upstream.count() == 1  # a POST may have been applied: never sent twice
    assert "stack trace" not in str(body)

    upstream.seen.clear()
    problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
    assert upstream.count() == 3  # the first try and two retries


def test_an_answer_that_trickles_in_is_cut_at_the_timeout(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    client = shop(
        SERVICE.replace("retries: 2", "retries: 0").replace("timeout: 1s", "timeout: 0.5s")
    )
    upstream.script = lambda seen: Answer(body=b'"' + b"x" * 30 + b'"', drip=0.1)
    started = time.monotonic()
    problem(call(client, "shop.price", {"sku": "a"}), 504, "upstream-timeout")
    assert time.monotonic() - started < 1.2


def test_a_body_that_cannot_be_decoded_is_a_502(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    client = shop()
    upstream.script = lambda seen: Answer(
        body=b"not gzip at all", headers={"Content-Encoding": "gzip"}
    )
    body = problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
    assert "cannot be decoded" in body["detail"]


def test_calls_past_their_deadline_send_nothing_and_do_not_open_the_breaker(
    boot: Boot, upstream: Upstream
) -> None:
    handlers = (
        HANDLERS
        + """

import time
from core.base.errors import UpstreamTimeout


def late(ctx):
    for _ in range(5):
        try:
            ctx.services.supplier.get("/late", deadline=time.monotonic() - 1)
        except UpstreamTimeout:
            pass
    return ctx.services.supplier.get("/on-time").json()
"""
    )
    actions = HTTP_ACTIONS + "  late:\n    handler: handlers:late\n    auth: public\n"
    files = {"module.yaml": SERVICE, "actions.yaml": actions, "handlers.py": handlers}
    client = boot(files, ALLOW, upstream=upstream).test_client()
    assert data(call(client, "shop.late"))["path"] == "/v2/on-time"
    assert upstream.count() == 1


def test_a_breaker_that_opened_keeps_its_reset_time() -> None:
    from managers.services.rules import Breaker

    now = [0.0]
    breaker = Breaker(failures=1, reset=10.0, clock=lambda: now[0])
    assert breaker.admit() and breaker.admit()  # two calls in flight
    breaker.failed()  # the first fails: open at 0
    now[0] = 5.0
    breaker.failed()  # the second, admitted before, does not push the reset to 15
    now[0] = 10.5
    assert breaker.state == "half_open" and breaker.admit() and not breaker.admit()
    breaker.succeeded()
    states = {breaker.state}
    assert states == {"closed"}


def test_a_slow_upstream_is_a_504(shop: Callable[..., FlaskClient], upstream: Upstream) -> None:
    client = shop(
        SERVICE.replace("retries: 2", "retries: 0").replace("timeout: 1s", "timeout: 0.3s")
    )
    upstream.script = lambda seen: Answer(body={"late": True}, delay=1.0)
    started = time.monotonic()
    problem(call(client, "shop.price", {"sku": "a"}), 504, "upstream-timeout")
    assert time.monotonic() - started < 0.9


def test_a_refused_connection_is_a_503(boot: Boot) -> None:
    closed = Upstream()
    closed.close()  # nothing listens on its port now
    files = {"module.yaml": SERVICE, "actions.yaml": HTTP_ACTIONS, "handlers.py": HANDLERS}
    client = boot(files, ALLOW, upstream=closed).test_client()
    problem(call(client, "shop.order", {"sku": "a", "count": 1}), 503, "upstream-unavailable")


def test_the_breaker_opens_probes_and_closes(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    client = shop(SERVICE.replace("retries: 2", "retries: 0"))
    upstream.script = lambda seen: Answer(500)
    for _ in range(3):
        problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
    assert upstream.count() == 3
    body = problem(call(client, "shop.price", {"sku": "a"}), 503, "upstream-unavailable")
    assert "circuit breaker" in body["detail"] and upstream.count() == 3  # no request
    ready = client.get("/health/ready").get_json()["checks"]["services"]
    assert ready["status"] == "degraded" and ready["services"]["supplier"] == "open"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'switchboard_upstream_breaker_state{service="supplier"} 2.0' in metrics

    time.sleep(0.6)  # reset: one probe goes through; it fails: open again
    problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
    problem(call(client, "shop.price", {"sku": "a"}), 503, "upstream-unavailable")
    assert upstream.count() == 4

    time.sleep(0.6)
    upstream.script = Upstream.echo
    assert data(call(client, "shop.price", {"sku": "a"}))["path"] == "/v2/items/a/price"
    assert (
        client.get("/health/ready").get_json()["checks"]["services"]["services"]["supplier"]
        == "closed"
    )
    assert data(call(client, "shop.price", {"sku": "b"}))["path"] == "/v2/items/b/price"


def test_answers_are_capped(shop: Callable[..., FlaskClient], upstream: Upstream) -> None:
    client = shop(env={"SB_SERVICES__MAX_RESPONSE_BYTES": "1000"})
    upstream.script = lambda seen: Answer(body=b'"' + b"x" * 2000 + b'"')
    body = problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
    assert "1000 bytes" in body["detail"]


def test_operator_config_overrides_a_service_key_by_key(
    shop: Callable[..., FlaskClient], upstream: Upstream
) -> None:
    other = Upstream()
    try:
        client = shop(
            env={
                "SB_SERVICES__SUPPLIER__BASE_URL": f"{other.url}/v3",
                "SB_SERVICES__SUPPLIER__HEADERS": '{"X-Api-Token": "tok_0123456789abcdef"}',
            }
        )
        assert data(call(client, "shop.price", {"sku": "a"}))["path"] == "/v3/items/a/price"
        assert other.seen[-1].headers["x-api-token"] == "tok_0123456789abcdef"
        assert upstream.count() == 0
        config = client.application
        assert extension(config).app_manager.config.settings["services.supplier.headers"].secret
    finally:
        other.close()


def test_reserved_and_duplicate_service_names(
    boot: Boot, make_app: MakeApp, write_module: WriteModule
) -> None:
    files = {
        "module.yaml": "services:\n  defaults:\n    base_url: https://example.com\n",
        "actions.yaml": "actions: {}\n",
    }
    with pytest.raises(BootError) as failed:
        boot(files)
    assert any("not a name a service can have" in p.message for p in failed.value.problems)
    with pytest.raises(BootError) as failed:
        boot({"module.yaml": "services:\n  s:\n    base_url: https://example.com\n    retry: 3\n"})
    [found] = failed.value.problems
    assert found.field == "services.s.retry" and "did you mean 'retries'?" in found.message
    assert found.line == 4
    twice = "services:\n  s:\n    base_url: https://example.com\n"
    write_module("one", {"module.yaml": twice}, parent="both")
    parent = write_module("two", {"module.yaml": twice}, parent="both")
    with pytest.raises(BootError) as failed:
        make_app({"MODULES_PATH": str(parent)})
    assert any(
        "declared by module one and by module two" in p.message for p in failed.value.problems
    )


def test_a_secret_header_comes_from_vault_and_never_reaches_the_logs(
    boot: Boot, upstream: Upstream, capfd: pytest.CaptureFixture[str]
) -> None:
    from core.base.logging import flush_logs
    from tests.vault_double import VaultDouble

    vault = VaultDouble().start()
    try:
        token = vault.issue_token()
        # A trailing newline, as secret files often have: the header is sent without it.
        vault.put("switchboard/modules/shop/supplier", {"token": "sk_live_0123456789\n"})
        service = (
            SERVICE
            + "    headers:\n"
            + '      Authorization: {secret: "shop/supplier#token", prefix: "Bearer "}\n'
        )
        files = {
            "module.yaml": "secrets: [shop/*]\n" + service,
            "actions.yaml": HTTP_ACTIONS,
            "handlers.py": HANDLERS,
        }
        env = {**ALLOW, "VAULT_ADDR": vault.url, "VAULT_TOKEN": token, "SB_SECRETS__MOUNTS": ""}
        client = boot(files, env, upstream=upstream).test_client()
        upstream.script = lambda seen: Answer(500)
        problem(call(client, "shop.price", {"sku": "a"}), 502, "upstream-error")
        assert upstream.seen[-1].headers["authorization"] == "Bearer sk_live_0123456789"
        flush_logs()
        assert "sk_live_0123456789" not in capfd.readouterr().err
        outside = service.replace("shop/supplier#token", "other/supplier#token")
        with pytest.raises(BootError) as failed:
            boot(
                {"module.yaml": "secrets: [shop/*]\n" + outside, "actions.yaml": "actions: {}\n"},
                env,
                name="shop2",
                upstream=upstream,
            )
        assert any(
            "not under the module's secrets globs" in p.message for p in failed.value.problems
        )
    finally:
        vault.stop()


def test_cache_hits_and_expiry(boot: Boot, upstream: Upstream) -> None:
    actions = HTTP_ACTIONS.replace(
        "    query: {currency: $params.currency}\n",
        "    query: {currency: $params.currency}\n    cache: 1s\n",
    )
    files = {"module.yaml": SERVICE, "actions.yaml": actions, "handlers.py": HANDLERS}
    client = boot(files, ALLOW, upstream=upstream).test_client()
    first = data(call(client, "shop.price", {"sku": "a"}))
    assert data(call(client, "shop.price", {"sku": "a"})) == first
    assert (
        data(call(client, "shop.price", {"sku": "a", "currency": "EUR"})) == first
    )  # same validated params
    assert upstream.count() == 1
    data(call(client, "shop.price", {"sku": "b"}))
    assert upstream.count() == 2
    operation = client.get("/openapi.json").get_json()["paths"]["/api/v1/actions/shop.price"][
        "post"
    ]
    assert (
        operation["x-switchboard"]["cache"] == 1.0 and "**cached:** 1s" in operation["description"]
    )
    assert {"404", "502", "504"} <= set(operation["responses"])
    data(call(client, "shop.order", {"sku": "a", "count": 1}))
    data(call(client, "shop.order", {"sku": "a", "count": 1}))
    assert upstream.count() == 4  # writes are never cached
    time.sleep(1.1)
    data(call(client, "shop.price", {"sku": "a"}))
    assert upstream.count() == 5


def test_seed_external_api_with_module_config(boot: Boot, upstream: Upstream) -> None:
    actions = """
config:
  default_timeout: 2
  max_retries: 1
  cache_enabled: true
  cache_ttl: 60
actions:
  notify:
    type: external_api
    url: {URL}/send
    method: POST
    auth: public
    required_params: [message, recipient]
    optional_params: [priority]
  status:
    type: external_api
    url: {URL}/status
    auth: public
    optional_params: [verbose]
    parameter_types: {verbose: bool}
"""
    client = boot({"actions.yaml": actions}, ALLOW, upstream=upstream).test_client()
    sent = data(call(client, "shop.notify", {"message": "hi", "recipient": "ann"}))
    assert sent["method"] == "POST" and upstream.seen[-1].json() == {
        "message": "hi",
        "recipient": "ann",
    }
    assert data(call(client, "shop.status", {"verbose": True}))["query"] == {"verbose": ["true"]}
    data(call(client, "shop.status", {"verbose": True}))  # a GET: cached
    assert upstream.count() == 2
    upstream.script = lambda seen: Answer(503)
    problem(
        call(client, "shop.notify", {"message": "hi", "recipient": "ann"}), 502, "upstream-error"
    )
    assert upstream.count() == 3  # max_retries never repeats a POST that reached the upstream
    problem(call(client, "shop.status", {}), 502, "upstream-error")
    assert upstream.count() == 5  # a GET is tried again, max_retries times
