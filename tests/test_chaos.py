"""Faults under load: credit transfers keep flowing over HTTP through two workers while
Redis is killed and restarted, PostgreSQL is restarted or a worker is killed with -9.

Each run asserts what a client must be able to rely on: no 500 ever; every transfer ends
with a definite answer once the fault is over (a client retries 502/503/504, dropped
connections and 409 ``idempotency-in-progress`` with the same Idempotency-Key); no transfer
lost or applied twice (balances match what the client was told, the total is conserved,
the ledger has one entry per transfer); and recovery without a restart.

The suite runs a small size; ``make chaos`` sets ``CHAOS_SCALE`` for a longer run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.served import Server, promote, running
from tests.servers import PostgresServer, RedisServer

SCALE = int(os.environ.get("CHAOS_SCALE", "1"))
THREADS = 4
MOVES = 15 * SCALE  # transfers per thread
USERS, START = 6, 1000
PASSWORD = "correct horse battery staple"
RETRIED = {502, 503, 504}
SETTLE = 60.0  # how long a transfer may take to get a definite answer


@dataclass
class Bank:
    server: Server
    ids: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    session: requests.Session = field(default_factory=requests.Session)
    statuses: Counter[int] = field(default_factory=Counter)
    dropped: int = 0  # connections that ended without an answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(
        self, action: str, params: dict[str, Any], token: str, key: str | None = None
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        url = f"{self.server.base}/api/v1/actions/{action}"
        answer: requests.Response = self.session.post(url, json=params, headers=headers, timeout=30)
        return answer

    def until_answered(
        self, action: str, params: dict[str, Any], token: str, key: str | None = None
    ) -> requests.Response:
        """Ask again (same key) while the answer is "not now"; the definite answer."""
        deadline = time.monotonic() + SETTLE
        while True:
            response: requests.Response | None
            try:
                response = self.post(action, params, token, key)
            except requests.ConnectionError:  # a worker died mid-request
                response = None
                with self.lock:
                    self.dropped += 1
            if response is not None:
                with self.lock:
                    self.statuses[response.status_code] += 1
                busy = response.status_code == 409 and response.json()["type"].endswith(
                    "idempotency-in-progress"
                )
                if response.status_code not in RETRIED and not busy:
                    return response
            assert time.monotonic() < deadline, f"{action} got no definite answer in {SETTLE}s"
            time.sleep(0.2)

    def open(self) -> None:
        for n in range(USERS):
            email = f"user{n}@example.com"
            account = {"email": email, "password": PASSWORD}
            made = self.session.post(
                f"{self.server.base}/api/v1/actions/auth.register", json=account, timeout=30
            )
            assert made.status_code == 200, made.text
            self.ids.append(made.json()["data"]["id"])
            if n == 0:
                promote(self.server, email)
            login = self.session.post(
                f"{self.server.base}/api/v1/actions/auth.login", json=account, timeout=30
            )
            self.tokens.append(login.json()["data"]["access_token"])
        for n in range(USERS):
            granted = self.until_answered(
                "credits.grant", {"to": self.ids[n], "amount": START}, self.tokens[0], f"g{n}"
            )
            assert granted.status_code == 200, granted.text

    def balances(self) -> list[int]:
        found = []
        for token in self.tokens:
            answer = self.until_answered("credits.balance", {}, token)
            assert answer.status_code == 200, answer.text
            found.append(answer.json()["data"]["balance"])
        return found

    def outgoing_entries(self, n: int) -> int:
        """Transfers from user ``n`` in its ledger history (every page of it)."""
        count, offset = 0, 0
        while True:
            page = self.until_answered(
                "credits.history", {"limit": 100, "offset": offset}, self.tokens[n]
            ).json()["data"]
            count += sum(
                1 for e in page["entries"] if e["kind"] == "transfer" and e["from"] == self.ids[n]
            )
            offset += len(page["entries"])
            if not page["entries"] or offset >= page["total"]:
                return count


@dataclass
class Moves:
    """What the clients were told: the transfers that happened, and those refused."""

    done: list[tuple[int, int, int]] = field(default_factory=list)  # (from, to, amount)
    refused: int = 0
    asked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(bank: Bank, fault: Callable[[], None]) -> Moves:
    """THREADS clients moving credits before, during and after ``fault()``: each makes at
    least MOVES transfers and keeps going until the fault is over."""
    moves = Moves()
    failures: list[BaseException] = []
    over = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            m = 0
            while m < MOVES or not over.is_set():
                source, target = rng.sample(range(USERS), 2)
                amount = rng.randint(1, 50)
                answer = bank.until_answered(
                    "credits.transfer",
                    {"to": bank.ids[target], "amount": amount},
                    bank.tokens[source],
                    f"t{seed}-{m}",
                )
                with moves.lock:
                    moves.asked += 1
                    if answer.status_code == 200:
                        moves.done.append((source, target, amount))
                    else:
                        assert answer.status_code == 409, answer.text  # insufficient credits
                        moves.refused += 1
                m += 1
                time.sleep(rng.random() * 0.02)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # transfers are flowing
        fault()
        time.sleep(0.5)  # and flow on after it
    finally:
        over.set()
    for thread in threads:
        thread.join(SETTLE * 2)
    assert not failures, failures[:3]
    return moves


def assert_nothing_lost_or_doubled(bank: Bank, moves: Moves) -> None:
    assert len(moves.done) + moves.refused == moves.asked >= THREADS * MOVES
    expected = [START] * USERS
    outgoing = [0] * USERS
    for source, target, amount in moves.done:
        expected[source] -= amount
        expected[target] += amount
        outgoing[source] += 1
    assert bank.balances() == expected
    assert sum(expected) == USERS * START
    assert [bank.outgoing_entries(n) for n in range(USERS)] == outgoing
    assert not [s for s in bank.statuses if s >= 500 and s not in RETRIED], bank.statuses


def assert_recovered(bank: Bank) -> None:
    deadline = time.monotonic() + SETTLE
    while requests.get(f"{bank.server.base}/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readiness did not recover"
        time.sleep(0.2)
    fresh = bank.post("credits.transfer", {"to": bank.ids[1], "amount": 1}, bank.tokens[0], "new")
    assert fresh.status_code == 200, fresh.text
    assert "Traceback" not in bank.server.output()


@contextmanager
def served(tmp_path: Path, env: dict[str, str]) -> Iterator[Bank]:
    full = {"SB_HTTP__WORKERS": "2", "SB_IDEMPOTENCY__CLAIM_TTL": "3s", **env}
    with running(tmp_path, "serve", env=full) as server:
        bank = Bank(server)
        bank.open()
        yield bank


def test_redis_killed_and_restarted_under_load(tmp_path: Path, private_redis: RedisServer) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/app.db", "REDIS_URL": private_redis.url()}
    with served(tmp_path, env) as bank:

        def fault() -> None:
            assert private_redis.process is not None
            private_redis.process.send_signal(signal.SIGKILL)  # no goodbye, nothing kept
            private_redis.process.wait(10)
            time.sleep(1.5)
            private_redis.start()

        moves = load(bank, fault)
        assert_nothing_lost_or_doubled(bank, moves)
        assert 503 in bank.statuses  # the outage was seen, and answered cleanly
        assert_recovered(bank)


def test_postgres_restarted_under_load(
    tmp_path: Path, private_redis: RedisServer, private_postgres: PostgresServer
) -> None:
    env = {
        "DATABASE_URL": private_postgres.create_database("chaos"),
        "REDIS_URL": private_redis.url(),
    }
    with served(tmp_path, env) as bank:

        def fault() -> None:
            private_postgres.restart()

        moves = load(bank, fault)
        assert_nothing_lost_or_doubled(bank, moves)
        assert_recovered(bank)


def workers_of(server: Server) -> list[int]:
    """The live worker processes uvicorn runs for ``server`` (not its resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        worker = b"spawn_main" in command and b"resource_tracker" not in command
        if int(parent) == server.process.pid and state != "Z" and worker:
            found.append(int(entry.name))
    return found


def test_a_worker_killed_under_load(tmp_path: Path, private_redis: RedisServer) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/app.db", "REDIS_URL": private_redis.url()}
    with served(tmp_path, env) as bank:
        before = workers_of(bank.server)
        assert len(before) == 2, before

        def fault() -> None:
            os.kill(before[0], signal.SIGKILL)

        moves = load(bank, fault)
        assert_nothing_lost_or_doubled(bank, moves)
        assert_recovered(bank)
        deadline = time.monotonic() + 20
        while len(workers_of(bank.server)) < 2:  # the dead worker was replaced
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.2)
        assert before[0] not in workers_of(bank.server)
