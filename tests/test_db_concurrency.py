"""Concurrent transactions: money is neither created nor destroyed, nothing goes negative."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.contracts.documents import Collection
from managers.db.manager import Database
from tests.db_backends import database, unique_collection

THREADS, MOVES, WALLETS, START = 16, 50, 10, 100


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from database(request.param, request, tmp_path)


class Insufficient(Exception):
    """Raised inside the transaction to roll it back."""


def move(db: Database, wallets: Collection, source: str, target: str, amount: int) -> bool:
    """Move ``amount`` if ``source`` can afford it; rows are touched in id order so that two
    opposite moves never wait on each other."""

    def work() -> None:
        for wallet in sorted((source, target)):
            if wallet == source:
                guarded = {"_id": source, "balance": {"$gte": amount}}
                if not wallets.update_one(guarded, {"$inc": {"balance": -amount}}):
                    raise Insufficient(source)
            else:
                assert wallets.update_one({"_id": target}, {"$inc": {"balance": amount}})

    try:
        db.run_transaction(work)
    except Insufficient:
        return False
    return True


def test_concurrent_moves_conserve_the_total_and_never_go_negative(db: Database) -> None:
    wallets = db.collection(unique_collection("wallets"))
    names = [f"w{i}" for i in range(WALLETS)]
    for name in names:
        wallets.insert_one({"_id": name, "balance": START})
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(MOVES):
                source, target = rng.sample(names, 2)
                done = move(db, wallets, source, target, rng.randint(1, 60))
                with lock:
                    outcomes.append(done)
        except BaseException as exc:  # surfaced below: a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[:3]
    assert len(outcomes) == THREADS * MOVES
    balances = {d["_id"]: d["balance"] for d in wallets.find({})}
    assert sum(balances.values()) == WALLETS * START
    assert min(balances.values()) >= 0
    assert any(outcomes) and not all(outcomes)  # both paths were really exercised
    versions = sum(d["_version"] - 1 for d in wallets.find({}))
    assert versions == 2 * sum(outcomes)  # every successful move wrote exactly two rows
