"""The kernel collects what managers contribute: a toy manager from this file adds a setting,
a facade, a middleware, health and a command without touching core/."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
from flask import Flask

import app as app_module
from core.base.errors import BootError, DependencyUnavailable
from core.base.health import Health
from core.base.store import KeyValueStore
from core.config.settings import Setting, integer
from core.contracts.calls import CallResult
from core.pipeline.call import Call
from core.pipeline.chain import STEPS, Middleware, Next, arrange
from core.runtime.app_manager import AppManager
from core.runtime.manager import App, Command, Manager
from core.transports.cli import Project
from core.transports.http import extension
from managers.redis.manager import RedisManager
from tests.conftest import MakeApp, WriteModule
from tests.helpers import load_config


class Greeter(Protocol):
    def greet(self, name: str) -> str: ...


class ToyFacade:
    """What ``ctx.toy`` gives a handler: scoped to the calling module."""

    def __init__(self, module: str, exclamations: int) -> None:
        self.module = module
        self.exclamations = exclamations

    def greet(self, name: str) -> str:
        return f"hello {name} from {self.module}" + "!" * self.exclamations


class ToyManager(Manager):
    """One file's worth of manager: a setting, a facade, a middleware, health, a command."""

    name = "toy"
    requires = ("config",)
    facade = "toy"
    provides: ClassVar[tuple[type, ...]] = (Greeter,)
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting("toy.exclamations", integer, 1, "How excited the toy is", minimum=0, owner="toy"),
    )

    def __init__(self) -> None:
        self.exclamations = 0
        self.calls_seen: list[str] = []

    @classmethod
    def commands(cls) -> Sequence[Command]:
        def run(args: argparse.Namespace, runtime: Project) -> int:
            print(f"toy says {args.word} x{runtime.config()['toy.exclamations']}")
            return 0

        def arguments(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("word")

        return (Command("toy", "say a word", run, arguments),)

    def start(self, app: App) -> None:
        self.exclamations = int(app.config["toy.exclamations"])

    def greet(self, name: str) -> str:
        return ToyFacade("manager", self.exclamations).greet(name)

    def facade_for(self, module: str) -> ToyFacade:
        return ToyFacade(module, self.exclamations)

    def middleware(self) -> Sequence[Middleware]:
        return (Middleware("toy.stamp", self._stamp, after="authorize"),)

    def _stamp(self, call: Call, next: Next) -> CallResult:
        self.calls_seen.append(call.spec.name)
        return next(call).with_headers({"X-Toy": call.caller.kind})

    def health(self) -> Health:
        return Health("degraded", {"seen": len(self.calls_seen)})


TOY_ACTIONS = """
actions:
  greet:
    handler: handlers:greet
    auth: public
    params:
      name: {type: string, required: true}
"""
TOY_HANDLERS = """
def greet(ctx, *, name):
    return {"greeting": ctx.toy.greet(name), "settings": dict(ctx.settings)}
"""


def with_toy() -> list[Manager]:
    return [*app_module.default_managers(), ToyManager()]


@pytest.fixture
def toy_app(make_app: MakeApp, write_module: WriteModule, tmp_path: Path) -> Flask:
    parent = write_module(
        "playroom",
        {
            "actions.yaml": TOY_ACTIONS,
            "handlers.py": TOY_HANDLERS,
            "module.yaml": "config: {volume: 3}\n",
        },
    )
    return app_module.create_app(
        {
            "APP_ENV": "test",
            "DATABASE_URL": f"sqlite:///{tmp_path}/toy.db",
            "MODULES_PATH": str(parent),
            "SB_TOY__EXCLAMATIONS": "3",
            "SB_PLAYROOM__VOLUME": "11",
        },
        managers=with_toy,
    )


def test_a_toy_manager_contributes_without_touching_the_kernel(toy_app: Flask) -> None:
    client = toy_app.test_client()
    response = client.post("/api/v1/actions/playroom.greet", json={"name": "ann"})
    assert response.status_code == 200, response.get_json()
    data = response.get_json()["data"]
    # its setting, from the environment, reached its facade; the module's own config too
    assert data == {"greeting": "hello ann from playroom!!!", "settings": {"volume": 11}}
    # its middleware ran in the chain, after authorize, and decorated the answer
    assert response.headers["X-Toy"] == "anonymous"
    steps = extension(toy_app).pipeline.steps
    assert steps.index("authorize") < steps.index("toy.stamp") < steps.index("validate")
    # its health is in /health/ready (degraded does not make the app unready)
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["toy"] == {"status": "degraded", "seen": 1}
    # its capability is found by type
    greeter = extension(toy_app).app_manager.capability(Greeter)
    assert greeter is not None and greeter.greet("bo") == "hello bo from manager!!!"
    try:
        assert toy_app.extensions  # the app stays usable
    finally:
        from core.transports.flask_app import shutdown_app

        shutdown_app(toy_app)


def test_the_cli_shows_the_toy_setting_and_runs_its_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("SB_TOY__EXCLAMATIONS", "5")
    assert app_module.main(["config"], managers=with_toy) == 0
    lines = capsys.readouterr().out.splitlines()
    (row,) = [line for line in lines if line.startswith("toy.exclamations")]
    assert "5" in row and "env SB_TOY__EXCLAMATIONS" in row
    assert app_module.main(["toy", "hi"], managers=with_toy) == 0
    assert capsys.readouterr().out.strip() == "toy says hi x5"
    # without the toy its setting is unknown: the kernel knew nothing of it
    assert app_module.main(["config"]) == 1
    assert "unknown setting 'toy.exclamations'" in capsys.readouterr().err


# --- the contract's rules --------------------------------------------------------------


class Borrower(Manager):
    """Uses the store without requiring the manager that provides it."""

    name = "borrower"
    requires = ("config",)

    def start(self, app: App) -> None:
        self.require(KeyValueStore)


class SecondStore(Manager):
    name = "second_store"
    provides: ClassVar[tuple[type, ...]] = (KeyValueStore,)


def test_require_refuses_a_capability_its_requires_does_not_cover(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})
    app = AppManager(config, [RedisManager(), Borrower()])
    with pytest.raises(BootError, match=r"'borrower' uses KeyValueStore of manager 'redis'"):
        app.boot()


def test_two_providers_of_one_capability_are_named(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})
    with pytest.raises(BootError, match=r"'redis' and 'second_store' both provide KeyValueStore"):
        AppManager(config, [RedisManager(), SecondStore()])


def test_a_manager_cannot_require_one_of_a_later_phase(tmp_path: Path) -> None:
    class Early(Manager):
        name = "early"
        requires = ("late",)

    class Late(Manager):
        name = "late"
        phase = 1

    config = load_config(tmp_path, {})
    with pytest.raises(BootError, match="'early' requires 'late', which starts after it"):
        AppManager(config, [Early(), Late()]).boot()


def test_a_manager_asked_for_work_before_it_started_answers_503() -> None:
    with pytest.raises(DependencyUnavailable, match="redis manager is not running"):
        _ = RedisManager().store


# --- placing middleware ------------------------------------------------------------------


def _mw(name: str, **where: str) -> Middleware:
    def handle(call: Call, next: Next) -> CallResult:
        return next(call)

    return Middleware(name, handle, **where)


def test_middleware_is_placed_by_step_and_ties_keep_declaration_order() -> None:
    builtins: list[tuple[str, Any]] = [(step, object()) for step in STEPS[:-1]]
    builtins[STEPS.index("rate_limit")] = ("rate_limit", None)  # no limiter in this app
    arranged = arrange(
        builtins,
        [
            ("a", _mw("a.first", before="run")),
            ("b", _mw("b.outer", before="identify")),
            ("c", _mw("c.second", before="run")),
            ("d", _mw("d.after", after="identify")),
            ("e", _mw("e.limit", before="rate_limit")),
        ],
    )
    assert [name for name, _ in arranged] == [
        "audit",
        "b.outer",
        "identify",
        "d.after",
        "lookup",
        "authorize",
        "validate",
        "e.limit",
        "idempotency",
        "gate",
        "a.first",
        "c.second",
    ]


@pytest.mark.parametrize(
    ("middleware", "words"),
    [
        (_mw("x", before="handler"), "relative to 'handler', which is not a step"),
        (_mw("x", after="run"), "nothing runs after 'run'"),
        (_mw("x"), "exactly one of before= or after="),
        (_mw("x", before="run", after="audit"), "exactly one of before= or after="),
    ],
)
def test_a_misplaced_middleware_is_a_boot_error(middleware: Middleware, words: str) -> None:
    with pytest.raises(BootError) as caught:
        arrange([], [("toy", middleware)])
    assert words in str(caught.value) and "'x' of toy" in str(caught.value)


def test_a_built_in_step_name_that_is_not_a_step_is_refused_at_boot() -> None:
    builtins: list[tuple[str, Any]] = [(step, object()) for step in STEPS[:-1]]
    builtins[STEPS.index("validate")] = ("validation", object())  # a renamed step
    with pytest.raises(BootError) as caught:
        arrange(builtins, [])
    assert "built-in step 'validation' is not a step of the chain" in str(caught.value)
    with pytest.raises(BootError, match="'run' is not a step"):
        arrange([("run", None)], [])  # run is the end of the chain, never a middleware


class TrimManager(Manager):
    """A toy manager whose middleware sits at a built-in position: before validate, it
    trims the string params the caller sent, so the schema sees them trimmed."""

    name = "trim"

    def middleware(self) -> Sequence[Middleware]:
        return (Middleware("trim.params", self._trim, before="validate"),)

    def _trim(self, call: Call, next: Next) -> CallResult:
        raw = call.request.params
        if isinstance(raw, dict):
            trimmed = {k: v.strip() if isinstance(v, str) else v for k, v in raw.items()}
            call.request = dataclasses.replace(call.request, params=trimmed)
        return next(call)


def test_a_middleware_placed_before_validate_changes_what_validate_sees(
    write_module: WriteModule, tmp_path: Path
) -> None:
    parent = write_module("playroom", {"actions.yaml": TOY_ACTIONS, "handlers.py": TOY_HANDLERS})
    flask_app = app_module.create_app(
        {
            "APP_ENV": "test",
            "DATABASE_URL": f"sqlite:///{tmp_path}/trim.db",
            "MODULES_PATH": str(parent),
        },
        managers=lambda: [*with_toy(), TrimManager()],
    )
    try:
        steps = extension(flask_app).pipeline.steps
        assert steps.index("authorize") < steps.index("trim.params") < steps.index("validate")
        client = flask_app.test_client()
        answered = client.post("/api/v1/actions/playroom.greet", json={"name": "  ann  "})
        assert answered.status_code == 200
        assert answered.get_json()["data"]["greeting"].startswith("hello ann from playroom")
        assert client.post("/api/v1/actions/playroom.greet", json={"name": 3}).status_code == 422
    finally:
        extension(flask_app).runtime.close()


# --- facades -------------------------------------------------------------------------------


FACADE_ACTIONS = """
actions:
  peek:
    handler: handlers:peek
    auth: public
    params:
      what: {type: string, required: true}
"""
FACADE_HANDLERS = """
def peek(ctx, *, what):
    try:
        getattr(ctx, what)
    except AttributeError as exc:
        return {"error": str(exc)}
    return {"ok": True}
"""


def test_privileged_facades_need_requires_and_unknown_ones_are_named(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    parent = write_module("snoop", {"actions.yaml": FACADE_ACTIONS, "handlers.py": FACADE_HANDLERS})
    parent = write_module(
        "trusted",
        {
            "actions.yaml": FACADE_ACTIONS,
            "handlers.py": FACADE_HANDLERS,
            "module.yaml": "requires: [jwt]\n",
        },
    )
    client = make_app({"MODULES_PATH": str(parent)}).test_client()

    def peek(module: str, what: str) -> dict[str, Any]:
        response = client.post(f"/api/v1/actions/{module}.peek", json={"what": what})
        assert response.status_code == 200, response.get_json()
        return dict(response.get_json()["data"])

    assert peek("snoop", "db") == {"ok": True}
    assert peek("snoop", "cache") == {"ok": True}
    refused = peek("snoop", "jwt")["error"]
    assert "add 'jwt' to requires in module.yaml of 'snoop'" in refused
    assert peek("trusted", "jwt") == {"ok": True}
    assert "this app runs no manager that provides it" in peek("snoop", "telescope")["error"]


def test_module_settings_are_typed_and_checked_at_boot(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    parent = write_module(
        "shelf",
        {
            "actions.yaml": FACADE_ACTIONS,
            "handlers.py": FACADE_HANDLERS,
            "module.yaml": json.dumps(
                {
                    "config": {"page_size": 20, "title": "Shelf", "tags": ["a"]},
                    "config_schema": {
                        "properties": {"page_size": {"type": "integer", "maximum": 100}}
                    },
                }
            ),
        },
    )
    with pytest.raises(BootError) as caught:
        make_app({"MODULES_PATH": str(parent), "SB_SHELF__PAGE_SIZE": "many"})
    assert "shelf.page_size: expected an integer, got 'many'" in str(caught.value)
    with pytest.raises(BootError) as caught:
        make_app({"MODULES_PATH": str(parent), "SB_SHELF__PAGE_SIZE": "500"})
    assert "shelf.page_size" in str(caught.value) and "100" in str(caught.value)
    with pytest.raises(BootError) as caught:
        make_app({"MODULES_PATH": str(parent), "SB_SHELF__PAGE_SISE": "5"})
    assert "did you mean 'shelf.page_size'" in str(caught.value)
    app = make_app(
        {"MODULES_PATH": str(parent), "SB_SHELF__PAGE_SIZE": "50", "SB_SHELF__TAGS": "x, y"}
    )
    module = extension(app).app_manager.get("modules")
    loaded = getattr(module, "get")("shelf")  # noqa: B009
    assert loaded.instance.settings == {"page_size": 50, "title": "Shelf", "tags": ["x", "y"]}


def test_a_caller_is_named_one_way_in_logs_limits_and_records() -> None:
    from core.contracts.context import ANONYMOUS, SYSTEM, Caller

    assert Caller("user", id="u1").key == "user:u1"
    assert Caller("api_key", id="k1").key == "api_key:k1"
    assert SYSTEM.key == "system:system" and ANONYMOUS.key == "anonymous"
