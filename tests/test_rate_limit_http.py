"""Rate limits as a caller meets them: headers, 429, bans, client IPs, and Redis outages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app import ROOT
from core.contracts.calls import CallRequest
from core.contracts.context import SYSTEM
from core.transports.http import extension
from managers.rate_limiter.manager import RateLimiterManager
from tests.conftest import MakeApp, WriteModule
from tests.servers import RedisServer

LIMITED = """
actions:
  hit:
    handler: handlers:hit
    auth: public
    rate_limit: [3/minute]
  free:
    handler: handlers:hit
    auth: public
"""
HIT = "def hit(ctx):\n    return {'ip': ctx.client_ip}\n"

ON = {
    "SB_RATELIMIT__ENABLED": "true",
    "SB_RATELIMIT__IP": "1000/minute",
    "SB_RATELIMIT__BAN_THRESHOLD": "0",
}


@pytest.fixture
def limited(write_module: WriteModule) -> Path:
    return write_module("lim", {"actions.yaml": LIMITED, "handlers.py": HIT})


def hit(app: Flask, ip: str = "198.51.100.1", name: str = "lim.hit", **headers: str) -> Any:
    return app.test_client().post(
        f"/api/v1/actions/{name}", json={}, headers=headers, environ_base={"REMOTE_ADDR": ip}
    )


def test_limited_actions_carry_ratelimit_headers_and_answer_429(
    make_app: MakeApp, limited: Path
) -> None:
    app = make_app({**ON, "MODULES_PATH": str(limited)})
    remaining = []
    for _ in range(3):
        response = hit(app)
        assert response.status_code == 200
        policy = response.headers["RateLimit-Policy"]
        assert '"ip-1000/minute";q=1000;w=60' in policy
        assert '"action-3/minute";q=3;w=60' in policy
        current = response.headers["RateLimit"]
        found = re.search(r'"action-3/minute";r=(\d+);t=\d+', current)
        assert found is not None, current
        remaining.append(int(found[1]))
    assert remaining == [2, 1, 0]
    limited_response = hit(app)
    assert limited_response.status_code == 429
    body = limited_response.get_json()
    assert body["type"] == "/problems/rate-limited"
    assert int(limited_response.headers["Retry-After"]) >= 1
    assert "RateLimit" in limited_response.headers  # on the 429 too
    assert hit(app, name="lim.free").status_code == 200  # other actions keep their budget
    assert hit(app, ip="198.51.100.2").status_code == 200  # other callers keep theirs


def test_a_spoofed_forwarded_for_buys_no_new_budget(make_app: MakeApp, limited: Path) -> None:
    app = make_app({**ON, "MODULES_PATH": str(limited)})
    for n in range(3):
        assert hit(app, **{"X-Forwarded-For": f"203.0.113.{n}"}).status_code == 200
    spoofed = hit(app, **{"X-Forwarded-For": "203.0.113.99"})
    assert spoofed.status_code == 429  # still the socket peer's budget


def test_behind_a_trusted_proxy_each_client_has_its_own_budget(
    make_app: MakeApp, limited: Path
) -> None:
    app = make_app({**ON, "MODULES_PATH": str(limited), "SB_HTTP__TRUSTED_PROXIES": "10.0.0.0/8"})
    proxy = "10.0.0.7"
    for _ in range(3):
        assert hit(app, ip=proxy, **{"X-Forwarded-For": "203.0.113.5"}).status_code == 200
    assert hit(app, ip=proxy, **{"X-Forwarded-For": "203.0.113.5"}).status_code == 429
    other = hit(app, ip=proxy, **{"X-Forwarded-For": "203.0.113.6"})
    assert other.status_code == 200 and other.get_json()["data"]["ip"] == "203.0.113.6"
    # the client cannot pick a new address by prepending one: the right-most untrusted counts
    chained = hit(app, ip=proxy, **{"X-Forwarded-For": "1.1.1.1, 203.0.113.5"})
    assert chained.status_code == 429


def test_repeat_offenders_are_banned_and_admins_lift_bans(make_app: MakeApp, limited: Path) -> None:
    app = make_app(
        {
            **ON,
            "MODULES_PATH": str(limited),
            "SB_RATELIMIT__BAN_THRESHOLD": "2",
            "SB_RATELIMIT__BAN_TTL": "60s",
        }
    )
    for _ in range(3):
        hit(app)
    statuses = [hit(app).status_code for _ in range(4)]
    assert statuses[:2] == [429, 429]
    banned = hit(app)
    assert banned.status_code == 403
    body = banned.get_json()
    assert body["type"] == "/problems/banned" and "banned_until" in body
    assert hit(app, name="lim.free").status_code == 403  # a ban covers every action

    manager = extension(app).app_manager.get(RateLimiterManager)
    assert [b["identity"] for b in manager.bans()] == ["ip:198.51.100.1"]
    pipeline = extension(app).pipeline  # the admin actions, as the CLI runs them
    shown = pipeline.invoke(CallRequest("ratelimit.bans", {}, "r1", caller=SYSTEM))
    assert shown.data[0]["identity"] == "ip:198.51.100.1"
    lifted = pipeline.invoke(
        CallRequest("ratelimit.unban", {"identity": "ip:198.51.100.1"}, "r2", caller=SYSTEM)
    )
    assert lifted.data == {"identity": "ip:198.51.100.1", "unbanned": True}
    assert manager.bans() == []
    assert hit(app, name="lim.free").status_code == 200


def test_the_bans_cli_sees_and_lifts_bans_of_the_shared_store(
    make_app: MakeApp, limited: Path, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    shared = {
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": redis_prefix,
        "DATABASE_URL": f"sqlite:///{tmp_path}/bans.db",
    }
    app = make_app(
        {**ON, **shared, "MODULES_PATH": str(limited), "SB_RATELIMIT__BAN_THRESHOLD": "1"}
    )
    for _ in range(6):
        hit(app, ip="198.51.100.77")
    assert hit(app, ip="198.51.100.77").status_code == 403

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "APP_ENV": "test", **shared}
        env.pop("MODULES_PATH", None)
        return subprocess.run(
            [sys.executable, "app.py", "bans", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    listed = cli()
    assert listed.returncode == 0, listed.stderr
    assert "ip:198.51.100.77" in listed.stdout and "until" in listed.stdout
    assert cli("lift", "ip:198.51.100.77").returncode == 0
    assert cli("lift", "ip:198.51.100.77").returncode == 1  # not banned any more
    assert hit(app, ip="198.51.100.77", name="lim.free").status_code == 200


def test_redis_down_open_actions_fall_back_closed_ones_answer_503(
    make_app: MakeApp, limited: Path, private_redis: RedisServer
) -> None:
    app = make_app(
        {
            **ON,
            "MODULES_PATH": str(limited),
            "REDIS_URL": private_redis.url(),
            "SB_REDIS__SOCKET_TIMEOUT": "0.5s",
        }
    )
    client = app.test_client()
    login = {"email": "nobody@example.com", "password": "whatever password"}
    assert client.post("/api/v1/actions/auth.login", json=login).status_code == 401
    private_redis.stop()
    try:
        # open: the local limiter still answers, and still bounds this worker
        assert [hit(app).status_code for _ in range(4)] == [200, 200, 200, 429]
        # closed (auth.login): no limiter, no login
        down = client.post("/api/v1/actions/auth.login", json=login)
        assert down.status_code == 503
        assert down.get_json()["type"] == "/problems/dependency-unavailable"
    finally:
        private_redis.start()
    assert client.post("/api/v1/actions/auth.login", json=login).status_code == 401
    assert hit(app, ip="198.51.100.9").status_code == 200


KEYED = """
actions:
  guess:
    handler: handlers:guess
    auth: public
    idempotent: true
    rate_limit: [2/minute]
    rate_limit_by: [ip, params.email]
    params:
      email: {type: string, required: true}
      amount: {type: integer, default: 1}
"""
GUESS = "def guess(ctx, *, email, amount):\n    return {'email': email, 'amount': amount}\n"


@pytest.fixture
def keyed(write_module: WriteModule) -> Path:
    return write_module("keyed", {"actions.yaml": KEYED, "handlers.py": GUESS})


def guess(app: Flask, email: str, ip: str, key: str | None = None, amount: Any = 1) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return app.test_client().post(
        "/api/v1/actions/keyed.guess",
        json={"email": email, "amount": amount},
        headers=headers,
        environ_base={"REMOTE_ADDR": ip},
    )


def test_rate_limit_by_counts_per_ip_and_per_param(make_app: MakeApp, keyed: Path) -> None:
    app = make_app({**ON, "MODULES_PATH": str(keyed)})
    # one email from many IPs: the per-email budget runs out
    assert guess(app, "a@example.com", "198.51.100.1").status_code == 200
    assert guess(app, "a@example.com", "198.51.100.2").status_code == 200
    refused = guess(app, "a@example.com", "198.51.100.3")
    assert refused.status_code == 429
    assert '"action-email-2/minute";r=0' in refused.headers["RateLimit"]
    # one IP, many emails: the per-IP budget runs out
    assert guess(app, "b@example.com", "198.51.100.9").status_code == 200
    assert guess(app, "c@example.com", "198.51.100.9").status_code == 200
    refused = guess(app, "d@example.com", "198.51.100.9")
    assert refused.status_code == 429
    assert '"action-ip-2/minute";r=0' in refused.headers["RateLimit"]
    # invalid params are refused before any budget is spent
    bad = app.test_client().post(
        "/api/v1/actions/keyed.guess", json={}, environ_base={"REMOTE_ADDR": "198.51.100.20"}
    )
    assert bad.status_code == 422 and "RateLimit" not in bad.headers
    assert guess(app, "e@example.com", "198.51.100.20").status_code == 200


def test_a_replay_carries_the_ratelimit_headers_and_equal_numbers_are_one_request(
    make_app: MakeApp, keyed: Path
) -> None:
    app = make_app({**ON, "SB_RATELIMIT__IP": "100/minute", "MODULES_PATH": str(keyed)})
    first = guess(app, "f@example.com", "198.51.100.30", key="k1", amount=3)
    replay = guess(app, "f@example.com", "198.51.100.30", key="k1", amount=3.0)
    assert first.status_code == replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_data() == first.get_data()
    assert '"ip-100/minute";r=98' in replay.headers["RateLimit"]
