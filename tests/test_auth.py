"""Users, login, tokens and API keys through HTTP: who may call what, and clear 401/403s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.transports.http import extension
from managers.db.manager import DatabaseManager
from tests.conftest import MakeApp, WriteModule
from tests.helpers import module_object

PASSWORD = "correct horse battery staple"

GUARDED = """
actions:
  user_only:
    handler: handlers:who
    auth: user
  admin_only:
    handler: handlers:who
    auth: user
    roles: [admin]
  key_only:
    handler: handlers:who
    auth: api_key
    scopes: [reports:read]
  anyone_known:
    handler: handlers:who
    auth: any
    scopes: [reports:read, reports:write]
  open:
    handler: handlers:who
    auth: public
"""
WHO = """
def who(ctx):
    return {"kind": ctx.caller.kind, "id": ctx.caller.id, "roles": sorted(ctx.caller.roles),
            "scopes": sorted(ctx.caller.scopes)}
"""


@pytest.fixture
def app(make_app: MakeApp, write_module: WriteModule) -> Flask:
    parent = write_module("guarded", {"actions.yaml": GUARDED, "handlers.py": WHO})
    return make_app({"MODULES_PATH": str(parent)})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def call(
    client: FlaskClient,
    name: str,
    params: dict[str, Any] | None = None,
    token: str | None = None,
    key: str | None = None,
) -> Any:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["X-API-Key"] = key
    return client.post(f"/api/v1/actions/{name}", json=params or {}, headers=headers)


def register(client: FlaskClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = call(client, "auth.register", {"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]  # type: ignore[no-any-return]


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = call(client, "auth.login", {"email": email, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]  # type: ignore[no-any-return]


def make_admin(app: Flask, client: FlaskClient, email: str) -> str:
    register(client, email)
    db = extension(app).app_manager.get(DatabaseManager).documents
    db.collection("sb_users").update_one({"email": email}, {"$set": {"roles": ["admin"]}})
    return str(login(client, email)["access_token"])


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["type"] == f"/problems/{slug}"
    return body  # type: ignore[no-any-return]


def test_register_login_me(client: FlaskClient) -> None:
    user = register(client, "Ann@Example.com")
    assert user["email"] == "ann@example.com" and user["roles"] == []
    assert "password" not in str(user) and "hash" not in str(user)
    pair = login(client, "ann@example.com")
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
    me = call(client, "auth.me", token=pair["access_token"])
    assert me.status_code == 200 and me.get_json()["data"]["id"] == user["id"]
    who = call(client, "guarded.user_only", token=pair["access_token"]).get_json()["data"]
    assert who == {"kind": "user", "id": user["id"], "roles": [], "scopes": []}


def test_passwords_are_stored_as_argon2id_hashes(app: Flask, client: FlaskClient) -> None:
    register(client, "hash@example.com")
    db = extension(app).app_manager.get(DatabaseManager).documents
    stored = db.collection("sb_users").find_one({"email": "hash@example.com"})
    assert stored is not None
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in str(stored)


def test_an_existing_email_is_409_and_a_weak_password_422(client: FlaskClient) -> None:
    register(client, "dup@example.com")
    problem(
        call(client, "auth.register", {"email": "DUP@example.com", "password": PASSWORD}),
        409,
        "conflict",
    )
    weak = problem(
        call(client, "auth.register", {"email": "w@example.com", "password": "short"}),
        422,
        "validation",
    )
    assert weak["errors"] == [{"path": "/password", "message": "must be at least 12 characters"}]
    assert "short" not in str(weak)
    problem(
        call(client, "auth.register", {"email": "not-an-email", "password": PASSWORD}),
        422,
        "validation",
    )


def test_a_configured_password_rule_applies(make_app: MakeApp) -> None:
    client = make_app({"SB_AUTH__PASSWORD_PATTERN": "[0-9]"}).test_client()
    body = problem(
        call(
            client, "auth.register", {"email": "r@example.com", "password": "no digits here at all"}
        ),
        422,
        "validation",
    )
    assert "[0-9]" in body["errors"][0]["message"]
    assert (
        call(
            client, "auth.register", {"email": "r@example.com", "password": "one digit 1 here"}
        ).status_code
        == 200
    )


def test_a_bad_login_looks_the_same_whether_or_not_the_email_exists(
    app: Flask, client: FlaskClient
) -> None:
    register(client, "known@example.com")
    module = module_object(app, "auth")
    real = module.hasher
    verified: list[str] = []

    class CountingHasher:
        def verify(self, stored: str, password: str) -> bool:
            verified.append(stored)
            return bool(real.verify(stored, password))

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    module.hasher = CountingHasher()
    wrong = call(client, "auth.login", {"email": "known@example.com", "password": "wrong" * 4})
    unknown = call(client, "auth.login", {"email": "nobody@example.com", "password": "x" * 20})
    assert wrong.status_code == unknown.status_code == 401
    one, two = wrong.get_json(), unknown.get_json()
    assert {k: v for k, v in one.items() if k != "request_id"} == {
        k: v for k, v in two.items() if k != "request_id"
    }
    assert one["detail"] == "invalid email or password"
    assert len(verified) == 2  # one Argon2 verify each, the unknown email against a dummy
    assert verified[1] == module.dummy_hash


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b", "bearer"],
)
def test_a_malformed_authorization_header_is_401(client: FlaskClient, header: str) -> None:
    response = client.post("/api/v1/actions/system.ping", headers={"Authorization": header})
    problem(response, 401, "unauthenticated")


def test_garbage_tokens_are_401_never_500(client: FlaskClient) -> None:
    for token in ("abc", "a.b.c", "x" * 5000, "ünïcode.tøken.here", "eyJ.eyJ.sig"):
        problem(call(client, "guarded.user_only", token=token), 401, "unauthenticated")


def test_anonymous_calls_are_401_and_wrong_kinds_or_roles_403(
    app: Flask, client: FlaskClient
) -> None:
    problem(call(client, "guarded.user_only"), 401, "unauthenticated")
    register(client, "plain@example.com")
    token = login(client, "plain@example.com")["access_token"]
    problem(call(client, "guarded.admin_only", token=token), 403, "forbidden")
    problem(call(client, "guarded.key_only", token=token), 403, "forbidden")
    admin = make_admin(app, client, "boss@example.com")
    assert call(client, "guarded.admin_only", token=admin).get_json()["data"]["roles"] == ["admin"]


def test_api_keys_with_scopes(app: Flask, client: FlaskClient) -> None:
    admin = make_admin(app, client, "keys@example.com")
    created = call(
        client, "auth.keys.create", {"name": "ci", "scopes": ["reports:read"]}, token=admin
    )
    assert created.status_code == 200, created.get_json()
    data = created.get_json()["data"]
    raw = data["key"]
    assert raw.startswith(f"sb_{data['id']}_")
    who = call(client, "guarded.key_only", key=raw).get_json()["data"]
    assert who == {"kind": "api_key", "id": data["id"], "roles": [], "scopes": ["reports:read"]}
    # "any" with two scopes: the key has only one of them
    problem(call(client, "guarded.anyone_known", key=raw), 403, "forbidden")
    problem(call(client, "guarded.user_only", key=raw), 403, "forbidden")
    # the listing never shows the secret
    listed = call(client, "auth.keys.list", token=admin).get_json()["data"]
    assert [k["id"] for k in listed] == [data["id"]] and raw not in str(listed)
    assert call(client, "auth.keys.revoke", {"id": data["id"]}, token=admin).status_code == 200
    problem(call(client, "guarded.key_only", key=raw), 401, "unauthenticated")
    problem(call(client, "auth.keys.revoke", {"id": "nope"}, token=admin), 404, "not-found")


def test_bad_api_keys_are_401(client: FlaskClient) -> None:
    for raw in ("nope", "sb_", "sb_abc", "sb_unknownid123_secret", "x" * 3000, "sb_ü_ß"):
        problem(call(client, "guarded.key_only", key=raw), 401, "unauthenticated")


def test_both_credentials_at_once_is_401(client: FlaskClient) -> None:
    problem(call(client, "system.ping", token="a.b.c", key="sb_x_y"), 401, "unauthenticated")


def test_the_listing_shows_each_caller_what_it_may_call(app: Flask, client: FlaskClient) -> None:
    def names(**credentials: str) -> set[str]:
        headers = {}
        if "token" in credentials:
            headers["Authorization"] = f"Bearer {credentials['token']}"
        if "key" in credentials:
            headers["X-API-Key"] = credentials["key"]
        listed = client.get("/api/v1/actions", headers=headers).get_json()["data"]
        return {a["name"] for a in listed if a["name"].startswith("guarded.")}

    assert names() == {"guarded.open"}
    register(client, "lister@example.com")
    user = login(client, "lister@example.com")["access_token"]
    # scopes bind API keys only: a user may call the "any" action that lists them
    assert names(token=user) == {"guarded.open", "guarded.user_only", "guarded.anyone_known"}
    admin = make_admin(app, client, "root@example.com")
    assert names(token=admin) == {
        "guarded.open",
        "guarded.user_only",
        "guarded.admin_only",
        "guarded.anyone_known",
    }
    raw = call(
        client, "auth.keys.create", {"name": "r", "scopes": ["reports:read"]}, token=admin
    ).get_json()["data"]["key"]
    assert names(key=raw) == {"guarded.open", "guarded.key_only"}


def test_refresh_rotates_and_reuse_revokes_the_family(client: FlaskClient) -> None:
    register(client, "rot@example.com")
    first = login(client, "rot@example.com")
    second = call(client, "auth.refresh", {"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    pair = second.get_json()["data"]
    assert pair["refresh_token"] != first["refresh_token"]
    assert call(client, "auth.me", token=pair["access_token"]).status_code == 200
    # presenting the used refresh token again: the whole family is revoked
    problem(
        call(client, "auth.refresh", {"refresh_token": first["refresh_token"]}),
        401,
        "unauthenticated",
    )
    problem(
        call(client, "auth.refresh", {"refresh_token": pair["refresh_token"]}),
        401,
        "unauthenticated",
    )
    problem(call(client, "auth.me", token=pair["access_token"]), 401, "unauthenticated")
    # a refresh token is not an access token
    problem(call(client, "auth.me", token=first["refresh_token"]), 401, "unauthenticated")


def test_logout_revokes_the_session(client: FlaskClient) -> None:
    register(client, "bye@example.com")
    pair = login(client, "bye@example.com")
    other = login(client, "bye@example.com")  # another device, another family
    assert call(client, "auth.logout", token=pair["access_token"]).status_code == 200
    problem(call(client, "auth.me", token=pair["access_token"]), 401, "unauthenticated")
    problem(
        call(client, "auth.refresh", {"refresh_token": pair["refresh_token"]}),
        401,
        "unauthenticated",
    )
    assert call(client, "auth.me", token=other["access_token"]).status_code == 200


def test_promote_applies_from_the_next_token(app: Flask, client: FlaskClient) -> None:
    admin = make_admin(app, client, "first@example.com")
    register(client, "second@example.com")
    before = login(client, "second@example.com")
    promoted = call(
        client, "auth.users.promote", {"email": "second@example.com", "role": "admin"}, token=admin
    )
    assert promoted.get_json()["data"]["roles"] == ["admin"]
    problem(call(client, "guarded.admin_only", token=before["access_token"]), 403, "forbidden")
    refreshed = call(client, "auth.refresh", {"refresh_token": before["refresh_token"]})
    token = refreshed.get_json()["data"]["access_token"]
    assert call(client, "guarded.admin_only", token=token).status_code == 200


def test_secrets_never_reach_logs_or_audit(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.DEBUG):
        register(client, "quiet@example.com")
        pair = login(client, "quiet@example.com")
        call(client, "auth.refresh", {"refresh_token": pair["refresh_token"]})
        call(client, "auth.login", {"email": "quiet@example.com", "password": "wrong password!!"})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for secret in (PASSWORD, "wrong password!!", pair["refresh_token"], pair["access_token"]):
        assert secret not in text


def test_jwks_is_published(client: FlaskClient) -> None:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert keys and all({"kid", "kty", "alg"} <= set(k) for k in keys)
    assert all("d" not in k for k in keys)  # public parts only


def test_cli_keys_and_users(tmp_path: Path) -> None:
    """The CLI runs the same actions as the system caller; a key it makes works over HTTP."""
    import json
    import os
    import subprocess
    import sys

    from app import ROOT, create_app

    env = {**os.environ, "APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"}
    env.pop("MODULES_PATH", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "app.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    made = run("keys", "create", "--name", "ci", "--scopes", "reports:read", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    assert "shown only once" in made.stderr
    raw = next(line.split()[-1] for line in made.stdout.splitlines() if line.startswith("key:"))
    listed = run("keys", "list")
    assert "ci" in listed.stdout and raw not in listed.stdout
    assert run("users", "promote", "ghost@example.com", "admin").returncode == 1

    server_env = {"APP_ENV": "test", "DATABASE_URL": env["DATABASE_URL"]}
    app = create_app(server_env)
    try:
        works = app.test_client().post("/api/v1/actions/system.ping", headers={"X-API-Key": raw})
        assert works.status_code == 200  # made by the CLI, accepted by the server
        key_id = raw.split("_")[1]
        assert run("keys", "revoke", key_id).returncode == 0
        response = app.test_client().post("/api/v1/actions/system.ping", headers={"X-API-Key": raw})
        assert response.status_code == 401, json.dumps(response.get_json())
    finally:
        from core.transports.flask_app import shutdown_app

        shutdown_app(app)
