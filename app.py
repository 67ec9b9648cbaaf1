"""Switchboard: ``create_app()`` and the command line.

python app.py [serve] [--host H] [--port P] [--workers N]
python app.py check | actions [--json] | config
python app.py call <action> [--json '{...}' | --json -]
python app.py new-module <name> [--dir DIR]
python app.py keys ... | bans ... | users promote|disable|enable|delete ...

The managers this build runs are listed once, below; everything else (their settings,
production rules, capabilities, facades, middleware, routes and commands) they declare
themselves, and the kernel collects it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flask import Flask

from core.base.logging import LogFile, configure_logging
from core.config.config import Config
from core.config.config_loader import ConfigSpec, SourceSpec, load_config
from core.config.config_policy import kernel_problems
from core.config.settings import KERNEL_SETTINGS
from core.manager import Command
from core.runtime.booted import BootedApp
from core.runtime.manager import Manager
from core.transports.asgi import AsgiApp
from core.transports.cli import Project, report
from core.transports.cli import main as run_cli
from core.transports.flask_app import build_runtime
from managers.action_discovery_manager import ActionDiscoveryManager
from managers.api_keys import ApiKeyManager
from managers.audit_manager import AuditManager
from managers.db import DatabaseManager
from managers.executions import ExecutionsManager
from managers.hooks_manager import HooksManager
from managers.jwt import JWTManager
from managers.metrics_manager import MetricsManager
from managers.modules import ModuleManager
from managers.rate_limiter import RateLimiterManager
from managers.realtime import WebSocketManager
from managers.redis import RedisManager
from managers.services import ServicesManager
from managers.state_manager import StateManager
from managers.vault import VaultManager

ROOT = Path(__file__).resolve().parent

# The managers of this build, in declaration order (middleware placed at one spot keeps
# this order). The config manager is the kernel's own.
MANAGERS: tuple[type[Manager], ...] = (
    MetricsManager,
    HooksManager,
    VaultManager,
    DatabaseManager,
    AuditManager,
    RedisManager,
    StateManager,
    JWTManager,
    ApiKeyManager,
    RateLimiterManager,
    WebSocketManager,
    ExecutionsManager,
    ServicesManager,
    ModuleManager,
    ActionDiscoveryManager,
)

ManagerFactory = Callable[[], Sequence[Manager]]


def default_managers() -> list[Manager]:
    """One fresh instance of each manager this build runs."""
    return [cls() for cls in MANAGERS]


def config_spec(
    managers: Sequence[type[Manager]] = MANAGERS, sources: Sequence[SourceSpec] | None = None
) -> ConfigSpec:
    """What the kernel and ``managers`` contribute to the config chain (``sources``:
    instead of the managers' own document sources, for tests)."""
    return ConfigSpec(
        settings=(*KERNEL_SETTINGS, *(s for m in managers for s in m.settings)),
        discover=tuple(m.discover_settings for m in managers),
        sources=tuple(
            sources if sources is not None else (s for m in managers for s in m.config_sources())
        ),
        checks=(kernel_problems, *(m.production_problems for m in managers)),
    )


def load(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    *,
    managers: Sequence[type[Manager]] = MANAGERS,
    quiet: bool = False,
) -> Config:
    """Resolve the config and set up logging (``quiet``: warnings and worse only)."""
    config = load_config(
        ROOT if root is None else Path(root),
        os.environ if environ is None else environ,
        overrides,
        spec=config_spec(managers),
    )
    level = config["logging.level"]
    if quiet and level in ("DEBUG", "INFO"):
        level = "WARNING"
    target = config["logging.file"]
    configure_logging(
        level,
        config["logging.format"],
        secrets=config.secret_values(),
        file=LogFile(
            config.path(str(target)), config["logging.max_bytes"], config["logging.backups"]
        )
        if target
        else None,
    )
    return config


def boot(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    *,
    managers: ManagerFactory = default_managers,
) -> BootedApp:
    """Load config (environment from ``environ``, default ``os.environ``) and boot the app:
    the ``Runtime`` every transport is handed (its ``http`` is the Flask app)."""
    instances = managers()
    config = load(environ, overrides, root, managers=[type(m) for m in instances])
    return build_runtime(config, instances)


def create_app(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    *,
    managers: ManagerFactory = default_managers,
) -> Flask:
    """The booted app's Flask app (a WSGI server or Flask's test client serves it)."""
    flask_app = boot(environ, overrides, root, managers=managers).http
    assert flask_app is not None
    return flask_app


def asgi() -> AsgiApp:
    """What ``serve`` runs in each worker process (``uvicorn --factory app:asgi``)."""
    return AsgiApp(boot)


# --- command line ---------------------------------------------------------------------


def _users_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="users_command", required=True)
    for name, text in (("promote", "give a user a role"), ("demote", "take a role away")):
        change = sub.add_parser(name, help=text)
        change.add_argument("email")
        change.add_argument("role")
    for name, text in USER_SWITCHES.items():
        sub.add_parser(name, help=text).add_argument("email")


USER_SWITCHES = {
    "disable": "disable a user: every session of theirs ends at once",
    "enable": "let a disabled user log in again",
    "delete": "delete a user: every session of theirs ends at once",
}


def _users(args: argparse.Namespace, runtime: Project) -> int:
    if args.users_command in ("promote", "demote"):
        if args.users_command == "promote":
            with runtime.booted_managers() as managers:
                used = managers.names_in_use("roles")
            if args.role not in used:
                print(
                    f"warning: no action or room asks for role {args.role!r} (a typo?)",
                    file=sys.stderr,
                )
        code, body = runtime.call(
            f"auth.users.{args.users_command}", {"email": args.email, "role": args.role}
        )
        return report(
            code,
            body,
            lambda data: print(
                f"{data['email']} now has roles: {', '.join(data['roles'])} ({data['note']})"
            ),
        )
    code, body = runtime.call(f"auth.users.{args.users_command}", {"email": args.email})
    if (
        code == 0
        and args.users_command != "enable"
        and runtime.config()["redis.url"] == "memory://"
    ):
        print(
            "note: redis.url is memory://: a running server does not see this command's "
            "revocation markers, and the user's tokens keep working there until they expire "
            f"(call auth.users.{args.users_command} over HTTP instead, or give the server a Redis)",
            file=sys.stderr,
        )
    return report(code, body, lambda data: print(f"{data['email']}: {args.users_command}d"))


# The shipped auth module's command (modules cannot add commands).
USERS = Command("users", "manage users", _users, _users_arguments)


def main(argv: Sequence[str] | None = None, managers: ManagerFactory = default_managers) -> int:
    """Run one command; ``managers`` lets a test run the CLI with an extra manager."""

    def loader(**kwargs: Any) -> Config:
        return load(managers=[type(m) for m in managers()], **kwargs)

    project = Project(loader, managers, ROOT, asgi_factory="app:asgi")
    return run_cli(list(sys.argv[1:] if argv is None else argv), project, (USERS,))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
