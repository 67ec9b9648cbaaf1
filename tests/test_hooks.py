"""HooksManager on its own, and the events a real app fires around modules and actions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import app as app_module
from core.base.errors import BootError
from core.base.hooks import BUILTIN_EVENTS, HookEvent, UndeclaredEvent
from core.contracts.context import ANONYMOUS
from core.runtime.manager import App, Manager
from core.transports.flask_app import build_app, shutdown_app
from core.transports.http import extension
from managers.db.manager import DatabaseManager
from managers.hooks_manager import HooksManager
from managers.modules.manager import ModuleManager
from tests.conftest import MakeApp, WriteModule


def recorder(seen: list[str], label: str) -> Any:
    def callback(event: HookEvent) -> None:
        seen.append(f"{label}:{event.name}:{event.data.get('n')}")

    callback.__qualname__ = f"recorder_{label}"
    return callback


# --- HooksManager on its own ----------------------------------------------------------


def declared() -> HooksManager:
    """A hooks manager that knows the events these tests use."""
    hooks = HooksManager()
    hooks.declare("x", "y", "order.paid", "nobody.listens")
    return hooks


def test_an_undeclared_event_can_be_neither_listened_to_nor_emitted() -> None:
    hooks = declared()
    with pytest.raises(UndeclaredEvent, match=r"'ordr\.paid'"):
        hooks.register("ordr.paid", recorder([], "typo"))
    with pytest.raises(UndeclaredEvent, match=r"'ordr\.paid'"):
        hooks.emit("ordr.paid", n=1)
    assert not hooks.has_listeners("ordr.paid")


def test_callbacks_run_in_priority_order_then_registration_order() -> None:
    hooks = declared()
    seen: list[str] = []
    hooks.register("x", recorder(seen, "late"), priority=200)
    hooks.register("x", recorder(seen, "default1"))
    hooks.register("x", recorder(seen, "early"), priority=-5)
    hooks.register("x", recorder(seen, "default2"))
    hooks.register("x", recorder(seen, "mid"), priority=50)
    hooks.register("y", recorder(seen, "other"))

    hooks.emit("x", n=1)

    assert seen == ["early:x:1", "mid:x:1", "default1:x:1", "default2:x:1", "late:x:1"]


def test_callback_receives_event_name_and_data() -> None:
    hooks = declared()
    received: list[HookEvent] = []
    hooks.register("order.paid", received.append)

    hooks.emit("order.paid", order=7, amount=12.5)

    assert received == [HookEvent("order.paid", {"order": 7, "amount": 12.5})]


def test_raising_callback_is_isolated_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = declared()
    seen: list[str] = []

    def explode(event: HookEvent) -> None:
        seen.append("explode")
        raise RuntimeError("kaboom")

    hooks.register("x", recorder(seen, "first"), priority=1)
    hooks.register("x", explode, priority=2, owner="billing")
    hooks.register("x", recorder(seen, "last"), priority=3)

    with caplog.at_level(logging.ERROR, logger="switchboard.hooks"):
        hooks.emit("x", n=1)  # the emitter never sees the error
        hooks.emit("x", n=2)

    assert seen == ["first:x:1", "explode", "last:x:1", "first:x:2", "explode", "last:x:2"]
    assert hooks.failures["x"] == 2
    assert hooks.failures["y"] == 0
    records = [r for r in caplog.records if r.name == "switchboard.hooks"]
    assert len(records) == 2
    assert records[0].levelno == logging.ERROR
    message = records[0].getMessage()
    assert "billing:" in message
    assert "explode" in message
    assert message.endswith("on x")
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    health = hooks.health()
    assert health.status == "ok"
    assert health.details == {"events": {"x": 3}, "failures": {"x": 2}}


def test_unregister_removes_the_callback_and_says_whether_it_was_there() -> None:
    hooks = declared()
    seen: list[str] = []
    keep = recorder(seen, "keep")
    drop = recorder(seen, "drop")
    hooks.register("x", keep)
    hooks.register("x", drop)

    assert hooks.unregister("x", drop) is True
    assert hooks.unregister("x", drop) is False
    assert hooks.unregister("never", drop) is False
    hooks.emit("x", n=1)

    assert seen == ["keep:x:1"]
    assert hooks.unregister("x", keep) is True
    assert not hooks.has_listeners("x")
    hooks.emit("x", n=2)
    assert seen == ["keep:x:1"]


def test_bound_methods_can_be_unregistered() -> None:
    hooks = declared()
    received: list[HookEvent] = []
    hooks.register("x", received.append)

    assert hooks.unregister("x", received.append) is True
    hooks.emit("x")
    assert received == []


def test_emit_without_listeners_is_a_no_op() -> None:
    hooks = declared()

    hooks.emit("nobody.listens", n=1)

    assert not hooks.has_listeners("nobody.listens")
    assert hooks.failures == {}
    assert hooks.health().details == {"events": {}, "failures": {}}


def test_has_listeners() -> None:
    hooks = declared()
    callback = recorder([], "a")
    assert not hooks.has_listeners("x")

    hooks.register("x", callback)

    assert hooks.has_listeners("x")
    assert not hooks.has_listeners("y")


def test_register_rejects_a_non_callable() -> None:
    hooks = declared()

    with pytest.raises(TypeError, match="'x'"):
        hooks.register("x", "not a function")  # type: ignore[arg-type]
    assert not hooks.has_listeners("x")


def test_callback_registered_during_emit_runs_from_the_next_emit() -> None:
    hooks = declared()
    seen: list[str] = []
    late = recorder(seen, "late")

    def adds_another(event: HookEvent) -> None:
        seen.append(f"adder:{event.data['n']}")
        if event.data["n"] == 1:
            hooks.register("x", late)

    hooks.register("x", adds_another)
    hooks.emit("x", n=1)
    hooks.emit("x", n=2)

    assert seen == ["adder:1", "adder:2", "late:x:2"]


# --- through a real app ---------------------------------------------------------------

HOOKER_INIT = """
    from __future__ import annotations

    from typing import Any

    from core.base.hooks import HookEvent
    from core.contracts.module import BaseModule

    __all__ = ["HookerModule"]

    EVENTS = (
        "module.loaded",
        "app.started",
        "action.before",
        "action.after",
        "action.failed",
        "app.stopping",
    )


    class HookerModule(BaseModule):
        def __init__(self, app_manager: Any = None) -> None:
            super().__init__(app_manager)
            self.seen: list[HookEvent] = []

        def initialize(self, app_manager: Any) -> None:
            super().initialize(app_manager)
            for event in EVENTS:
                app_manager.hooks.register(event, self.record, owner=self.module_name)

        def record(self, event: HookEvent) -> None:
            self.seen.append(event)
"""

HOOKER_ACTIONS = """
    actions:
      login:
        summary: Pretend to log in
        handler: handlers:login
        auth: public
        params:
          user: {type: string, minLength: 1, required: true}
          pin: {type: string, secret: true}
          count: {type: integer, default: 1}
      clash:
        summary: Always a conflict
        handler: handlers:clash
        auth: public
        params:
          pin: {type: string, secret: true}
      boom:
        summary: Always crashes
        handler: handlers:boom
        auth: public
      private:
        summary: Needs a user
        handler: handlers:boom
"""

HOOKER_HANDLERS = """
    from __future__ import annotations

    from typing import Any

    from core.base.errors import Conflict


    def login(ctx: Any, *, user: str, pin: str | None = None, count: int = 1) -> dict[str, Any]:
        return {"user": user, "count": count}


    def clash(ctx: Any, *, pin: str | None = None) -> None:
        raise Conflict("already there")


    def boom(ctx: Any) -> None:
        raise RuntimeError("handler crashed")
"""


@pytest.fixture
def modules_path(write_module: WriteModule) -> Path:
    parent = write_module(
        "hooker",
        {
            "__init__.py": HOOKER_INIT,
            "actions.yaml": HOOKER_ACTIONS,
            "handlers.py": HOOKER_HANDLERS,
        },
    )
    # Loaded after hooker (it depends on it), so hooker sees its module.loaded.
    write_module("zeta", {"module.yaml": "version: 2.0.0\ndepends_on: [hooker]\n"})
    return parent


@pytest.fixture
def hooked_app(make_app: MakeApp, modules_path: Path) -> Flask:
    return make_app(env={"MODULES_PATH": str(modules_path)})


def seen_events(flask_app: Flask) -> list[HookEvent]:
    loaded = extension(flask_app).app_manager.get(ModuleManager).get("hooker")
    assert loaded is not None
    assert loaded.status == "ok"
    seen: list[HookEvent] = getattr(loaded.instance, "seen")  # noqa: B009
    return seen


def action_events(flask_app: Flask) -> list[HookEvent]:
    return [e for e in seen_events(flask_app) if e.name.startswith("action.")]


def test_boot_events_seen_by_a_module(hooked_app: Flask) -> None:
    app_manager = extension(hooked_app).app_manager
    order = app_manager.get(ModuleManager).names()
    assert order.index("hooker") < order.index("zeta")  # zeta depends on hooker

    events = [
        e for e in seen_events(hooked_app) if e.data.get("module") in (None, "hooker", "zeta")
    ]

    # hooker registers during its own initialize: it misses the modules loaded before it
    # (system among them) but sees its own module.loaded (fired after initialize) and zeta's.
    assert "system" not in [e.data.get("module") for e in seen_events(hooked_app)]
    assert [(e.name, e.data.get("module")) for e in events] == [
        ("module.loaded", "hooker"),
        ("module.loaded", "zeta"),
        ("app.started", None),
    ]
    assert events[0].data == {"module": "hooker", "version": "0.0.0"}
    assert events[1].data == {"module": "zeta", "version": "2.0.0"}
    assert events[2].data == {"app": app_manager}


def with_hooks(hooks: HooksManager) -> list[Manager]:
    """The app's default managers with ``hooks`` in place of the hooks manager."""
    return [hooks if m.name == "hooks" else m for m in app_module.default_managers()]


class RecordingHooks(HooksManager):
    """A HooksManager that listens to every built-in event from the moment it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[HookEvent] = []

    def start(self, app: App) -> None:
        super().start(app)
        for event in BUILTIN_EVENTS:
            self.register(event, self.seen.append)


def test_module_loaded_fires_for_every_module_in_load_order(modules_path: Path) -> None:
    config = app_module.load(
        {
            "APP_ENV": "test",
            "MODULES_PATH": str(modules_path),
            "DATABASE_URL": f"sqlite:///{modules_path}/hooks.db",
        }
    )
    hooks = RecordingHooks()
    flask_app = build_app(config, with_hooks(hooks))
    try:
        app_manager = extension(flask_app).app_manager
        assert app_manager.hooks is hooks
        order = app_manager.get(ModuleManager).names()
        assert {"system", "hooker", "zeta"} <= set(order)
        assert [(e.name, e.data.get("module")) for e in hooks.seen] == [
            *(("module.loaded", name) for name in order),
            ("app.started", None),
        ]
        system = next(e for e in hooks.seen if e.data.get("module") == "system")
        assert system.data == {"module": "system", "version": "0.1.0"}
    finally:
        shutdown_app(flask_app)
    assert hooks.seen[-1] == HookEvent("app.stopping", {"app": app_manager})


def test_failed_module_fires_no_module_loaded(
    modules_path: Path, write_module: WriteModule
) -> None:
    write_module(
        "broken",
        {
            "__init__.py": """
                from core.contracts.module import BaseModule


                class BrokenModule(BaseModule):
                    def initialize(self, app_manager):
                        raise RuntimeError("no")
            """
        },
    )
    config = app_module.load(
        {
            "APP_ENV": "test",
            "MODULES_PATH": str(modules_path),
            "MODULES_STRICT": "false",
            "DATABASE_URL": f"sqlite:///{modules_path}/hooks.db",
        }
    )
    hooks = RecordingHooks()
    flask_app = build_app(config, with_hooks(hooks))
    try:
        loaded = [e.data["module"] for e in hooks.seen if e.name == "module.loaded"]
        order = extension(flask_app).app_manager.get(ModuleManager).names()
        assert loaded == [name for name in order if name != "broken"]
        assert {"system", "hooker", "zeta"} <= set(loaded)
        broken = extension(flask_app).app_manager.get(ModuleManager).get("broken")
        assert broken is not None
        assert broken.status == "failed"
    finally:
        shutdown_app(flask_app)


def test_successful_call_fires_before_then_after_with_masked_params(hooked_app: Flask) -> None:
    client = hooked_app.test_client()
    response = client.post(
        "/api/v1/actions/hooker.login",
        json={"user": "ada", "pin": "qzxw"},
        headers={"X-Request-ID": "req-hooks-1"},
    )
    assert response.status_code == 200
    assert response.get_json()["data"] == {"user": "ada", "count": 1}

    events = action_events(hooked_app)
    assert [e.name for e in events] == ["action.before", "action.after"]
    before, after = events
    for event in events:
        assert event.data["action"] == "hooker.login"
        assert event.data["module"] == "hooker"
        assert event.data["caller"] == ANONYMOUS
        assert event.data["request_id"] == "req-hooks-1"
        # Validated params (default applied), the secret masked.
        assert event.data["params"] == {"user": "ada", "pin": "***", "count": 1}
    assert "duration_ms" not in before.data
    assert isinstance(after.data["duration_ms"], float)
    assert after.data["duration_ms"] >= 0
    assert "qzxw" not in repr(events)


def test_validation_failure_fires_action_failed_only(hooked_app: Flask) -> None:
    client = hooked_app.test_client()
    response = client.post(
        "/api/v1/actions/hooker.login", json={"user": "", "pin": "qzxw", "extra": 1}
    )
    assert response.status_code == 422

    events = action_events(hooked_app)
    assert [e.name for e in events] == ["action.failed"]
    data = events[0].data
    assert data["action"] == "hooker.login"
    assert data["module"] == "hooker"
    assert data["status"] == 422
    assert data["problem"] == "validation"
    assert data["params"] == {}  # nothing validated, nothing leaked
    assert "qzxw" not in repr(events)


def test_handler_error_fires_action_failed_with_masked_params(hooked_app: Flask) -> None:
    client = hooked_app.test_client()
    response = client.post("/api/v1/actions/hooker.clash", json={"pin": "9999"})
    assert response.status_code == 409

    events = action_events(hooked_app)
    assert [e.name for e in events] == ["action.before", "action.failed"]
    failed = events[1].data
    assert failed["action"] == "hooker.clash"
    assert failed["status"] == 409
    assert failed["problem"] == "conflict"
    assert failed["params"] == {"pin": "***"}


def test_crash_fires_action_failed_as_internal(hooked_app: Flask) -> None:
    response = hooked_app.test_client().post("/api/v1/actions/hooker.boom")
    assert response.status_code == 500

    events = action_events(hooked_app)
    assert [e.name for e in events] == ["action.before", "action.failed"]
    assert events[1].data["status"] == 500
    assert events[1].data["problem"] == "internal"


def test_unknown_action_and_unauthorized_fire_action_failed(hooked_app: Flask) -> None:
    client = hooked_app.test_client()
    assert client.post("/api/v1/actions/hooker.nope", json={}).status_code == 404
    assert client.post("/api/v1/actions/hooker.private", json={}).status_code == 401

    events = action_events(hooked_app)
    assert [(e.name, e.data["action"], e.data["status"], e.data["problem"]) for e in events] == [
        ("action.failed", "hooker.nope", 404, "not-found"),
        ("action.failed", "hooker.private", 401, "unauthenticated"),
    ]
    assert events[0].data["module"] is None
    assert events[1].data["module"] == "hooker"


def test_calls_in_other_modules_are_seen_too(hooked_app: Flask) -> None:
    response = hooked_app.test_client().post("/api/v1/actions/system.echo", json={"message": "hi"})
    assert response.status_code == 200

    events = action_events(hooked_app)
    assert [(e.name, e.data["action"], e.data["module"]) for e in events] == [
        ("action.before", "system.echo", "system"),
        ("action.after", "system.echo", "system"),
    ]
    assert events[1].data["params"] == {"message": "hi"}


def test_raising_hook_does_not_change_the_call(
    hooked_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = extension(hooked_app).app_manager.get(HooksManager)

    def bad(event: HookEvent) -> None:
        raise ValueError("bad hook")

    hooks.register("action.before", bad, priority=0)
    hooks.register("action.after", bad, priority=0)
    with caplog.at_level(logging.ERROR, logger="switchboard.hooks"):
        response = hooked_app.test_client().post("/api/v1/actions/system.ping")

    assert response.status_code == 200
    assert response.get_json()["data"] == {"pong": True}
    assert hooks.failures["action.before"] == 1
    assert hooks.failures["action.after"] == 1
    # The module's own callbacks still ran after the failing one.
    assert [e.name for e in action_events(hooked_app)] == ["action.before", "action.after"]
    assert len([r for r in caplog.records if r.name == "switchboard.hooks"]) == 2


def test_shutdown_fires_app_stopping(hooked_app: Flask) -> None:
    app_manager = extension(hooked_app).app_manager

    shutdown_app(hooked_app)

    stopping = [e for e in seen_events(hooked_app) if e.name == "app.stopping"]
    assert len(stopping) == 1
    assert stopping[0].data == {"app": app_manager}
    assert seen_events(hooked_app)[-1].name == "app.stopping"


def test_each_app_has_its_own_hooks(make_app: MakeApp, modules_path: Path) -> None:
    first = make_app(env={"MODULES_PATH": str(modules_path)})
    second = make_app(env={"MODULES_PATH": str(modules_path)})

    response = first.test_client().post("/api/v1/actions/system.ping")
    assert response.status_code == 200

    assert [e.name for e in action_events(first)] == ["action.before", "action.after"]
    assert action_events(second) == []
    assert extension(first).app_manager.hooks is not extension(second).app_manager.hooks


# --- hooks declared in module.yaml ---------------------------------------------------------

BOOKSHELF_MANIFEST = """
events: [book.lent]
hooks:
  action.after: handlers:on_after
  bookshelf.book.lent: {handler: handlers:on_lent, priority: 5}
"""
BOOKSHELF_ACTIONS = """
actions:
  lend:
    handler: handlers:lend
    auth: public
    params:
      book: {type: string, required: true}
      pin: {type: string, secret: true}
    returns:
      type: object
      properties:
        receipt: {type: string, secret: true}
  shout:
    handler: handlers:shout
    auth: public
"""
BOOKSHELF_HANDLERS = """
def lend(ctx, *, book, pin=None):
    ctx.hooks.emit("bookshelf.book.lent", {"book": book})
    return {"book": book, "receipt": "r-" + book}


def shout(ctx):
    ctx.hooks.emit("system.started", {})  # not this module's event


def on_after(ctx, event):
    if event.data["module"] != "bookshelf":
        return
    ctx.db.collection("hook_log").insert_one(
        {
            "event": event.name,
            "action": event.data["action"],
            "params": event.data["params"],
            "result": event.data["result"],
            "caller": ctx.caller.kind,
            "module": ctx.module,
            "limit": ctx.settings["limit"],
        }
    )


def on_lent(ctx, event):
    ctx.db.collection("hook_log").insert_one({"event": event.name, "book": event.data["book"]})
"""


def bookshelf(write_module: WriteModule, manifest: str = BOOKSHELF_MANIFEST) -> Path:
    return write_module(
        "bookshelf",
        {
            "module.yaml": manifest + "config: {limit: 3}\n",
            "actions.yaml": BOOKSHELF_ACTIONS,
            "handlers.py": BOOKSHELF_HANDLERS,
        },
    )


def test_module_hooks_get_a_ctx_the_masked_result_and_custom_events(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    app = make_app({"MODULES_PATH": str(bookshelf(write_module))})
    client = app.test_client()
    response = client.post(
        "/api/v1/actions/bookshelf.lend", json={"book": "dune", "pin": "pin-7f3a9c"}
    )
    assert response.status_code == 200
    assert response.get_json()["data"] == {"book": "dune", "receipt": "r-dune"}
    rows = extension(app).app_manager.get(DatabaseManager).documents.collection("hook_log").find()
    by_event = {row["event"]: row for row in rows}
    assert set(by_event) == {"bookshelf.book.lent", "action.after"}
    assert by_event["bookshelf.book.lent"]["book"] == "dune"
    after = by_event["action.after"]
    assert after["action"] == "bookshelf.lend" and after["module"] == "bookshelf"
    assert after["caller"] == "system" and after["limit"] == 3  # the hook's own ctx
    assert after["params"] == {"book": "dune", "pin": "***"}
    assert after["result"] == {"book": "dune", "receipt": "***"}


def test_a_module_emits_only_its_own_declared_events(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    app = make_app({"MODULES_PATH": str(bookshelf(write_module))})
    response = app.test_client().post("/api/v1/actions/bookshelf.shout", json={})
    assert response.status_code == 500
    assert response.get_json()["type"] == "/problems/internal"


@pytest.mark.parametrize(
    ("manifest", "words"),
    [
        ("hooks: {book.lent: handlers:on_lent}\n", "no hook event 'book.lent'"),
        ("hooks: {action.aftr: handlers:on_after}\n", "no hook event 'action.aftr'"),
        ("hooks: {action.after: handlers:missing}\n", "handlers.py has no function 'missing'"),
        ("hooks: {action.after: [1]}\n", "a hook is 'python_module:function'"),
        ("events: [Book-Lent]\n", "event name 'Book-Lent' must look like book.lent"),
    ],
)
def test_a_bad_hook_declaration_is_a_load_error_naming_it(
    make_app: MakeApp, write_module: WriteModule, manifest: str, words: str
) -> None:
    with pytest.raises(BootError) as caught:
        make_app({"MODULES_PATH": str(bookshelf(write_module, manifest))})
    (problem,) = caught.value.problems
    assert words in problem.message
    assert problem.module == "bookshelf" and problem.file is not None
    assert problem.file.endswith("bookshelf/module.yaml")
