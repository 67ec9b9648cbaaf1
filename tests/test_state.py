"""StateManager: module.yaml machines, versioned transitions with the database as the truth,
the three read tiers and cross-worker invalidation, and every machine mistake a boot error."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from core.base.errors import Conflict, ModuleError, NotFound, Problem, ValidationError
from core.transports.http import extension
from managers.db.manager import DatabaseManager
from managers.redis.manager import RedisManager
from managers.state_manager import StateManager
from tests.conftest import MakeApp, WriteModule
from tests.helpers import module_object
from tests.servers import RedisServer

KIND = "shop.order"

MODULE_YAML = """
requires: [db]  # its hook reads the runtime's sb_states
state_machines:
  order:
    description: An order from checkout to the door
    initial: pending
    states: [pending, paid, shipped, cancelled]
    transitions:
      pending: [paid, cancelled]
      paid: [shipped, cancelled]
    guards:
      shipped: handlers:can_ship
"""

INIT = """
import threading

from core.contracts.module import BaseModule


class Shop(BaseModule):
    def initialize(self, app_manager):
        self.app_manager = app_manager
        self.events = []
        app_manager.hooks.register("state.changed", self._changed, owner="shop")

    def _changed(self, event):
        # Read the row from another thread, so on another connection: it sees the change
        # only if the transaction that made it has committed.
        db = self.ctx.db
        key = event.data["kind"] + ":" + event.data["id"]
        seen = {}

        def read():
            seen["row"] = db.collection("sb_states").find_one({"_id": key})

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(10)
        row = seen.get("row")
        self.events.append(
            {
                **event.data,
                "committed": None if row is None else (row["state"], row["_version"]),
            }
        )
"""

ACTIONS = """
actions:
  create:
    handler: handlers:create
    auth: public
    params:
      id: {type: string, required: true}
      data: {type: object}
  transition:
    handler: handlers:transition
    auth: public
    params:
      id: {type: string, required: true}
      to: {type: string, required: true}
      data: {type: object}
      expected_version: {type: integer}
  get:
    handler: handlers:get
    auth: public
    params:
      id: {type: string, required: true}
  history:
    handler: handlers:history
    auth: public
    params:
      id: {type: string, required: true}
  delete:
    handler: handlers:delete
    auth: public
    params:
      id: {type: string, required: true}
  pay_in_a_transaction:
    handler: handlers:pay_in_a_transaction
    auth: public
    params:
      id: {type: string, required: true}
      fail: {type: boolean, default: false}
"""

HANDLERS = """
import time

from core.base.errors import Conflict


def can_ship(record, to, data):
    if data.get("slow"):  # holds the transaction open between its read and its write
        time.sleep(0.05)
    return bool(data.get("address"))


def kind(ctx):
    return ctx.module + ".order"


def create(ctx, *, id, data=None):
    return ctx.state.create(kind(ctx), id, data)


def transition(ctx, *, id, to, data=None, expected_version=None):
    return ctx.state.transition(kind(ctx), id, to, data=data, expected_version=expected_version)


def get(ctx, *, id):
    return ctx.state.get(kind(ctx), id)


def history(ctx, *, id):
    return ctx.state.history(kind(ctx), id)


def delete(ctx, *, id):
    return {"deleted": ctx.state.delete(kind(ctx), id)}


def pay_in_a_transaction(ctx, *, id, fail=False):
    # the caller's own transaction around a transition, with a write of its own
    with ctx.db.transaction():
        ctx.db.collection("payments").insert_one({"order": id})
        record = ctx.state.transition(kind(ctx), id, "paid")
        if fail:
            raise Conflict("card declined")
    return record
"""

SHOP_FILES = {
    "__init__.py": INIT,
    "module.yaml": MODULE_YAML,
    "actions.yaml": ACTIONS,
    "handlers.py": HANDLERS,
}


@pytest.fixture
def shop(write_module: WriteModule) -> Path:
    return write_module("shop", SHOP_FILES)


@pytest.fixture
def shop_app(make_app: MakeApp, shop: Path) -> Flask:
    return make_app({"MODULES_PATH": str(shop)})


def call(app: Flask, action: str, **params: Any) -> tuple[int, Any]:
    response = app.test_client().post(f"/api/v1/actions/shop.{action}", json=params)
    body = response.get_json()
    return response.status_code, body["data"] if response.status_code == 200 else body


def states(app: Flask) -> StateManager:
    return extension(app).app_manager.get(StateManager)


def db_row(app: Flask, id: str) -> dict[str, Any] | None:
    database = extension(app).app_manager.get(DatabaseManager).documents
    row: dict[str, Any] | None = database.collection("sb_states").find_one({"_id": f"{KIND}:{id}"})
    return row


def db_history(app: Flask, id: str) -> list[dict[str, Any]]:
    database = extension(app).app_manager.get(DatabaseManager).documents
    found: list[dict[str, Any]] = database.collection("sb_state_history").find(
        {"kind": KIND, "id": id}, sort=[("version", 1)]
    )
    return found


def shared_copy(app: Flask, id: str) -> dict[str, Any] | None:
    raw = extension(app).app_manager.get(RedisManager).store.get(f"state:{KIND}:{id}")
    return None if raw is None else dict(json.loads(raw))


def events(app: Flask) -> list[dict[str, Any]]:
    module = module_object(app, "shop")
    found: list[dict[str, Any]] = module.events
    return found


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll ``check`` until it holds or the deadline passes (no duration is asserted)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# --- the API over HTTP ---------------------------------------------------------------------


def test_create_starts_in_the_initial_state_at_version_one(shop_app: Flask) -> None:
    status, record = call(shop_app, "create", id="o1", data={"total": 30})
    assert status == 200
    assert record["kind"] == KIND and record["id"] == "o1"
    assert record["state"] == "pending" and record["version"] == 1
    assert record["data"] == {"total": 30}
    status, got = call(shop_app, "get", id="o1")
    assert status == 200
    assert (got["state"], got["version"], got["data"]) == ("pending", 1, {"total": 30})


def test_creating_an_existing_id_again_is_a_conflict(shop_app: Flask) -> None:
    assert call(shop_app, "create", id="o1", data={"total": 30})[0] == 200
    status, problem = call(shop_app, "create", id="o1", data={"total": 99})
    assert status == 409 and problem["type"] == "/problems/conflict"
    got = call(shop_app, "get", id="o1")[1]
    assert (got["version"], got["data"]) == (1, {"total": 30})


def test_get_of_an_unknown_id_is_none(shop_app: Flask) -> None:
    assert call(shop_app, "get", id="nobody") == (200, None)


def test_a_legal_transition_moves_the_state_bumps_the_version_and_merges_data(
    shop_app: Flask,
) -> None:
    call(shop_app, "create", id="o1", data={"total": 30, "note": "gift"})
    status, record = call(shop_app, "transition", id="o1", to="paid", data={"paid_by": "card"})
    assert status == 200
    assert record["state"] == "paid" and record["version"] == 2
    assert record["data"] == {"total": 30, "note": "gift", "paid_by": "card"}
    got = call(shop_app, "get", id="o1")[1]
    assert (got["state"], got["version"]) == ("paid", 2)
    assert got["data"] == {"total": 30, "note": "gift", "paid_by": "card"}
    status, record = call(shop_app, "transition", id="o1", to="cancelled", data={"total": 0})
    assert status == 200 and record["version"] == 3
    assert record["data"] == {"total": 0, "note": "gift", "paid_by": "card"}  # later wins


def test_an_illegal_transition_is_a_conflict_and_changes_nothing(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    status, problem = call(shop_app, "transition", id="o1", to="shipped", data={"address": "x"})
    assert status == 409
    assert problem["type"] == "/problems/conflict"
    assert "pending" in problem["detail"] and "shipped" in problem["detail"]
    got = call(shop_app, "get", id="o1")[1]
    assert (got["state"], got["version"], got["data"]) == ("pending", 1, {})
    # a terminal state goes nowhere, not even to itself
    call(shop_app, "transition", id="o1", to="cancelled")
    assert call(shop_app, "transition", id="o1", to="cancelled")[0] == 409
    assert call(shop_app, "transition", id="o1", to="pending")[0] == 409
    assert len(call(shop_app, "history", id="o1")[1]) == 2


def test_an_unknown_target_state_is_a_validation_error(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    status, problem = call(shop_app, "transition", id="o1", to="teleported")
    assert status == 422 and problem["type"] == "/problems/validation"
    assert "teleported" in problem["detail"]
    assert call(shop_app, "get", id="o1")[1]["version"] == 1


def test_transition_of_an_unknown_id_is_not_found(shop_app: Flask) -> None:
    status, problem = call(shop_app, "transition", id="ghost", to="paid")
    assert status == 404 and problem["type"] == "/problems/not-found"
    assert call(shop_app, "get", id="ghost")[1] is None


def test_a_refusing_guard_is_a_conflict_and_leaves_the_state_unchanged(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    call(shop_app, "transition", id="o1", to="paid")
    status, problem = call(shop_app, "transition", id="o1", to="shipped", data={"carrier": "dhl"})
    assert status == 409 and problem["type"] == "/problems/conflict"
    got = call(shop_app, "get", id="o1")[1]
    assert (got["state"], got["version"], got["data"]) == ("paid", 2, {})
    assert db_row(shop_app, "o1") is not None
    assert (db_row(shop_app, "o1") or {})["_version"] == 2
    assert [e["to"] for e in call(shop_app, "history", id="o1")[1]] == ["pending", "paid"]
    # the same move with what the guard wants passes
    status, record = call(shop_app, "transition", id="o1", to="shipped", data={"address": "1 Rd"})
    assert status == 200
    assert (record["state"], record["version"]) == ("shipped", 3)
    assert record["data"] == {"address": "1 Rd"}


def test_expected_version_must_match_the_current_version(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    status, problem = call(shop_app, "transition", id="o1", to="paid", expected_version=2)
    assert status == 409 and problem["type"] == "/problems/conflict"
    assert call(shop_app, "get", id="o1")[1]["state"] == "pending"
    status, record = call(shop_app, "transition", id="o1", to="paid", expected_version=1)
    assert status == 200 and record["version"] == 2
    # a stale writer that read version 1 now loses, even for a legal move
    status, _ = call(shop_app, "transition", id="o1", to="cancelled", expected_version=1)
    assert status == 409
    assert call(shop_app, "get", id="o1")[1]["state"] == "paid"
    status, record = call(shop_app, "transition", id="o1", to="cancelled", expected_version=2)
    assert status == 200 and record["version"] == 3


def test_history_lists_every_move_in_order(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    call(shop_app, "transition", id="o1", to="paid")
    call(shop_app, "transition", id="o1", to="shipped", data={"carrier": "x"})  # refused
    call(shop_app, "transition", id="o1", to="shipped", data={"address": "1 Rd"})
    status, history = call(shop_app, "history", id="o1")
    assert status == 200
    assert [(e["from"], e["to"], e["version"]) for e in history] == [
        (None, "pending", 1),
        ("pending", "paid", 2),
        ("paid", "shipped", 3),
    ]
    stamps = [e["at"] for e in history]
    assert stamps == sorted(stamps) and all(isinstance(s, (int, float)) for s in stamps)
    assert call(shop_app, "history", id="nobody") == (200, [])


def test_state_changed_fires_after_commit_for_every_change(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    call(shop_app, "transition", id="o1", to="paid")
    call(shop_app, "transition", id="o1", to="pending")  # illegal: no event
    call(shop_app, "transition", id="o1", to="shipped")  # guard refuses: no event
    call(shop_app, "transition", id="o1", to="cancelled", expected_version=1)  # stale: none
    call(shop_app, "transition", id="o1", to="cancelled")
    seen = events(shop_app)
    assert [{k: e[k] for k in ("kind", "id", "from", "to", "version")} for e in seen] == [
        {"kind": KIND, "id": "o1", "from": None, "to": "pending", "version": 1},
        {"kind": KIND, "id": "o1", "from": "pending", "to": "paid", "version": 2},
        {"kind": KIND, "id": "o1", "from": "paid", "to": "cancelled", "version": 3},
    ]
    # another connection already saw each change when the hook ran: it fired after commit
    assert [e["committed"] for e in seen] == [("pending", 1), ("paid", 2), ("cancelled", 3)]


def test_the_database_holds_the_truth_and_the_shared_copy_is_dropped_then_refilled(
    shop_app: Flask,
) -> None:
    call(shop_app, "create", id="o1", data={"total": 30})
    assert shared_copy(shop_app, "o1") is None  # dropped on every change, never written
    # This worker's copy may or may not have been dropped yet by its own invalidation
    # message (delivered on another thread): drop it, so the read below always misses it.
    states(shop_app)._forget(f"{KIND}:o1")
    assert call(shop_app, "get", id="o1")[1]["version"] == 1
    assert shared_copy(shop_app, "o1")["version"] == 1  # type: ignore[index]  # refilled
    call(shop_app, "transition", id="o1", to="paid", data={"paid_by": "card"})
    assert shared_copy(shop_app, "o1") is None
    row = db_row(shop_app, "o1")
    assert row is not None
    assert row["state"] == "paid" and row["_version"] == 2
    assert row["data"] == {"total": 30, "paid_by": "card"}
    assert [(h["from"], h["to"], h["version"]) for h in db_history(shop_app, "o1")] == [
        (None, "pending", 1),
        ("pending", "paid", 2),
    ]
    states(shop_app)._forget(f"{KIND}:o1")  # as if this worker's copy had expired
    assert call(shop_app, "get", id="o1")[1]["state"] == "paid"
    shared = shared_copy(shop_app, "o1")
    assert shared is not None
    assert shared["state"] == "paid" and shared["version"] == 2
    assert shared["data"] == {"total": 30, "paid_by": "card"}


def test_a_read_that_a_commit_overtakes_leaves_no_stale_copy(shop_app: Flask) -> None:
    """A reader misses both caches and reads version 1; before it refills the shared copy,
    a transition commits version 2. Neither the shared copy nor the reader's memory may
    keep version 1 (a stale copy used to survive there for SHARED_TTL)."""
    call(shop_app, "create", id="o1")
    manager = states(shop_app)
    manager._forget(f"{KIND}:o1")
    records = manager._records()

    class Overtaken:
        """The records collection, with a commit landing right after a read of it."""

        def find_one(self, filter: dict[str, Any]) -> Any:
            found = records.find_one(filter)
            manager._records = lambda: records  # type: ignore[method-assign]
            call(shop_app, "transition", id="o1", to="paid")
            manager._forget(f"{KIND}:o1")  # as on a worker that did not make the commit
            return found

    manager._records = Overtaken  # type: ignore[assignment,method-assign]
    assert call(shop_app, "get", id="o1")[1]["version"] == 1  # what it read, returned once
    shared = shared_copy(shop_app, "o1")
    assert shared is None or shared["version"] == 2
    assert f"{KIND}:o1" not in manager._local  # not remembered either
    assert call(shop_app, "get", id="o1")[1]["version"] == 2


def test_a_transition_checks_the_version_in_the_database_not_in_a_cache(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    assert call(shop_app, "get", id="o1")[1]["version"] == 1  # now cached in every tier
    # someone else moves the row behind every cache's back
    database = extension(shop_app).app_manager.get(DatabaseManager).documents
    database.collection("sb_states").update_one(
        {"_id": f"{KIND}:o1"}, {"$set": {"state": "cancelled"}}
    )
    status, _ = call(shop_app, "transition", id="o1", to="paid", expected_version=1)
    assert status == 409  # version 2 in the database
    status, _ = call(shop_app, "transition", id="o1", to="paid")
    assert status == 409  # cancelled in the database
    row = db_row(shop_app, "o1")
    assert row is not None and (row["state"], row["_version"]) == ("cancelled", 2)


def test_delete_removes_the_record_and_its_history(shop_app: Flask) -> None:
    call(shop_app, "create", id="o1")
    call(shop_app, "transition", id="o1", to="paid")
    call(shop_app, "create", id="o2")
    assert call(shop_app, "get", id="o1")[1]["state"] == "paid"  # cached locally
    assert call(shop_app, "delete", id="o1") == (200, {"deleted": True})
    assert call(shop_app, "get", id="o1") == (200, None)
    assert call(shop_app, "history", id="o1") == (200, [])
    assert db_row(shop_app, "o1") is None and db_history(shop_app, "o1") == []
    assert shared_copy(shop_app, "o1") is None
    assert call(shop_app, "transition", id="o1", to="cancelled")[0] == 404
    assert call(shop_app, "delete", id="o1") == (200, {"deleted": False})
    # the other instance is untouched, and the id can start over
    assert call(shop_app, "get", id="o2")[1]["state"] == "pending"
    assert len(db_history(shop_app, "o2")) == 1
    status, record = call(shop_app, "create", id="o1")
    assert status == 200 and (record["state"], record["version"]) == ("pending", 1)
    assert [e["version"] for e in call(shop_app, "history", id="o1")[1]] == [1]


def test_the_manager_api_raises_the_documented_errors(shop_app: Flask) -> None:
    manager = states(shop_app)
    manager.create(KIND, "o1")
    with pytest.raises(Conflict):
        manager.create(KIND, "o1")
    with pytest.raises(ValidationError):
        manager.transition(KIND, "o1", "teleported")
    with pytest.raises(NotFound):
        manager.transition(KIND, "ghost", "paid")
    with pytest.raises(Conflict):
        manager.transition(KIND, "o1", "shipped")
    with pytest.raises(Conflict):
        manager.transition(KIND, "o1", "paid", expected_version=7)
    with pytest.raises(ValidationError):
        manager.create(KIND, "")
    with pytest.raises(LookupError):
        manager.get("shop.nothing", "o1")
    assert manager.health().status == "ok"
    assert KIND in manager.health().details["machines"]


def test_a_machine_may_be_defined_in_code(make_app: MakeApp, write_module: WriteModule) -> None:
    parent = write_module(
        "door",
        {
            "__init__.py": """
            from core.contracts.module import BaseModule
            from core.contracts.state import Machine


            class Door(BaseModule):
                def initialize(self, app_manager):
                    app_manager.state.define(
                        Machine(
                            "door.lock",
                            initial="closed",
                            states=frozenset({"open", "closed"}),
                            transitions={
                                "open": frozenset({"closed"}),
                                "closed": frozenset({"open"}),
                            },
                        )
                    )
            """
        },
    )
    app = make_app({"MODULES_PATH": str(parent)})
    manager = states(app)
    assert manager.create("door.lock", "front")["state"] == "closed"
    assert manager.transition("door.lock", "front", "open")["version"] == 2
    with pytest.raises(Conflict):
        manager.transition("door.lock", "front", "open")


def test_the_records_handed_out_are_copies_of_the_cached_one(shop_app: Flask) -> None:
    manager = states(shop_app)
    created = manager.create(KIND, "o1", {"total": 30, "lines": [1]})
    created["data"]["total"] = -1
    got = manager.get(KIND, "o1")
    assert got is not None and got["data"] == {"total": 30, "lines": [1]}
    got["data"]["total"] = -2
    got["data"]["lines"].append(2)
    again = manager.get(KIND, "o1")
    assert again is not None and again["data"] == {"total": 30, "lines": [1]}
    moved = manager.transition(KIND, "o1", "paid", data={"paid_by": "card"})
    moved["data"]["total"] = -3
    after = manager.get(KIND, "o1")
    assert after is not None
    assert after["data"] == {"total": 30, "lines": [1], "paid_by": "card"}


def test_a_transition_inside_the_callers_transaction_is_announced_after_its_commit(
    shop_app: Flask,
) -> None:
    call(shop_app, "create", id="o1")
    status, record = call(shop_app, "pay_in_a_transaction", id="o1")
    assert status == 200 and (record["state"], record["version"]) == ("paid", 2)
    assert [e["to"] for e in events(shop_app)] == ["pending", "paid"]
    # state.changed fires after commit: when it ran, another connection saw the change
    assert events(shop_app)[-1]["committed"] == ("paid", 2)


def test_a_transition_rolled_back_with_the_callers_transaction_leaves_no_trace(
    shop_app: Flask,
) -> None:
    call(shop_app, "create", id="o1")
    status, problem = call(shop_app, "pay_in_a_transaction", id="o1", fail=True)
    assert status == 409 and problem["detail"] == "card declined"
    row = db_row(shop_app, "o1")
    assert row is not None and (row["state"], row["_version"]) == ("pending", 1)
    # no tier may serve a state the database never committed, and no hook announced it
    got = call(shop_app, "get", id="o1")[1]
    assert (got["state"], got["version"]) == ("pending", 1)
    shared = shared_copy(shop_app, "o1")
    assert shared is None or (shared["state"], shared["version"]) == ("pending", 1)
    assert [e["to"] for e in events(shop_app)] == ["pending"]
    # and the move can still be made for real
    status, record = call(shop_app, "transition", id="o1", to="paid", expected_version=1)
    assert status == 200 and record["version"] == 2


# --- concurrency ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/race.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def race(workers: int, work: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``work`` on ``workers`` threads released together; their results and errors."""
    barrier = threading.Barrier(workers)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(30)
        try:
            result = work()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(result)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a transition never returned"
    return results, errors


def test_eight_concurrent_transitions_from_the_same_version_exactly_one_wins(
    make_app: MakeApp, shop: Path, database_url: str
) -> None:
    app = make_app({"MODULES_PATH": str(shop), "DATABASE_URL": database_url})
    manager = states(app)
    manager.create(KIND, "o1", {"total": 30})
    results, errors = race(
        8, lambda: manager.transition(KIND, "o1", "paid", data={"n": 1}, expected_version=1)
    )
    assert len(results) == 1, (results, errors)
    assert len(errors) == 7 and all(isinstance(e, Conflict) for e in errors), errors
    assert (results[0]["state"], results[0]["version"]) == ("paid", 2)
    got = manager.get(KIND, "o1")
    assert got is not None and (got["state"], got["version"]) == ("paid", 2)
    row = db_row(app, "o1")
    assert row is not None and (row["state"], row["_version"]) == ("paid", 2)
    assert [(h["from"], h["to"], h["version"]) for h in manager.history(KIND, "o1")] == [
        (None, "pending", 1),
        ("pending", "paid", 2),
    ]
    assert [e["version"] for e in events(app)] == [1, 2]  # one state.changed for the move


def test_concurrent_transitions_without_expected_version_still_let_one_win(
    make_app: MakeApp, shop: Path, database_url: str
) -> None:
    app = make_app({"MODULES_PATH": str(shop), "DATABASE_URL": database_url})
    manager = states(app)
    manager.create(KIND, "o1")
    results, errors = race(8, lambda: manager.transition(KIND, "o1", "paid"))
    assert len(results) == 1, (results, errors)
    assert len(errors) == 7 and all(isinstance(e, Conflict) for e in errors), errors
    assert [h["version"] for h in manager.history(KIND, "o1")] == [1, 2]
    row = db_row(app, "o1")
    assert row is not None and (row["state"], row["_version"]) == ("paid", 2)


@pytest.mark.parametrize("expected", [2, None], ids=["expected-version", "any-version"])
def test_a_slow_guard_widens_the_race_and_still_exactly_one_wins(
    make_app: MakeApp, shop: Path, database_url: str, expected: int | None
) -> None:
    app = make_app({"MODULES_PATH": str(shop), "DATABASE_URL": database_url})
    manager = states(app)
    manager.create(KIND, "o1")
    manager.transition(KIND, "o1", "paid")
    data = {"address": "1 Rd", "slow": True}
    results, errors = race(
        8, lambda: manager.transition(KIND, "o1", "shipped", data=data, expected_version=expected)
    )
    assert len(results) == 1, (results, errors)
    assert len(errors) == 7 and all(isinstance(e, Conflict) for e in errors), errors
    assert [h["version"] for h in manager.history(KIND, "o1")] == [1, 2, 3]
    row = db_row(app, "o1")
    assert row is not None and (row["state"], row["_version"]) == ("shipped", 3)
    assert [e["version"] for e in events(app)] == [1, 2, 3]


# --- two workers ---------------------------------------------------------------------------


@pytest.fixture
def shared_env(
    shop: Path, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Callable[..., dict[str, str]]:
    """The environment of two workers sharing one database file and one Redis prefix."""

    def env(local_ttl: str) -> dict[str, str]:
        return {
            "MODULES_PATH": str(shop),
            "DATABASE_URL": f"sqlite:///{tmp_path}/shared.db",
            "REDIS_URL": redis_url,
            "SB_REDIS__PREFIX": redis_prefix,
            "SB_STATE__LOCAL_TTL": local_ttl,
        }

    return env


def test_another_worker_sees_a_transition_through_invalidation(
    make_app: MakeApp, shared_env: Callable[..., dict[str, str]]
) -> None:
    # a local TTL far beyond the polling deadline: only the pub/sub message can refresh B
    first = make_app(shared_env("600"))
    second = make_app(shared_env("600"))
    assert call(first, "create", id="o1")[0] == 200
    assert call(second, "get", id="o1")[1]["state"] == "pending"  # B caches it
    assert call(second, "get", id="o1")[1]["state"] == "pending"
    assert call(first, "transition", id="o1", to="paid")[0] == 200
    assert eventually(lambda: call(second, "get", id="o1")[1]["version"] == 2)
    assert call(second, "get", id="o1")[1]["state"] == "paid"
    # and back the other way: B moves it, A follows
    assert call(second, "transition", id="o1", to="cancelled", expected_version=2)[0] == 200
    assert eventually(lambda: call(first, "get", id="o1")[1]["state"] == "cancelled")
    # a transition on A from a version B moved past loses: the database decides
    status, _ = call(first, "transition", id="o1", to="shipped", expected_version=2)
    assert status == 409


def test_another_worker_sees_a_transition_with_a_short_local_ttl(
    make_app: MakeApp, shared_env: Callable[..., dict[str, str]]
) -> None:
    first = make_app(shared_env("0.2"))
    second = make_app(shared_env("0.2"))
    call(first, "create", id="o1")
    assert call(second, "get", id="o1")[1]["version"] == 1
    call(first, "transition", id="o1", to="paid")
    assert eventually(lambda: call(second, "get", id="o1")[1]["state"] == "paid")


def test_another_worker_sees_a_delete(
    make_app: MakeApp, shared_env: Callable[..., dict[str, str]]
) -> None:
    first = make_app(shared_env("600"))
    second = make_app(shared_env("600"))
    call(first, "create", id="o1")
    assert call(second, "get", id="o1")[1]["state"] == "pending"
    assert call(first, "delete", id="o1")[1] == {"deleted": True}
    assert eventually(lambda: call(second, "get", id="o1")[1] is None)


def test_a_missed_invalidation_is_bounded_by_the_local_ttl(
    make_app: MakeApp, shared_env: Callable[..., dict[str, str]]
) -> None:
    first = make_app(shared_env("0.3"))
    second = make_app(shared_env("0.3"))
    call(first, "create", id="o1")
    # B's subscription is closed (its thread joined): it misses every message from now on
    states(second).stop()
    assert call(second, "get", id="o1")[1]["state"] == "pending"
    call(first, "transition", id="o1", to="paid")
    assert eventually(lambda: call(second, "get", id="o1")[1]["state"] == "paid")


def test_without_the_message_the_local_copy_is_served_until_its_ttl(
    make_app: MakeApp, shared_env: Callable[..., dict[str, str]]
) -> None:
    first = make_app(shared_env("600"))
    second = make_app(shared_env("600"))
    call(first, "create", id="o1")
    states(second).stop()  # before B reads, so no late message can drop B's copy
    assert call(second, "get", id="o1")[1]["state"] == "pending"
    call(first, "transition", id="o1", to="paid")
    # the hot tier answers from memory; the truth is already in the database and Redis
    assert call(second, "get", id="o1")[1]["state"] == "pending"
    assert (db_row(second, "o1") or {})["state"] == "paid"
    assert shared_copy(second, "o1") is None  # dropped by A's transition
    # writes never trust that copy: B's transition is checked against the database
    status, _ = call(second, "transition", id="o1", to="cancelled", expected_version=1)
    assert status == 409
    status, record = call(second, "transition", id="o1", to="cancelled", expected_version=2)
    assert status == 200 and record["version"] == 3


def test_a_committed_transition_is_reported_and_announced_while_redis_is_down(
    make_app: MakeApp, shop: Path, redis_server: RedisServer, redis_prefix: str
) -> None:
    private = RedisServer()  # stopped below; the session's server stays up for other tests
    try:
        private.start()
        app = make_app(
            {
                "MODULES_PATH": str(shop),
                "REDIS_URL": private.url(),
                "SB_REDIS__PREFIX": redis_prefix,
            }
        )
        call(app, "create", id="o1")
        private.stop()
        status, body = call(app, "transition", id="o1", to="paid")
        row = db_row(app, "o1")
        assert row is not None and (row["state"], row["_version"]) == ("paid", 2)  # committed
        # the database is the truth: a committed move is not reported as a failure (a retry
        # would then be refused as illegal), and state.changed still fires
        assert status == 200, body
        assert [e["to"] for e in events(app)] == ["pending", "paid"]
    finally:
        private.cleanup()


# --- machine mistakes are boot errors ------------------------------------------------------


def machine_error(make_app: MakeApp, write_module: WriteModule, manifest: str) -> Problem:
    parent = write_module("shop", {**SHOP_FILES, "module.yaml": manifest})
    with pytest.raises(ModuleError) as caught:
        make_app({"MODULES_PATH": str(parent)})
    problems = list(caught.value.problems)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.module == "shop"
    assert problem.file is not None and problem.file.endswith("module.yaml")
    return problem


MISTAKES = [
    (
        "initial: pending",
        "initial: waiting",
        "state_machines.order.initial",
        "'waiting' is not one of the states",
    ),
    (
        "paid: [shipped, cancelled]",
        "paid: [shipped, refunded]",
        "state_machines.order.transitions.paid",
        "known states",
    ),
    (
        "pending: [paid, cancelled]",
        "pending: [paid, cancelled]\n      lost: [paid]",
        "state_machines.order.transitions.lost",
        "unknown state 'lost'",
    ),
    (
        "initial: pending",
        "initial: pending\n    colour: blue",
        "state_machines.order.colour",
        "unknown key 'colour'",
    ),
    (
        "shipped: handlers:can_ship",
        "shipped: handlers:no_such_guard",
        "state_machines.order.guards.shipped",
        "no_such_guard",
    ),
    (
        "shipped: handlers:can_ship",
        "shipped: nowhere:can_ship",
        "state_machines.order.guards.shipped",
        "nowhere",
    ),
    (
        "shipped: handlers:can_ship",
        "lost: handlers:can_ship",
        "state_machines.order.guards.lost",
        "unknown state 'lost'",
    ),
    (
        "states: [pending, paid, shipped, cancelled]",
        "states: []",
        "state_machines.order.states",
        "non-empty list",
    ),
]

MISTAKE_IDS = [
    "initial-not-a-state",
    "transition-to-unknown-state",
    "transition-from-unknown-state",
    "unknown-key",
    "guard-missing-function",
    "guard-missing-module",
    "guard-on-unknown-state",
    "no-states",
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=MISTAKE_IDS)
def test_a_machine_mistake_is_a_boot_error_naming_the_module_and_field(
    make_app: MakeApp, write_module: WriteModule, mistake: tuple[str, str, str, str]
) -> None:
    old, new, field, words = mistake
    assert old in MODULE_YAML
    problem = machine_error(make_app, write_module, MODULE_YAML.replace(old, new))
    assert problem.field == field
    assert words in problem.message


def test_a_machine_that_is_not_a_mapping_is_a_boot_error(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    problem = machine_error(make_app, write_module, "state_machines:\n  order: [pending]\n")
    assert problem.field == "state_machines.order"
