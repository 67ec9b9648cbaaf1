"""ApiKeyManager: key format, hashing with a pepper, the attacks it refuses, on every SQL backend.

Every app here gets ``tmp_path`` as its project root, so the development pepper lands in
``tmp_path/var/dev-secrets/`` and never in the checkout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import default_managers, load
from core.base.errors import ConfigError, Unauthorized, ValidationError
from core.config.config import Config
from core.pipeline.identity import KeyIdentity
from core.runtime.app_manager import AppManager
from core.runtime.manager import Manager
from core.transports.flask_app import build_app, shutdown_app
from core.transports.http import extension
from managers.api_keys.manager import (
    COLLECTION,
    EXPIRED,
    INVALID,
    REVOKED,
    TOUCH_INTERVAL,
    ApiKeyManager,
)
from managers.db.manager import DatabaseManager
from managers.redis.manager import RedisManager

PUBLIC_FIELDS = {
    "id",
    "name",
    "owner",
    "scopes",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked",
    "rate_limit",
}
GOOD_PEPPER = "9f" * 32


class Clock:
    """A clock the test moves by hand (expiry, the last-used throttle)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config_for(root: Path, url: str, **env: str) -> Config:
    return load({"APP_ENV": "test", "DATABASE_URL": url, **env}, root=root)


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root}/a.db"


def with_keys() -> list[Manager]:
    """The default managers plus a fresh ApiKeyManager (whether or not app.py runs one)."""
    return [*(m for m in default_managers() if m.name != ApiKeyManager.name), ApiKeyManager()]


BootKeys = Callable[..., tuple[ApiKeyManager, AppManager]]


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[BootKeys]:
    """Boot the database, the store and ``keys``; shut every one down after."""
    booted: list[AppManager] = []

    def start(
        url: str | None = None,
        *,
        keys: ApiKeyManager | None = None,
        root: Path | None = None,
        **env: str,
    ) -> tuple[ApiKeyManager, AppManager]:
        root = root or tmp_path
        manager = keys or ApiKeyManager()
        config = config_for(root, url or sqlite_url(root), **env)
        app_manager = AppManager(config, [DatabaseManager(), RedisManager(), manager])
        app_manager.boot()
        booted.append(app_manager)
        return manager, app_manager

    yield start
    for app_manager in reversed(booted):
        app_manager.shutdown()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(boot: BootKeys, database_url: str, clock: Clock) -> ApiKeyManager:
    """A started manager on each backend, with a hand-moved clock."""
    manager, _ = boot(database_url, keys=ApiKeyManager(clock=clock))
    return manager


@pytest.fixture
def sqlite_keys(boot: BootKeys, clock: Clock) -> ApiKeyManager:
    manager, _ = boot(keys=ApiKeyManager(clock=clock))
    return manager


def split(raw: str) -> tuple[str, str]:
    prefix, key_id, secret = raw.split("_")
    assert prefix == "sb"
    return key_id, secret


def refused(keys: ApiKeyManager, raw: Any) -> str:
    with pytest.raises(Unauthorized) as caught:
        keys.verify(raw)
    assert caught.value.status == 401
    assert caught.value.problem(None)["type"] == "/problems/unauthenticated"
    return caught.value.detail


def raw_documents(app_manager: AppManager) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = (
        app_manager.get(DatabaseManager).documents.collection(COLLECTION).find()
    )
    return docs


# --- the contract, on SQLite and PostgreSQL ---------------------------------------------


def test_create_returns_the_public_record_and_the_raw_key_once(
    keys: ApiKeyManager, clock: Clock
) -> None:
    record, raw = keys.create(
        name=" ci deploy ",
        owner="u1",
        scopes=["b:write", "a:read", "a:read"],
        expires_in=3600,
        rate_limit=["100/minute", "1000 / hour"],
    )
    assert set(record) == PUBLIC_FIELDS
    key_id, secret = split(raw)
    assert record["id"] == key_id and len(key_id) == 12 and len(secret) == 52
    assert set(key_id + secret) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert record == {
        "id": key_id,
        "name": "ci deploy",
        "owner": "u1",
        "scopes": ["a:read", "b:write"],
        "created_at": clock.now,
        "last_used_at": None,
        "expires_at": clock.now + 3600,
        "revoked": False,
        "rate_limit": ["100/minute", "1000 / hour"],
    }
    assert keys.get(key_id) == record
    assert raw not in json.dumps(record) and secret not in json.dumps(record)
    assert keys.verify(raw) == KeyIdentity(
        key_id, "u1", ("a:read", "b:write"), rate_limit=("100/minute", "1000 / hour")
    )


def test_keys_are_unique_and_ownerless_keys_work(keys: ApiKeyManager) -> None:
    made = [keys.create(name=f"k{i}", owner=None, scopes=[]) for i in range(20)]
    assert len({raw for _, raw in made}) == len({r["id"] for r, _ in made}) == 20
    record, raw = made[0]
    assert record["rate_limit"] is None and record["expires_at"] is None
    assert keys.verify(raw) == KeyIdentity(record["id"], None, ())


def test_unknown_id_and_wrong_secret_get_the_same_answer(keys: ApiKeyManager) -> None:
    record, raw = keys.create(name="k", owner="u1", scopes=["a"])
    key_id, secret = split(raw)
    _, other = keys.create(name="other", owner="u2", scopes=[])
    other_id, other_secret = split(other)
    unknown_id = "a" * 12 if key_id != "a" * 12 else "b" * 12
    flipped = ("a" if secret[0] != "a" else "b") + secret[1:]
    answers = {
        refused(keys, f"sb_{unknown_id}_{secret}"),  # unknown id, a real secret
        refused(keys, f"sb_{key_id}_{flipped}"),  # right id, wrong secret
        refused(keys, f"sb_{key_id}_{other_secret}"),  # right id, another key's secret
        refused(keys, f"sb_{other_id}_{secret}"),
    }
    assert answers == {INVALID}
    assert keys.verify(raw).id == record["id"]


def test_a_real_key_inside_other_text_is_refused(keys: ApiKeyManager) -> None:
    _, raw = keys.create(name="k", owner=None, scopes=[])
    for wrapped in (raw + "a", raw + "\n", " " + raw, raw + "_x", "x" + raw, raw[:-1], raw.upper()):
        assert refused(keys, wrapped)
    assert keys.verify(raw).owner is None


def test_unknown_ids_are_hashed_too(boot: BootKeys) -> None:
    """No timing oracle: an unknown id costs the same HMAC and comparison as a wrong secret."""

    class Counting(ApiKeyManager):
        hashed = 0

        def _hash(self, secret: str) -> str:
            self.hashed += 1
            return super()._hash(secret)

    keys = Counting()
    boot(keys=keys)
    _, raw = keys.create(name="k", owner=None, scopes=[])
    key_id, secret = split(raw)
    keys.hashed = 0
    refused(keys, f"sb_{'a' * 12 if key_id != 'a' * 12 else 'b' * 12}_{secret}")
    assert keys.hashed == 1
    refused(keys, f"sb_{key_id}_{'a' * 52}")
    assert keys.hashed == 2


def test_expired_keys_are_refused(keys: ApiKeyManager, clock: Clock) -> None:
    record, raw = keys.create(name="short", owner="u1", scopes=[], expires_in=30)
    clock.advance(29.5)
    assert keys.verify(raw).id == record["id"]
    clock.advance(0.5)
    assert refused(keys, raw) == EXPIRED
    # Expiry is only said to whoever holds the secret.
    assert refused(keys, f"sb_{record['id']}_{'a' * 52}") == INVALID


def test_revoked_keys_are_refused(keys: ApiKeyManager) -> None:
    record, raw = keys.create(name="k", owner="u1", scopes=[])
    _, kept = keys.create(name="kept", owner="u1", scopes=[])
    assert keys.revoke(record["id"]) is True
    assert refused(keys, raw) == REVOKED
    assert refused(keys, f"sb_{record['id']}_{'a' * 52}") == INVALID
    assert keys.revoke(record["id"]) is True  # revoking twice is harmless
    assert keys.get(record["id"])["revoked"] is True  # type: ignore[index]
    assert keys.verify(kept).owner == "u1"


def test_revoke_and_get_of_unknown_or_malformed_ids(keys: ApiKeyManager) -> None:
    for key_id in ("a" * 12, "nope", "", "A" * 12, "a" * 13, "x' OR 1=1 --", "ä" * 12):
        assert keys.revoke(key_id) is False
        assert keys.get(key_id) is None


def test_last_used_is_written_at_most_once_a_minute(
    boot: BootKeys, database_url: str, clock: Clock
) -> None:
    keys, app_manager = boot(database_url, keys=ApiKeyManager(clock=clock))
    record, raw = keys.create(name="k", owner=None, scopes=[])
    keys.verify(raw)
    first = clock.now
    assert keys.get(record["id"])["last_used_at"] == first  # type: ignore[index]
    version = raw_documents(app_manager)[0]["_version"]
    for _ in range(5):
        clock.advance(TOUCH_INTERVAL / 6)
        keys.verify(raw)
    assert raw_documents(app_manager)[0]["_version"] == version  # no write per request
    assert keys.get(record["id"])["last_used_at"] == first  # type: ignore[index]
    clock.advance(TOUCH_INTERVAL / 6)
    keys.verify(raw)
    assert keys.get(record["id"])["last_used_at"] == clock.now  # type: ignore[index]
    assert raw_documents(app_manager)[0]["_version"] == version + 1


def test_concurrent_verifications_all_succeed(keys: ApiKeyManager) -> None:
    _, raw = keys.create(name="busy", owner="u1", scopes=["s"])
    errors: list[BaseException] = []
    results: list[KeyIdentity] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(keys.verify(raw))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 40


def test_list_get_and_owner_filter(keys: ApiKeyManager, clock: Clock) -> None:
    made = []
    for index, owner in enumerate(["u2", "u1", "u2", None]):
        made.append(keys.create(name=f"k{index}", owner=owner, scopes=[])[0])
        clock.advance(1)
    assert keys.list() == made  # oldest first
    assert [r["name"] for r in keys.list(owner="u2")] == ["k0", "k2"]
    assert keys.list(owner="nobody") == []
    assert all(set(r) == PUBLIC_FIELDS for r in keys.list())


def test_only_a_peppered_hash_is_stored(boot: BootKeys, database_url: str, tmp_path: Path) -> None:
    keys, app_manager = boot(database_url)
    _, raw = keys.create(name="k", owner="u1", scopes=["a"])
    key_id, secret = split(raw)
    (doc,) = raw_documents(app_manager)
    stored = json.dumps(doc)
    assert secret not in stored and raw not in stored
    pepper = (tmp_path / "var" / "dev-secrets" / "api_key_pepper").read_bytes()
    expected = hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()
    assert doc["_id"] == key_id and doc["secret_hash"] == expected
    assert doc["secret_hash"] != hashlib.sha256(secret.encode()).hexdigest()  # not unkeyed


def test_health_counts_active_keys(keys: ApiKeyManager, clock: Clock) -> None:
    assert keys.health().as_dict() == {"status": "ok", "keys": 0}
    revoked, _ = keys.create(name="a", owner=None, scopes=[])
    keys.create(name="b", owner=None, scopes=[], expires_in=10)
    keys.create(name="c", owner=None, scopes=[])
    keys.revoke(revoked["id"])
    assert keys.health().as_dict() == {"status": "ok", "keys": 2}
    clock.advance(10)
    assert keys.health().as_dict() == {"status": "ok", "keys": 1}


# --- malformed input --------------------------------------------------------------------

_ID, _SECRET = "abcdefgh2345", "a" * 52

MALFORMED = {
    "empty": "",
    "prefix only": "sb_",
    "wrong prefix": f"sk_{_ID}_{_SECRET}",
    "upper-case prefix": f"SB_{_ID}_{_SECRET}",
    "no prefix": f"{_ID}_{_SECRET}",
    "id only": f"sb_{_ID}",
    "empty secret": f"sb_{_ID}_",
    "empty id": f"sb__{_SECRET}",
    "short id": f"sb_{_ID[:-1]}_{_SECRET}",
    "long secret": f"sb_{_ID}_{_SECRET}a",
    "extra part": f"sb_{_ID}_{_SECRET}_x",
    "upper-case id": f"sb_{_ID.upper()}_{_SECRET}",
    "outside base32": f"sb_{_ID[:-1]}1_{_SECRET}",
    "trailing newline": f"sb_{_ID}_{_SECRET}\n",
    "inner space": f"sb_{_ID} _{_SECRET}",
    "NUL": f"sb_{_ID}_{_SECRET[:-1]}\x00",
    "huge": "sb_" + "a" * 1_000_000,
    "huge well-shaped": f"sb_{_ID}_{'a' * 100_000}",
    "non-ASCII id": f"sb_{'ä' * 12}_{_SECRET}",
    "full-width letters": f"sb_{chr(0xFF41) * 12}_{_SECRET}",
    "non-ASCII secret": f"sb_{_ID}_{'ß' * 52}",
    "emoji": "sb_🔑_🔑",
    "lone surrogate": f"sb_{_ID}_{_SECRET[:-1]}\ud800",
    "SQL in the id": "sb_' OR 1=1 --_" + _SECRET,
    "JWT instead": "eyJhbGciOiJIUzI1NiJ9.e30.sig",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_keys_are_401(sqlite_keys: ApiKeyManager, raw: str) -> None:
    assert refused(sqlite_keys, raw)


@pytest.mark.parametrize("raw", [None, 12, b"sb_x_y", ["sb"]], ids=repr)
def test_non_strings_are_401(sqlite_keys: ApiKeyManager, raw: Any) -> None:
    assert refused(sqlite_keys, raw)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(data=st.data())
def test_any_text_is_a_401_never_a_crash(sqlite_keys: ApiKeyManager, data: st.DataObject) -> None:
    raw = data.draw(
        st.one_of(
            st.text(max_size=300),
            st.from_regex(r"sb_[a-z2-7]{12}_[a-z2-7]{52}", fullmatch=True),
            st.builds(lambda a, b: f"sb_{a}_{b}", st.text(max_size=20), st.text(max_size=60)),
        )
    )
    assert refused(sqlite_keys, raw)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(position=st.integers(min_value=0, max_value=67), char=st.characters())
def test_any_one_character_change_is_refused(
    sqlite_keys: ApiKeyManager, position: int, char: str
) -> None:
    _, raw = sqlite_keys.create(name="k", owner=None, scopes=[])
    changed = raw[:position] + char + raw[position + 1 :]
    if changed != raw:
        assert refused(sqlite_keys, changed)


def test_bad_keys_over_http_are_401_problems(tmp_path: Path) -> None:
    flask_app = build_app(config_for(tmp_path, sqlite_url(tmp_path)), with_keys())
    try:
        keys: ApiKeyManager = extension(flask_app).app_manager.get(ApiKeyManager)
        _, raw = keys.create(name="k", owner="u1", scopes=[])
        key_id, _ = split(raw)
        client = flask_app.test_client()
        assert client.get("/api/v1/actions", headers={"X-API-Key": raw}).status_code == 200
        for bad in (f"sb_{key_id}_{'a' * 52}", "sb_" + "x" * 5000, "sb_ü_ß", "nope"):
            response = client.post("/api/v1/actions/any.thing", json={}, headers={"X-API-Key": bad})
            assert response.status_code == 401, response.get_json()
            body = response.get_json()
            assert body["type"] == "/problems/unauthenticated"
            assert "traceback" not in json.dumps(body).lower()
    finally:
        shutdown_app(flask_app)


# --- validation of create() ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "path"),
    [
        ({"name": ""}, "/name"),
        ({"name": "   "}, "/name"),
        ({"name": "x" * 101}, "/name"),
        ({"name": "line\nbreak"}, "/name"),
        ({"owner": ""}, "/owner"),
        ({"owner": 7}, "/owner"),
        ({"scopes": "admin"}, "/scopes"),  # a string is not a list of scopes
        ({"scopes": ["Admin"]}, "/scopes/0"),
        ({"scopes": ["ok", "has space"]}, "/scopes/1"),
        ({"scopes": ["a" * 65]}, "/scopes/0"),
        ({"scopes": [3]}, "/scopes/0"),
        ({"scopes": ["s"] * 65}, "/scopes"),
        ({"rate_limit": ["100/fortnight"]}, "/rate_limit/0"),
        ({"rate_limit": ["0/minute"]}, "/rate_limit/0"),
        ({"rate_limit": "100/minute"}, "/rate_limit"),
        ({"expires_in": 0}, "/expires_in"),
        ({"expires_in": -5}, "/expires_in"),
        ({"expires_in": float("nan")}, "/expires_in"),
        ({"expires_in": float("inf")}, "/expires_in"),
        ({"expires_in": True}, "/expires_in"),
        ({"expires_in": "1h"}, "/expires_in"),
    ],
)
def test_create_validates_its_arguments(
    sqlite_keys: ApiKeyManager, arguments: dict[str, Any], path: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        sqlite_keys.create(**{"name": "k", "owner": "u1", "scopes": [], **arguments})
    assert caught.value.status == 422
    assert [e.path for e in caught.value.errors] == [path]
    assert sqlite_keys.list() == []


def test_create_accepts_the_edges(sqlite_keys: ApiKeyManager) -> None:
    record, _ = sqlite_keys.create(
        name="n" * 100,
        owner="o" * 200,
        scopes=["a", "a" * 64, "x.y:z-w_1"],
        expires_in=0.5,
        rate_limit=["5/10s", "1/day"],
    )
    assert record["scopes"] == ["a", "a" * 64, "x.y:z-w_1"]
    assert record["rate_limit"] == ["5/10s", "1/day"]


# --- secrets never reach the logs ----------------------------------------------------------


def test_raw_keys_and_secrets_are_never_logged(
    sqlite_keys: ApiKeyManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, raw = sqlite_keys.create(name="logged", owner="u1", scopes=["a"], expires_in=60)
    key_id, secret = split(raw)
    sqlite_keys.verify(raw)
    refused(sqlite_keys, f"sb_{key_id}_{'a' * 52}")
    refused(sqlite_keys, raw + "x")  # malformed, but carrying the real secret
    refused(sqlite_keys, raw.upper())
    sqlite_keys.revoke(key_id)
    refused(sqlite_keys, raw)
    assert caplog.records, "expected the manager to log something at DEBUG"
    for entry in caplog.records:
        rendered = " ".join([entry.getMessage(), repr(entry.args), repr(vars(entry))])
        assert secret not in rendered and secret.upper() not in rendered, entry
    assert secret not in caplog.text and secret.upper() not in caplog.text
    assert any(key_id in entry.getMessage() for entry in caplog.records)  # ids are fine


# --- the pepper ---------------------------------------------------------------------------


def test_dev_pepper_is_generated_once_and_shared(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    first = build_app(config_for(tmp_path, url), with_keys())
    try:
        keys1: ApiKeyManager = extension(first).app_manager.get(ApiKeyManager)
        _, raw = keys1.create(name="from the CLI", owner="u1", scopes=["a"])
    finally:
        shutdown_app(first)
    path = tmp_path / "var" / "dev-secrets" / "api_key_pepper"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pepper = path.read_bytes()
    assert len(pepper) == 64 and all(c in b"0123456789abcdef" for c in pepper)
    second = build_app(config_for(tmp_path, url), with_keys())
    try:
        keys2: ApiKeyManager = extension(second).app_manager.get(ApiKeyManager)
        assert keys2.verify(raw).owner == "u1"
    finally:
        shutdown_app(second)
    assert path.read_bytes() == pepper
    assert [p.name for p in path.parent.glob("api_key*")] == ["api_key_pepper"]


def test_a_configured_pepper_wins_and_other_peppers_refuse_the_key(
    boot: BootKeys, tmp_path: Path
) -> None:
    keys, _ = boot(SB_API_KEYS__PEPPER=GOOD_PEPPER)
    assert not (tmp_path / "var" / "dev-secrets" / "api_key_pepper").exists()
    _, raw = keys.create(name="k", owner=None, scopes=[])
    assert keys.verify(raw).owner is None
    other, _ = boot(SB_API_KEYS__PEPPER="ab" * 32)  # same database, another pepper
    assert refused(other, raw) == INVALID


def test_production_refuses_to_boot_without_a_pepper(tmp_path: Path) -> None:
    environ = {
        "APP_ENV": "production",
        "DATABASE_URL": sqlite_url(tmp_path),
        "SB_JWT__PRIVATE_KEY": "a PEM",
        "SB_EXECUTIONS__SECRET_KEY": "e" * 40,
        "SB_SECRETS__MOUNTS": "",
    }
    with pytest.raises(ConfigError) as caught:  # refused as soon as the config loads
        load(environ, root=tmp_path)
    assert [p.field for p in caught.value.problems] == ["api_keys.pepper"]
    assert "api_keys.pepper" in str(caught.value)
    assert not (tmp_path / "var" / "dev-secrets").exists()  # nothing generated in production


def test_production_boots_with_a_pepper(boot: BootKeys) -> None:
    keys, _ = boot(
        APP_ENV="production",
        SB_API_KEYS__PEPPER=GOOD_PEPPER,
        SB_JWT__PRIVATE_KEY="a PEM (the config check only looks for one)",
        SB_EXECUTIONS__SECRET_KEY="e" * 40,
    )
    _, raw = keys.create(name="k", owner="u1", scopes=[])
    assert keys.verify(raw).owner == "u1"


@pytest.mark.parametrize("pepper", ["short", "x" * 31])
def test_a_short_pepper_is_a_boot_error(tmp_path: Path, pepper: str) -> None:
    config = config_for(tmp_path, sqlite_url(tmp_path), SB_API_KEYS__PEPPER=pepper)
    with pytest.raises(ConfigError) as caught:
        AppManager(config, [DatabaseManager(), RedisManager(), ApiKeyManager()]).boot()
    assert [p.field for p in caught.value.problems] == ["api_keys.pepper"]
    assert pepper not in str(caught.value)


def test_not_started_is_a_clean_error() -> None:
    keys = ApiKeyManager()
    with pytest.raises(Unauthorized):
        keys.verify("garbage")
    assert keys.health().status == "failed"
