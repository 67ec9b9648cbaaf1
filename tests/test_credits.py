"""The credits module over HTTP: balances, transfers, history, grants, and the invariants."""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.base.store import KeyValueStore
from core.transports.http import extension
from managers.db.manager import DatabaseManager
from tests.conftest import MakeApp

PASSWORD = "a long enough password"


def call(
    client: FlaskClient,
    name: str,
    token: str | None,
    params: dict[str, Any] | None = None,
    **headers: str,
) -> Any:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(f"/api/v1/actions/{name}", json=params or {}, headers=headers)


class Bank:
    """An app with ``n`` users (the first an admin) and their tokens."""

    def __init__(self, app: Flask, n: int) -> None:
        self.app = app
        self.client = app.test_client()
        self.ids: list[str] = []
        self.tokens: list[str] = []
        db = extension(app).app_manager.get(DatabaseManager).documents
        for i in range(n):
            email = f"user{i}@example.com"
            made = call(self.client, "auth.register", None, {"email": email, "password": PASSWORD})
            assert made.status_code == 200, made.get_json()
            self.ids.append(made.get_json()["data"]["id"])
            if i == 0:
                db.collection("sb_users").update_one(
                    {"email": email}, {"$set": {"roles": ["admin"]}}
                )
            pair = call(self.client, "auth.login", None, {"email": email, "password": PASSWORD})
            self.tokens.append(pair.get_json()["data"]["access_token"])
        self.db = db

    def grant(self, to: int, amount: int) -> Any:
        return call(
            self.client, "credits.grant", self.tokens[0], {"to": self.ids[to], "amount": amount}
        )

    def balance(self, who: int) -> int:
        response = call(self.client, "credits.balance", self.tokens[who])
        return int(response.get_json()["data"]["balance"])


@pytest.fixture
def bank(make_app: MakeApp) -> Bank:
    return Bank(make_app(), 3)


def test_grant_transfer_balance_history(bank: Bank) -> None:
    assert bank.balance(1) == 0
    assert bank.grant(1, 100).status_code == 200
    moved = call(
        bank.client,
        "credits.transfer",
        bank.tokens[1],
        {"to": bank.ids[2], "amount": 30, "note": "lunch"},
    )
    assert moved.status_code == 200, moved.get_json()
    assert moved.get_json()["data"]["balance"] == 70
    assert (bank.balance(1), bank.balance(2)) == (70, 30)
    history = call(bank.client, "credits.history", bank.tokens[1], {"limit": 1}).get_json()
    entries = history["data"]["entries"]
    assert history["data"]["total"] == 2
    assert [(e["kind"], e["amount"], e["note"]) for e in entries] == [("transfer", 30, "lunch")]
    older = call(bank.client, "credits.history", bank.tokens[1], {"limit": 5, "offset": 1})
    assert [e["kind"] for e in older.get_json()["data"]["entries"]] == ["grant"]


def test_transfer_refusals(bank: Bank) -> None:
    bank.grant(1, 10)

    def transfer(params: dict[str, Any], who: int = 1) -> Any:
        return call(bank.client, "credits.transfer", bank.tokens[who], params)

    broke = transfer({"to": bank.ids[2], "amount": 11})
    assert broke.status_code == 409 and broke.get_json()["detail"] == "insufficient credits"
    assert transfer({"to": bank.ids[1], "amount": 1}).status_code == 422  # to yourself
    assert transfer({"to": "nobody", "amount": 1}).status_code == 404
    for bad in (
        {"to": bank.ids[2], "amount": 0},
        {"to": bank.ids[2], "amount": -5},
        {"to": bank.ids[2], "amount": 1.5},
        {"to": bank.ids[2]},
        {"to": bank.ids[2], "amount": 1, "from": bank.ids[0]},
    ):
        assert transfer(bad).status_code == 422, bad
    assert (
        call(bank.client, "credits.transfer", None, {"to": bank.ids[2], "amount": 1}).status_code
        == 401
    )
    assert (bank.balance(1), bank.balance(2)) == (10, 0)  # nothing moved


def test_only_admins_grant(bank: Bank) -> None:
    response = call(bank.client, "credits.grant", bank.tokens[1], {"to": bank.ids[1], "amount": 5})
    assert response.status_code == 403
    assert bank.balance(1) == 0


def test_a_retried_transfer_moves_credits_once(bank: Bank) -> None:
    bank.grant(1, 50)
    params = {"to": bank.ids[2], "amount": 20}
    first = call(
        bank.client, "credits.transfer", bank.tokens[1], params, **{"Idempotency-Key": "pay-1"}
    )
    again = call(
        bank.client, "credits.transfer", bank.tokens[1], params, **{"Idempotency-Key": "pay-1"}
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert (bank.balance(1), bank.balance(2)) == (30, 20)


def test_a_retry_the_store_forgot_is_not_applied_twice(bank: Bank) -> None:
    """Redis lost its idempotency records (restarted without persistence): the ledger's own
    unique entry id stops the retry from moving the credits again."""
    bank.grant(1, 50)
    params = {"to": bank.ids[2], "amount": 20}
    key = {"Idempotency-Key": "pay-once"}
    first = call(bank.client, "credits.transfer", bank.tokens[1], params, **key)
    assert first.status_code == 200
    store = extension(bank.app).app_manager.capability(KeyValueStore)
    assert store is not None
    forgotten = list(store.scan("idem:"))
    assert forgotten and store.delete(*forgotten) == len(forgotten)
    again = call(bank.client, "credits.transfer", bank.tokens[1], params, **key)
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers  # the handler ran, and recognised it
    assert again.get_json()["data"]["transfer_id"] == first.get_json()["data"]["transfer_id"]
    assert (bank.balance(1), bank.balance(2)) == (30, 20)
    store.delete(*store.scan("idem:"))
    other = call(bank.client, "credits.transfer", bank.tokens[1], {**params, "amount": 5}, **key)
    assert other.status_code == 422 and other.get_json()["type"] == "/problems/idempotency-mismatch"
    assert (bank.balance(1), bank.balance(2)) == (30, 20)
    history = call(bank.client, "credits.history", bank.tokens[2]).get_json()["data"]
    assert [e["kind"] for e in history["entries"]] == ["transfer"]


THREADS, MOVES, USERS, START = 16, 50, 10, 1000


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_transfers_over_http_keep_every_invariant(
    make_app: MakeApp, backend: str, request: pytest.FixtureRequest
) -> None:
    env = {} if backend == "sqlite" else {"DATABASE_URL": request.getfixturevalue("postgres_url")}
    bank = Bank(make_app(env), USERS)
    for i in range(USERS):
        assert bank.grant(i, START).status_code == 200
    statuses: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        client = bank.app.test_client()
        try:
            for _ in range(MOVES):
                source, target = rng.sample(range(USERS), 2)
                response = call(
                    client,
                    "credits.transfer",
                    bank.tokens[source],
                    {"to": bank.ids[target], "amount": rng.randint(1, 400)},
                )
                with lock:
                    statuses.append(response.status_code)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not failures, failures[:3]
    assert len(statuses) == THREADS * MOVES
    assert set(statuses) <= {200, 409}, sorted(set(statuses))
    assert statuses.count(200) > 0 and statuses.count(409) > 0

    wallets = {w["_id"]: w["balance"] for w in bank.db.collection("credit_wallets").find({})}
    ledger = bank.db.collection("credit_ledger").find({})
    granted = sum(e["amount"] for e in ledger if e["kind"] == "grant")
    assert sum(wallets.values()) == granted == USERS * START  # nothing created or lost
    assert min(wallets.values()) >= 0
    replayed: dict[str, int] = defaultdict(int)
    for entry in ledger:
        replayed[entry["to"]] += entry["amount"]
        if entry["from"] is not None:
            replayed[entry["from"]] -= entry["amount"]
    assert dict(replayed) == wallets  # the ledger explains every balance
    transfers = [e for e in ledger if e["kind"] == "transfer"]
    assert len(transfers) == statuses.count(200)
