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
from managers.api_key_manager import ApiKeyManager
from managers.database_manager import DatabaseManager
from managers.hooks_manager import HooksManager
from managers.jwt_manager import JWTManager
from managers.module_manager import ModuleManager
from managers.rate_limiter_manager import RateLimiterManager
from managers.redis_manager import RedisManager
from managers.state_manager import StateManager
from managers.vault_manager import VaultManager

ROOT = Path(__file__).resolve().parent


def default_managers() -> list[Manager]:
    """The managers this build of Switchboard runs (config is added by the AppManager)."""
    return [
        HooksManager(),
        VaultManager(),
        DatabaseManager(),
        RedisManager(),
        StateManager(),
        JWTManager(),
        ApiKeyManager(),
        RateLimiterManager(),
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
    config = load_config(
        root or ROOT,
        os.environ if environ is None else environ,
        overrides,
        vault_connect=_vault_connect,
    )
    level = config["logging.level"]
    if quiet and level in ("DEBUG", "INFO"):
        level = "WARNING"
    configure_logging(level, config["logging.format"], secrets=config.secret_values())
    return config


def _vault_connect(settings: Mapping[str, Any], root: Path) -> Any:
    from managers.vault_client import VaultClient

    return VaultClient.connect(settings, root)


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


def _run_as_system(action: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run one action in-process as the system caller: (exit code, envelope or problem)."""
    app = _cli_app()
    request = CallRequest(
        action=action, params=params, request_id=uuid.uuid4().hex, transport="cli", caller=SYSTEM
    )
    try:
        return 0, state(app).pipeline.invoke(request).envelope
    except ActionError as error:
        return 1, error.problem(request.request_id)
    finally:
        shutdown_app(app)


def _report(code: int, body: dict[str, Any], show: Any) -> int:
    if code:
        print(f"{body['title']}: {body['detail']}", file=sys.stderr)
        for error in body.get("errors", []):
            print(f"  {error['path']}: {error['message']}", file=sys.stderr)
        return code
    show(body["data"])
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        params: dict[str, Any] = {"name": args.name, "scopes": args.scopes or []}
        for key, value in (
            ("owner", args.owner),
            ("expires", args.expires),
            ("rate_limit", args.rate_limit),
        ):
            if value:
                params[key] = value
        code, body = _run_as_system("auth.keys.create", params)

        def show_created(data: dict[str, Any]) -> None:
            print(f"id:      {data['id']}")
            print(f"scopes:  {', '.join(data['scopes']) or '(none)'}")
            print(f"expires: {data['expires_at'] or 'never'}")
            print(f"key:     {data['key']}")
            print(
                "Store the key now: it is shown only once and cannot be recovered.", file=sys.stderr
            )

        return _report(code, body, show_created)
    if args.keys_command == "list":
        code, body = _run_as_system("auth.keys.list", {"owner": args.owner} if args.owner else {})

        def show_list(keys: list[dict[str, Any]]) -> None:
            for key in keys:
                status = "revoked" if key["revoked"] else "active"
                print(
                    f"{key['id']}  {status:<7}  {key['name']}  "
                    f"scopes={','.join(key['scopes']) or '-'}  owner={key['owner'] or '-'}"
                )

        return _report(code, body, show_list)
    code, body = _run_as_system("auth.keys.revoke", {"id": args.id})
    return _report(code, body, lambda data: print(f"revoked {data['id']}"))


def cmd_users(args: argparse.Namespace) -> int:
    code, body = _run_as_system("auth.users.promote", {"email": args.email, "role": args.role})
    return _report(
        code,
        body,
        lambda data: print(
            f"{data['email']} now has roles: {', '.join(data['roles'])} ({data['note']})"
        ),
    )


def cmd_bans(args: argparse.Namespace) -> int:
    if args.bans_command == "lift":
        code, body = _run_as_system("ratelimit.unban", {"identity": args.identity})
        return _report(code, body, lambda data: print(f"lifted the ban of {data['identity']}"))
    code, body = _run_as_system("ratelimit.bans", {})

    def show(bans: list[dict[str, Any]]) -> None:
        if not bans:
            print("no bans")
        for ban in bans:
            print(f"{ban['identity']}  until {ban['until_iso']}  (level {ban['level']})")

    return _report(code, body, show)


def cmd_config(_args: argparse.Namespace) -> int:
    """The effective settings with the source of each; secrets are shown as ***."""
    config = load(quiet=True)
    rows = list(config.describe())
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        shown = json.dumps(list(value) if isinstance(value, tuple) else value)
        print(f"{key:<{width}}  {shown}  ({source})")
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
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes",
        type=lambda text: [s for s in text.split(",") if s],
        help="comma-separated, e.g. credits:read,credits:write",
    )
    create.add_argument("--owner", help="user id the key belongs to")
    create.add_argument("--expires", help="lifetime, e.g. 30d or 12h")
    create.add_argument(
        "--rate-limit", dest="rate_limit", action="append", help="e.g. 100/minute (repeatable)"
    )
    listing = keys_sub.add_parser("list", help="list keys")
    listing.add_argument("--owner")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id")
    keys.set_defaults(func=cmd_keys)
    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    promote = users_sub.add_parser("promote", help="give a user a role")
    promote.add_argument("email")
    promote.add_argument("role")
    users.set_defaults(func=cmd_users)
    sub.add_parser("config", help="print the effective settings and their sources").set_defaults(
        func=cmd_config
    )
    bans = sub.add_parser("bans", help="list automatic bans, or lift one")
    bans_sub = bans.add_subparsers(dest="bans_command")
    lift = bans_sub.add_parser("lift", help="lift a ban")
    lift.add_argument("identity", help="as listed, e.g. ip:203.0.113.7 or user:<id>")
    bans.set_defaults(func=cmd_bans)
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
