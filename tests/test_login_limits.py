"""Accounts under attack, over real HTTP: a credential buys no guesses and lifts no IP ban
on a public action, failed logins are limited per target address too, and disabling or
deleting an account ends its sessions at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.served import Response, Server, cli, promote, running

PASSWORD = "correct horse battery staple"
LIMITS = {
    "SB_RATELIMIT__ENABLED": "true",
    "SB_RATELIMIT__IP": "1000/minute",
    "SB_RATELIMIT__USER": "1000/minute",
    "SB_HTTP__TRUSTED_PROXIES": "127.0.0.1",  # X-Forwarded-For names the client
    "SB_AUTH__LOGIN_FAILURES_PER_EMAIL": "5/15minutes",
}


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**LIMITS, "SB_RATELIMIT__BAN_THRESHOLD": "0"}
    with running(tmp_path_factory.mktemp("login"), "serve", env=env) as started:
        yield started


def call(server: Server, action: str, params: dict[str, str], ip: str, **headers: str) -> Response:
    return server.post(
        f"/api/v1/actions/{action}",
        json.dumps(params).encode(),
        {"X-Forwarded-For": ip, **headers},
    )


def account(email: str, password: str = PASSWORD) -> dict[str, str]:
    return {"email": email, "password": password}


def token_of(server: Server, email: str, ip: str) -> str:
    assert call(server, "auth.register", account(email), ip).status == 200
    login = call(server, "auth.login", account(email), ip)
    assert login.status == 200, login.body
    token: str = login.json()["data"]["access_token"]
    return token


def test_a_token_buys_no_more_guesses_at_login(server: Server) -> None:
    attacker = "203.0.113.7"
    bearer = {"Authorization": f"Bearer {token_of(server, 'mallory@example.com', attacker)}"}
    # auth.login allows 10 a minute per IP; one went into the attacker's own login above.
    guesses = [
        call(server, "auth.login", account(f"victim{n}@example.com", "guess"), attacker).status
        for n in range(9)
    ]
    assert guesses == [401] * 9
    anonymous = call(server, "auth.login", account("victim@example.com", "guess"), attacker)
    assert anonymous.status == 429
    with_token = call(
        server, "auth.login", account("victim@example.com", "guess"), attacker, **bearer
    )
    assert with_token.status == 429
    assert with_token.json()["type"] == "/problems/rate-limited"
    # The same holds for auth.register, and another address keeps its own budget.
    registrations = [
        call(server, "auth.register", account(f"new{n}@example.com"), attacker, **bearer).status
        for n in range(10)
    ]
    assert registrations.count(429) >= 1 and registrations[-1] == 429
    assert call(server, "auth.login", account("mallory@example.com"), "203.0.113.8").status == 200


def test_a_token_does_not_lift_an_ip_ban(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {**LIMITS, "SB_RATELIMIT__BAN_THRESHOLD": "2", "SB_RATELIMIT__BAN_TTL": "60s"}
    with running(tmp_path_factory.mktemp("ban"), "serve", env=env) as server:
        attacker = "203.0.113.9"
        token = token_of(server, "eve@example.com", attacker)
        statuses = [
            call(server, "auth.login", account("x@example.com", "guess"), attacker).status
            for _ in range(14)
        ]
        assert statuses[-1] == 403  # 429s past the threshold: the IP is banned
        banned = call(
            server,
            "auth.login",
            account("x@example.com", "guess"),
            attacker,
            Authorization=f"Bearer {token}",
        )
        assert banned.status == 403
        assert banned.json()["type"] == "/problems/banned"
        # A banned IP is refused whatever credential it presents, on every action; the
        # user's own calls from another address still work.
        me = call(server, "auth.me", {}, attacker, Authorization=f"Bearer {token}")
        assert me.status == 403
        assert me.json()["type"] == "/problems/banned"
        elsewhere = call(server, "auth.me", {}, "203.0.113.10", Authorization=f"Bearer {token}")
        assert elsewhere.status == 200


def test_failed_logins_are_limited_per_address_from_any_ip(server: Server) -> None:
    assert (
        call(server, "auth.register", account("target@example.com"), "198.51.100.1").status == 200
    )
    # A slow guess from many addresses: each IP stays far below its own limit.
    for n in range(5):
        wrong = call(server, "auth.login", account("target@example.com", "nope"), f"10.0.0.{n}")
        assert wrong.status == 401
    refused = call(server, "auth.login", account("target@example.com"), "10.0.1.1")
    assert refused.status == 429  # even the right password, until the window ends
    assert refused.json()["type"] == "/problems/rate-limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    # Unknown addresses are limited alike (the answer says nothing about who exists).
    for n in range(5):
        call(server, "auth.login", account("ghost@example.com", "nope"), f"10.0.2.{n}")
    assert call(server, "auth.login", account("ghost@example.com"), "10.0.3.1").status == 429
    # Other addresses are untouched, and successes never use the budget up.
    assert call(server, "auth.register", account("owner@example.com"), "198.51.100.2").status == 200
    for n in range(8):
        assert call(server, "auth.login", account("owner@example.com"), f"10.0.4.{n}").status == 200


# --- ending an account's sessions ------------------------------------------------------


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server, and the Authorization headers of an admin and of alice."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    with running(tmp_path, "serve", env=env) as server:
        ip = "198.51.100.9"
        token_of(server, "root@example.com", ip)
        promote(server, "root@example.com")
        admin = call(server, "auth.login", account("root@example.com"), ip).json()["data"]
        alice = token_of(server, "alice@example.com", ip)
        yield server, {"admin": f"Bearer {admin['access_token']}", "alice": f"Bearer {alice}"}


ALICE_CALLS = ("credits.balance", "credits.history", "auth.me", "auth.logout")
IP = "198.51.100.9"


def as_admin(server: Server, bearer: dict[str, str], action: str, email: str) -> Response:
    return call(server, f"auth.users.{action}", {"email": email}, IP, Authorization=bearer["admin"])


def works(server: Server, authorization: str) -> bool:
    return call(server, "credits.balance", {}, IP, Authorization=authorization).status == 200


def test_disabling_a_user_ends_every_session_at_once(
    accounts: tuple[Server, dict[str, str]],
) -> None:
    server, bearer = accounts
    login = call(server, "auth.login", account("alice@example.com"), IP).json()["data"]
    assert works(server, bearer["alice"])
    disabled = as_admin(server, bearer, "disable", "alice@example.com")
    assert disabled.status == 200 and disabled.json()["data"]["disabled"] is True
    for action in ALICE_CALLS:
        refused = call(server, action, {}, IP, Authorization=bearer["alice"])
        assert refused.status == 401, (action, refused.body)
    refresh = {"refresh_token": login["refresh_token"]}
    assert call(server, "auth.refresh", refresh, IP).status == 401
    assert call(server, "auth.login", account("alice@example.com"), IP).status == 401
    # Enabled again: a new login works; what the disable ended stays ended.
    assert as_admin(server, bearer, "enable", "alice@example.com").status == 200
    fresh = call(server, "auth.login", account("alice@example.com"), IP).json()["data"]
    assert works(server, f"Bearer {fresh['access_token']}")
    assert not works(server, bearer["alice"])
    assert call(server, "auth.refresh", refresh, IP).status == 401


def test_deleting_a_user_ends_every_session_at_once(
    accounts: tuple[Server, dict[str, str]],
) -> None:
    server, bearer = accounts
    deleted = as_admin(server, bearer, "delete", "alice@example.com")
    assert deleted.status == 200 and deleted.json()["data"]["deleted"] is True
    for action in ALICE_CALLS:
        assert call(server, action, {}, IP, Authorization=bearer["alice"]).status == 401, action
    assert call(server, "auth.login", account("alice@example.com"), IP).status == 401
    # the admin's own session is untouched
    assert call(server, "auth.me", {}, IP, Authorization=bearer["admin"]).status == 200


def test_only_admins_disable_users(accounts: tuple[Server, dict[str, str]]) -> None:
    server, bearer = accounts
    refused = call(
        server,
        "auth.users.disable",
        {"email": "root@example.com"},
        IP,
        Authorization=bearer["alice"],
    )
    assert refused.status == 403
    assert as_admin(server, bearer, "disable", "nobody@example.com").status == 404


def test_the_cli_disables_a_user_of_a_running_server_through_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": redis_prefix,
    }
    with running(tmp_path, "serve", env=env) as server:
        ip = "198.51.100.9"
        bearer = f"Bearer {token_of(server, 'bob@example.com', ip)}"
        assert call(server, "auth.me", {}, ip, Authorization=bearer).status == 200
        done = cli(server, "users", "disable", "bob@example.com")
        assert done.returncode == 0, done.stderr
        assert "bob@example.com: disabled" in done.stdout
        assert "memory://" not in done.stderr
        assert call(server, "auth.me", {}, ip, Authorization=bearer).status == 401
        assert cli(server, "users", "enable", "bob@example.com").returncode == 0
        assert call(server, "auth.login", account("bob@example.com"), ip).status == 200
        assert cli(server, "users", "delete", "nobody@example.com").returncode == 1


def test_the_cli_says_when_a_server_cannot_see_its_revocations(tmp_path: Path) -> None:
    with running(tmp_path, "serve", env={"DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}) as server:
        token_of(server, "carol@example.com", "198.51.100.9")
        done = cli(server, "users", "disable", "carol@example.com")
        assert done.returncode == 0, done.stderr
        assert "memory://" in done.stderr and "auth.users.disable over HTTP" in done.stderr
