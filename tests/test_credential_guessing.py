"""Guessing credentials against a served process: failed identifications are limited per
IP and lead to a ban like any other 429; a banned IP is refused whatever it sends; an
unknown API key id costs what a wrong secret costs.

Each test runs on the embedded store and on a real Redis server (the gate's Lua script).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from managers.api_keys.manager import new_key_id, new_secret
from tests.served import Response, Server, cli, running

LIMITS = {
    "SB_RATELIMIT__ENABLED": "true",
    "SB_RATELIMIT__IP": "1000/minute",
    "SB_RATELIMIT__API_KEY": "1000/minute",
    "SB_RATELIMIT__AUTH_FAILURES": "10/minute",
    "SB_RATELIMIT__BAN_THRESHOLD": "3",
    "SB_RATELIMIT__BAN_TTL": "60s",
    "SB_HTTP__TRUSTED_PROXIES": "127.0.0.1",  # X-Forwarded-For names the client
}


@pytest.fixture(params=["memory", "redis"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    return {
        "REDIS_URL": request.getfixturevalue("redis_url"),
        "SB_REDIS__PREFIX": request.getfixturevalue("redis_prefix"),
    }


@pytest.fixture
def server(tmp_path: Path, store_env: dict[str, str]) -> Iterator[Server]:
    with running(tmp_path, "serve", env={**LIMITS, **store_env}) as started:
        yield started


def call(server: Server, action: str, ip: str, **headers: str) -> Response:
    return server.post(f"/api/v1/actions/{action}", b"{}", {"X-Forwarded-For": ip, **headers})


def new_key(server: Server) -> str:
    made = cli(server, "keys", "create", "--name", "probe")
    assert made.returncode == 0, made.stderr
    return next(word for word in made.stdout.split() if word.startswith("sb_"))


def bad_key() -> str:
    """A well-formed key of an id nobody made."""
    return f"sb_{new_key_id()}_{new_secret()}"


def test_guessing_is_limited_then_banned_per_ip(server: Server) -> None:
    attacker, bystander = "203.0.113.20", "203.0.113.21"
    key = new_key(server)
    statuses = [call(server, "auth.me", attacker, **{"X-API-Key": bad_key()}) for _ in range(10)]
    assert [r.status for r in statuses] == [401] * 10
    limited = call(server, "auth.me", attacker, **{"X-API-Key": bad_key()})
    assert limited.status == 429, limited.body
    assert limited.json()["type"] == "/problems/rate-limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert '"auth_failure-10/minute"' in limited.headers["RateLimit-Policy"]
    # Each 429 is a strike: the fourth is more than the threshold of 3, and bans the IP.
    more = [call(server, "auth.me", attacker, **{"X-API-Key": bad_key()}).status for _ in range(3)]
    assert more == [429, 429, 403]
    # Whatever the banned IP sends now is 403 banned, never 401.
    for headers in (
        {"X-API-Key": bad_key()},
        {"Authorization": "Bearer not.a.token"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"X-API-Key": key, "Authorization": "Bearer x"},
        {},
    ):
        answer = call(server, "auth.me", attacker, **headers)
        assert answer.status == 403, (headers, answer.body)
        assert answer.json()["type"] == "/problems/banned"
    assert call(server, "system.info", attacker).status == 403
    # Another address has its own budget.
    assert call(server, "auth.me", bystander, **{"X-API-Key": bad_key()}).status == 401
    # A right guess from the banned IP is refused too, so guessing gains nothing there; the
    # same token works from another address.
    account = json.dumps({"email": "bob@example.com", "password": "correct horse battery"})
    assert server.post("/api/v1/actions/auth.register", account.encode()).status == 200
    login = server.post("/api/v1/actions/auth.login", account.encode())
    bearer = {"Authorization": f"Bearer {login.json()['data']['access_token']}"}
    refused = call(server, "auth.me", attacker, **bearer)
    assert refused.status == 403 and refused.json()["type"] == "/problems/banned"
    assert call(server, "auth.me", bystander, **bearer).status == 200
    if "REDIS_URL" in server.env:  # the CLI sees the server's bans through Redis
        listed = cli(server, "bans")
        assert f"ip:{attacker}" in listed.stdout
        assert f"ip:{bystander}" not in listed.stdout
    metrics = server.get("/metrics").body.decode()
    assert 'switchboard_ratelimit_decisions_total{decision="limited",kind="auth_failure"}' in (
        metrics
    )


def test_successes_never_count_and_every_kind_of_failure_does(server: Server) -> None:
    ip = "203.0.113.30"
    key = new_key(server)
    # Forty calls with a valid key from the IP leave its failure budget whole.
    for _ in range(40):
        assert call(server, "system.info", ip, **{"X-API-Key": key}).status == 200
    revoked = new_key(server)
    revoked_id = revoked.split("_")[1]
    assert cli(server, "keys", "revoke", revoked_id).returncode == 0
    failures = [
        {"X-API-Key": bad_key()},  # invalid
        {"X-API-Key": "sb_short"},  # malformed
        {"X-API-Key": revoked},  # revoked
        {"Authorization": "Bearer a.b.c"},  # an invalid token
        {"Authorization": "Token x"},  # malformed
        {},  # missing, where the action needs a user
    ]
    answers = [call(server, "auth.me", ip, **failures[n % len(failures)]) for n in range(10)]
    assert [a.status for a in answers] == [401] * 10, [a.body for a in answers]
    assert call(server, "auth.me", ip).status == 429
    # Public actions called without a credential are no failures: the IP's call limits.
    assert call(server, "system.info", "203.0.113.31").status == 200


def timed_ms(server: Server, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    answer = call(server, "system.info", "203.0.113.40", **headers)
    elapsed = (time.perf_counter() - started) * 1000
    assert answer.status == 401
    return elapsed


def test_an_unknown_key_id_costs_what_a_wrong_secret_costs(
    tmp_path: Path, redis_url: str, redis_prefix: str, postgres_url: str
) -> None:
    """Medians of interleaved calls: a wrong secret for a real key id against a fresh
    random id each time (identical 401 bodies; on a shared store, no database read for
    either), on PostgreSQL, where a read per guess would show."""
    env = {
        **LIMITS,
        "DATABASE_URL": postgres_url,
        "SB_RATELIMIT__AUTH_FAILURES": "1000000/minute",
        "SB_RATELIMIT__BAN_THRESHOLD": "0",
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": redis_prefix,
    }
    with running(tmp_path, "serve", env=env) as server:
        real_id = new_key(server).split("_")[1]
        wrong_secret = {"X-API-Key": f"sb_{real_id}_{new_secret()}"}
        for _ in range(50):  # warm both paths
            timed_ms(server, wrong_secret)
            timed_ms(server, {"X-API-Key": bad_key()})
        known, unknown = [], []
        for _ in range(300):
            known.append(timed_ms(server, wrong_secret))
            unknown.append(timed_ms(server, {"X-API-Key": bad_key()}))
        a, b = statistics.median(known), statistics.median(unknown)
        assert 0.8 < a / b < 1.25, (a, b)
        bodies = []
        for headers in (wrong_secret, {"X-API-Key": bad_key()}):
            body = call(server, "system.info", "203.0.113.41", **headers).json()
            bodies.append({k: v for k, v in body.items() if k != "request_id"})
        assert bodies[0] == bodies[1]
        # A key made after the index was loaded works at once.
        fresh = new_key(server)
        assert call(server, "system.info", "203.0.113.42", **{"X-API-Key": fresh}).status == 200
