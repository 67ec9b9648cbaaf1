"""Password guessing over real HTTP: a credential buys no guesses and lifts no IP ban on a
public action, and failed logins are limited per target address too."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.served import Response, Server, running

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
        # the ban is the IP's on public actions; the user's own calls elsewhere still work
        me = call(server, "auth.me", {}, attacker, Authorization=f"Bearer {token}")
        assert me.status == 200


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
