"""Switchboard: ``create_app()`` and the command line.

python app.py [serve] [--host H] [--port P] [--workers N]
python app.py check
python app.py actions [--json]
python app.py call <action> [--json '{...}' | --json -]
python app.py new-module <name> [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flask import Flask

from core.config import Config, load_config
from core.context import SYSTEM
from core.errors import ActionError, BootError
from core.http import state
from core.logging import configure_logging
from core.manager import Manager
from core.pipeline import CallRequest
from core.runtime import build_app, shutdown_app
from managers.action_discovery_manager import ActionDiscoveryManager
from managers.database_manager import DatabaseManager
from managers.hooks_manager import HooksManager
from managers.module_manager import ModuleManager
from managers.redis_manager import RedisManager
from managers.state_manager import StateManager

ROOT = Path(__file__).resolve().parent


def default_managers() -> list[Manager]:
    """The managers this build of Switchboard runs (config is added by the AppManager)."""
    return [
        HooksManager(),
        DatabaseManager(),
        RedisManager(),
        StateManager(),
        ModuleManager(),
        ActionDiscoveryManager(),
    ]


def load(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    root: Path | None = None,
    *,
    quiet: bool = False,
) -> Config:
    """Resolve the config and set up logging (``quiet``: warnings and worse only)."""
    config = load_config(root or ROOT, os.environ if environ is None else environ, overrides)
    level = config["logging.level"]
    if quiet and level in ("DEBUG", "INFO"):
        level = "WARNING"
    configure_logging(level, config["logging.format"])
    return config


def _cli_app() -> Flask:
    return build_app(load(quiet=True), default_managers())


def create_app(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    root: Path | None = None,
) -> Flask:
    """Load config (environment from ``environ``, default ``os.environ``) and boot the app."""
    return build_app(load(environ, overrides, root), default_managers())


# --- command line ---------------------------------------------------------------------


def _print_problems(error: BootError) -> None:
    print(f"{len(error.problems)} problem(s):", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from core.server import serve

    overrides = {
        key: value
        for key, value in (
            ("http.host", args.host),
            ("http.port", args.port),
            ("http.workers", args.workers),
        )
        if value is not None
    }
    config = load(overrides=overrides)
    # Boot once here so a broken module or declaration stops `serve` with the problem list
    # instead of a crash loop of workers.
    shutdown_app(build_app(config, default_managers()))
    serve(config, lambda: build_app(config, default_managers()))
    return 0


def cmd_check(_args: argparse.Namespace) -> int:
    app = _cli_app()
    current = state(app)
    actions = current.pipeline.registry.actions()
    modules = current.app_manager.get("modules", ModuleManager).names()
    shutdown_app(app)
    print(f"ok: {len(modules)} module(s), {len(actions)} action(s)")
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    app = _cli_app()
    actions = state(app).pipeline.registry.actions()
    shutdown_app(app)
    if args.json:
        print(json.dumps([a.spec.describe() for a in actions], indent=2))
        return 0
    width = max((len(a.spec.name) for a in actions), default=0)
    for action in actions:
        spec = action.spec
        print(f"{spec.name:<{width}}  {spec.auth:<7}  {spec.summary}")
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.json == "-" else args.json
    try:
        params = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        print(f"--json is not valid JSON: {exc}", file=sys.stderr)
        return 2
    app = _cli_app()
    request = CallRequest(
        action=args.action,
        params=params,
        request_id=uuid.uuid4().hex,
        transport="cli",
        caller=SYSTEM,
    )
    try:
        result = state(app).pipeline.invoke(request)
    except ActionError as error:
        print(json.dumps(error.problem(request.request_id), indent=2), file=sys.stderr)
        return 1
    finally:
        shutdown_app(app)
    print(json.dumps(result.envelope, indent=2))
    return 0


def cmd_new_module(args: argparse.Namespace) -> int:
    from core.scaffold import ScaffoldError, write_module

    try:
        folder = write_module(Path(args.dir) if args.dir else ROOT / "modules", args.name)
    except ScaffoldError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"created {folder}; `python app.py check` to verify, then call {args.name}.hello")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="app.py", description="Switchboard plugin runtime")
    sub = root.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve HTTP (the default command)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("check", help="load config, modules and actions; report problems").set_defaults(
        func=cmd_check
    )
    actions = sub.add_parser("actions", help="list every action")
    actions.add_argument("--json", action="store_true", help="print declarations as JSON")
    actions.set_defaults(func=cmd_actions)
    call = sub.add_parser("call", help="run one action in-process (as the system caller)")
    call.add_argument("action")
    call.add_argument("--json", default="{}", help="params as a JSON object, or - for stdin")
    call.set_defaults(func=cmd_call)
    new = sub.add_parser("new-module", help="scaffold a module folder")
    new.add_argument("name")
    new.add_argument("--dir", help="parent folder (default: modules/)")
    new.set_defaults(func=cmd_new_module)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or (arguments[0].startswith("-") and arguments[0] not in ("-h", "--help")):
        arguments.insert(0, "serve")  # serve is the default command
    args = parser().parse_args(arguments)
    try:
        return int(args.func(args))
    except BootError as error:
        _print_problems(error)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
