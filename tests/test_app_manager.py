"""AppManager: start order, reverse stop, frozen registry, lookups, health; apps side by side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

import app as app_module
from core.base.errors import BootError, ManagerStopError, RegistryFrozen
from core.base.health import Health
from core.config.config import Config
from core.runtime.app_manager import AppManager
from core.runtime.config_manager import ConfigManager
from core.runtime.manager import App, Manager
from core.transports.flask_app import build_app, shutdown_app
from core.transports.http import extension
from managers.hooks_manager import HooksManager
from managers.modules.manager import ModuleManager
from tests.conftest import MakeApp
from tests.helpers import load_config


class Recorder(Manager):
    """A manager that records ``start:<name>`` / ``stop:<name>`` into a shared list."""

    name = "recorder"

    def __init__(
        self, log: list[str], *, fail_start: bool = False, fail_stop: bool = False
    ) -> None:
        self.log = log
        self.fail_start = fail_start
        self.fail_stop = fail_stop
        self.app: App | None = None

    def start(self, app: App) -> None:
        self.log.append(f"start:{self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.app = app

    def stop(self) -> None:
        self.log.append(f"stop:{self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")


class Db(Recorder):
    name = "db"
    requires = ("config",)


class Cache(Recorder):
    name = "cache"
    requires = ("db",)


class Web(Recorder):
    name = "web"
    requires = ("cache", "db")


class Reporting(Recorder):
    name = "reporting"
    requires = ("web",)


class Status(Manager):
    """A manager whose health is whatever it is given."""

    name = "status"

    def __init__(self, health: Health) -> None:
        self._health = health

    def health(self) -> Health:
        return self._health


class OptionalStatus(Status):
    name = "optional_status"
    required = False


class BrokenHealth(Manager):
    name = "broken_health"

    def health(self) -> Health:
        raise ZeroDivisionError("oops")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(tmp_path, {})


# --- order ----------------------------------------------------------------------------


def test_start_order_follows_requires_regardless_of_registration_order(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Reporting(log), Web(log), Cache(log), Db(log)])

    assert [m.name for m in app.managers()] == ["config", "reporting", "web", "cache", "db"]
    app.boot()

    assert log == ["start:db", "start:cache", "start:web", "start:reporting"]
    order = [m.name for m in app.managers()]
    assert order.index("config") < order.index("db") < order.index("cache")
    assert order.index("cache") < order.index("web") < order.index("reporting")
    assert order == app.start_order()
    app.shutdown()


def test_stop_runs_in_reverse_start_order(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Web(log), Db(log), Cache(log)]).boot()
    log.clear()

    app.shutdown()

    assert log == ["stop:web", "stop:cache", "stop:db"]


def test_shutdown_twice_stops_each_manager_once(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Db(log), Cache(log)]).boot()
    app.shutdown()
    app.shutdown()

    assert log == ["start:db", "start:cache", "stop:cache", "stop:db"]


def test_every_stop_runs_and_errors_are_raised_together(config: Config) -> None:
    log: list[str] = []
    managers = [Db(log, fail_stop=True), Cache(log), Web(log, fail_stop=True)]
    app = AppManager(config, managers).boot()
    log.clear()

    with pytest.raises(ManagerStopError) as info:
        app.shutdown()

    assert log == ["stop:web", "stop:cache", "stop:db"]
    assert set(info.value.errors) == {"web", "db"}
    assert str(info.value.errors["db"]) == "db cannot stop"
    assert "web" in str(info.value)
    assert "db" in str(info.value)


def test_requirement_on_unregistered_manager_names_both(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Cache(log)])  # requires "db", which is not registered

    with pytest.raises(BootError) as info:
        app.boot()

    message = str(info.value)
    assert "'cache'" in message
    assert "'db'" in message
    assert "not registered" in message
    assert log == []


def test_circular_requirements_name_the_cycle(config: Config) -> None:
    class A(Recorder):
        name = "a"
        requires = ("b",)

    class B(Recorder):
        name = "b"
        requires = ("c",)

    class C(Recorder):
        name = "c"
        requires = ("a",)

    log: list[str] = []
    app = AppManager(config, [A(log), B(log), C(log), Db(log)])

    with pytest.raises(BootError) as info:
        app.boot()

    message = str(info.value)
    assert "cycle" in message
    for name in ("a", "b", "c"):
        assert name in message.split("cycle:")[1]
    assert "db" not in message
    assert log == []


def test_failed_start_stops_started_managers_in_reverse_and_propagates(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Db(log), Cache(log), Web(log, fail_start=True), Reporting(log)])

    with pytest.raises(RuntimeError, match="web cannot start"):
        app.boot()

    assert log == ["start:db", "start:cache", "start:web", "stop:cache", "stop:db"]
    assert not app.frozen


def test_failed_start_propagates_even_when_unwinding_stop_fails(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Db(log, fail_stop=True), Cache(log), Web(log, fail_start=True)])

    with pytest.raises(RuntimeError, match="web cannot start"):
        app.boot()

    assert log == ["start:db", "start:cache", "start:web", "stop:cache", "stop:db"]


# --- frozen registry ------------------------------------------------------------------


def test_registry_is_frozen_after_boot(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Db(log)])
    app.register(Cache(log))  # fine before boot
    app.boot()

    assert app.frozen
    with pytest.raises(RegistryFrozen, match="'web'"):
        app.register(Web(log))
    with pytest.raises(RegistryFrozen):
        app.boot()
    with pytest.raises(RegistryFrozen):
        app.check_not_frozen("module 'x'")
    assert not app.has("web")
    assert log == ["start:db", "start:cache"]
    app.shutdown()


def test_registering_a_name_twice_is_a_boot_error(config: Config) -> None:
    log: list[str] = []
    app = AppManager(config, [Db(log)])

    with pytest.raises(BootError, match="'db' is registered twice"):
        app.register(Db(log))
    with pytest.raises(BootError, match="'db' is registered twice"):
        AppManager(config, [Db(log), Db(log)])


def test_config_manager_is_registered_by_the_app(config: Config) -> None:
    app = AppManager(config, [])

    with pytest.raises(BootError, match="'config' is registered twice"):
        app.register(ConfigManager(config))
    assert app.get("config", ConfigManager).config is config


# --- lookups --------------------------------------------------------------------------


def test_get_and_attribute_access(config: Config) -> None:
    log: list[str] = []
    db = Db(log)
    app = AppManager(config, [db, Cache(log)]).boot()

    assert app.get("db") is db
    assert app.get("db", Db) is db
    assert app.get("db", Recorder) is db
    assert app.db is db
    assert app.has("db")
    assert not app.has("nope")
    assert db.app is app
    with pytest.raises(TypeError, match="'db' is Db, not Cache"):
        app.get("db", Cache)
    with pytest.raises(LookupError, match="'nope'"):
        app.get("nope")
    with pytest.raises(AttributeError):
        _ = app.nope
    # A real attribute wins over a manager of the same name.
    assert app.config is config
    app.shutdown()


# --- health ---------------------------------------------------------------------------


def test_health_all_ok(config: Config) -> None:
    app = AppManager(config, [Status(Health("ok", {"latency_ms": 1}))]).boot()

    ready, checks = app.health()

    assert ready is True
    assert checks == {"config": {"status": "ok"}, "status": {"status": "ok", "latency_ms": 1}}


def test_required_manager_failing_makes_app_not_ready(config: Config) -> None:
    app = AppManager(config, [Status(Health("failed", {"error": "down"}))]).boot()

    ready, checks = app.health()

    assert ready is False
    assert checks["status"] == {"status": "failed", "error": "down"}
    assert checks["config"] == {"status": "ok"}


def test_optional_manager_failing_keeps_app_ready(config: Config) -> None:
    app = AppManager(config, [OptionalStatus(Health("failed", {"error": "down"}))]).boot()

    ready, checks = app.health()

    assert ready is True
    assert checks["optional_status"] == {"status": "failed", "error": "down"}


@pytest.mark.parametrize("status", ["degraded", "disabled"])
def test_degraded_or_disabled_keeps_app_ready(config: Config, status: str) -> None:
    app = AppManager(config, [Status(Health(status))]).boot()  # type: ignore[arg-type]

    ready, checks = app.health()

    assert ready is True
    assert checks["status"] == {"status": status}


def test_health_that_raises_is_reported_failed(config: Config) -> None:
    app = AppManager(config, [BrokenHealth()]).boot()

    ready, checks = app.health()

    assert ready is False
    assert checks["broken_health"] == {"status": "failed", "error": "ZeroDivisionError"}


# --- two apps side by side ------------------------------------------------------------


def test_two_apps_are_independent(make_app: MakeApp) -> None:
    first = make_app()
    second = make_app()

    one, two = extension(first).app_manager, extension(second).app_manager
    assert first is not second
    assert one is not two
    assert one.config is not two.config
    for name in ("config", "hooks", "modules", "actions"):
        assert one.get(name) is not two.get(name)
    assert one.get("hooks", HooksManager) is not two.get("hooks", HooksManager)
    system_one = one.get(ModuleManager).get("system")
    system_two = two.get(ModuleManager).get("system")
    assert system_one is not None
    assert system_two is not None
    assert system_one.instance is not system_two.instance
    assert system_one.instance.app_manager is one
    assert system_two.instance.app_manager is two

    shutdown_app(first)

    response = second.test_client().post("/api/v1/actions/system.ping", json={})
    assert response.status_code == 200
    assert response.get_json()["data"] == {"pong": True}
    # The second app's registry is still frozen and its own.
    with pytest.raises(RegistryFrozen):
        two.register(Status(Health()))


# --- through HTTP ---------------------------------------------------------------------


class FailingManager(Manager):
    name = "failing"

    def health(self) -> Health:
        return Health("failed", {"error": "x"})


class OptionalFailingManager(FailingManager):
    name = "optional_failing"
    required = False


@pytest.fixture
def built() -> Iterator[list[Flask]]:
    apps: list[Flask] = []
    yield apps
    for flask_app in reversed(apps):
        shutdown_app(flask_app)


def test_ready_is_503_when_a_required_manager_fails(built: list[Flask], tmp_path: Path) -> None:
    config = app_module.load({"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/a.db"})
    flask_app = build_app(config, [*app_module.default_managers(), FailingManager()])
    built.append(flask_app)
    client = flask_app.test_client()

    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "failed"
    assert body["checks"]["failing"] == {"status": "failed", "error": "x"}
    assert body["checks"]["config"] == {"status": "ok"}
    assert body["checks"]["hooks"]["status"] == "ok"

    live = client.get("/health/live")
    assert live.status_code == 200
    assert live.get_json() == {"status": "ok"}


def test_ready_is_200_degraded_when_only_an_optional_manager_fails(
    built: list[Flask], tmp_path: Path
) -> None:
    config = app_module.load({"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/a.db"})
    flask_app = build_app(config, [*app_module.default_managers(), OptionalFailingManager()])
    built.append(flask_app)

    ready = flask_app.test_client().get("/health/ready")

    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["optional_failing"] == {"status": "failed", "error": "x"}


def test_ready_is_200_ok_on_the_plain_app(make_app: MakeApp) -> None:
    ready = make_app().test_client().get("/health/ready")

    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ok"
    assert set(body["checks"]) >= {"config", "hooks", "modules", "actions"}
    assert body["checks"]["modules"]["modules"]["system"] == {"status": "ok"}
