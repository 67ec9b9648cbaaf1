"""The command line: the kernel's commands plus those the managers contribute.

``python app.py [serve] [--host H] [--port P] [--workers N]`` (the default), ``check``,
``actions [--json]``, ``call <action> [--json '{...}' | --json -]``, ``new-module <name>``,
``config``; managers add theirs (``Manager.commands``: ``keys``, ``bans``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.base.errors import ActionError, BootError, Forbidden, ManagerStopError
from core.base.headers import Headers
from core.base.request_ids import new_request_id
from core.config.config import Config
from core.contracts.calls import CallRequest
from core.contracts.context import SYSTEM, Caller
from core.contracts.executions import PREFIX as EXECUTIONS
from core.contracts.executions import Executions
from core.contracts.module import ModuleCatalog
from core.runtime.app_manager import AppManager
from core.runtime.booted import BootedApp
from core.runtime.manager import Command, Manager
from core.transports.flask_app import build_runtime


class Project:
    """What a command works with (the ``CommandRuntime`` of a manager's command): the
    project's config and a booted app on demand. The CLI is a transport: its calls go
    through the booted app's ``invoke`` like every other."""

    def __init__(
        self,
        load: Callable[..., Config],
        managers: Callable[[], Sequence[Manager]],
        root: Path,
        asgi_factory: str = "",
    ) -> None:
        self._load = load
        self.managers = managers
        self.root = root
        self.asgi_factory = asgi_factory  # "module:function" that serve's workers import

    def config(self, overrides: Mapping[str, Any] | None = None, *, quiet: bool = True) -> Config:
        return self._load(overrides=overrides, quiet=quiet)

    def build(self, config: Config | None = None) -> BootedApp:
        return build_runtime(config or self.config(), self.managers())

    @contextmanager
    def booted(self) -> Iterator[BootedApp]:
        """An app booted for the length of the block (as the CLI's commands use it)."""
        runtime = self.build()
        try:
            yield runtime
        finally:
            runtime.close()

    @contextmanager
    def booted_managers(self) -> Iterator[AppManager]:
        """The same, as its ``AppManager`` (what managers' commands work with)."""
        with self.booted() as runtime:
            yield runtime.app_manager

    def call(
        self,
        action: str,
        params: Any,
        *,
        caller: Caller | None = SYSTEM,
        headers: Mapping[str, str] | None = None,
        as_user: str | None = None,
        background: bool = False,
        wait: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """Run one action in-process: (exit code, envelope or problem); ``params`` as
        given (anything but a JSON object is the pipeline's 400). The caller is ``caller``
        (default: system); None identifies ``headers`` (a token, an API key) as HTTP
        would; ``as_user`` is the user with that email, with their roles."""
        with self.booted() as runtime:
            if as_user is not None:
                code, found = _invoke(runtime, USER_LOOKUP, {"email": as_user}, SYSTEM, {})
                if code:
                    return code, found
                user = found["data"]
                if user.get("disabled"):  # HTTP would refuse their tokens too
                    refused = Forbidden(f"user {as_user} is disabled")
                    return 1, refused.problem(new_request_id())
                caller = Caller("user", id=user["id"], roles=frozenset(user["roles"]))
            code, body = _invoke(
                runtime, action, params, caller, headers or {}, background=background
            )
            started = body.get("data") if code == 0 else None
            executions = runtime.capability(Executions)
            queued = (
                isinstance(started, dict)
                and started.get("status") == "queued"
                and str(started.get("url", "")) == f"{EXECUTIONS}{started.get('id')}"
            )
            if wait and executions is not None and queued and isinstance(started, dict):
                # no runner in this process: the CLI runs the job itself, and waits
                finished = executions.run_now(runtime, str(started["id"]), _show_progress)
                if finished is not None:
                    if sys.stderr.isatty():
                        print(file=sys.stderr)  # end the bar's line
                    body = {**body, "data": finished}
            return code, body


# The action --as looks a user up with (the shipped auth module's; without it, --as is a 404).
USER_LOOKUP = "auth.users.show"


def _invoke(
    runtime: BootedApp,
    action: str,
    params: Any,
    caller: Caller | None,
    headers: Mapping[str, str],
    *,
    background: bool = False,
) -> tuple[int, dict[str, Any]]:
    request = CallRequest(
        action=action,
        params=params,
        request_id=new_request_id(),
        transport="cli",
        headers=Headers.of(headers),
        respond_async=background,
        caller=caller,
    )
    try:
        return 0, runtime.invoke(request).envelope
    except ActionError as error:
        return 1, error.problem(request.request_id)


def _show_progress(progress: Mapping[str, Any]) -> None:
    """``call --wait``: a bar on a terminal, a line each otherwise (both on stderr)."""
    done = float(progress.get("done") or 0)
    filled = round(done * 30)
    message = progress.get("message") or ""
    line = f"[{'#' * filled}{'.' * (30 - filled)}] {done:4.0%} {message}"
    if sys.stderr.isatty():
        print(f"\r{line[:100]:<100}", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr)


def report(code: int, body: Mapping[str, Any], show: Callable[[Any], None]) -> int:
    """Print a call's data with ``show``, or its problem on stderr; the exit code."""
    if code:
        print(f"{body['title']}: {body['detail']}", file=sys.stderr)
        for error in body.get("errors", []):
            print(f"  {error['path']}: {error['message']}", file=sys.stderr)
        return code
    show(body["data"])
    return 0


# --- the kernel's commands ------------------------------------------------------------


def _serve(args: argparse.Namespace, runtime: Project) -> int:
    from core.transports.server import metrics_directory, serve

    overrides = {
        key: value
        for key, value in (
            ("http.host", args.host),
            ("http.port", args.port),
            ("http.workers", args.workers),
        )
        if value is not None
    }
    config = runtime.config(overrides, quiet=False)
    if args.reload:
        if config.is_production:
            print(
                "serve --reload is for development; production serves fixed code", file=sys.stderr
            )
            return 2
        from core.transports.reload import supervise

        passed = [
            part
            for flag, value in (
                ("--host", args.host),
                ("--port", args.port),
                ("--workers", args.workers),
            )
            if value is not None
            for part in (flag, str(value))
        ]
        folders = [
            runtime.root / "modules",
            *(config.path(p) for p in config["modules.path"]),
            runtime.root / "actions",
            runtime.root / "config",
        ]
        return supervise(passed, folders, runtime.root)
    with metrics_directory():
        # Boot once here so a broken module or declaration stops `serve` with the problem
        # list instead of a crash loop of workers.
        runtime.build(config).close()
        serve(config, runtime.asgi_factory, overrides)
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development: restart when modules, actions or config change and still load",
    )


def _check(_args: argparse.Namespace, runtime: Project) -> int:
    """Boot and report; warnings (likely mistakes that still load) do not fail it."""
    with runtime.booted() as booted:
        actions = booted.actions()
        catalog = booted.capability(ModuleCatalog)
        modules = catalog.names() if catalog is not None else []
        warnings = list(booted.app_manager.warnings)
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    counted = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"ok: {len(modules)} module(s), {len(actions)} action(s){counted}")
    return 0


def _actions(args: argparse.Namespace, runtime: Project) -> int:
    with runtime.booted() as booted:
        actions = booted.actions()
    if args.json:
        print(json.dumps([a.spec.describe() for a in actions], indent=2))
        return 0
    width = max((len(a.spec.name) for a in actions), default=0)
    for action in actions:
        spec = action.spec
        print(f"{spec.name:<{width}}  {spec.auth:<7}  {spec.summary}")
    return 0


def _call(args: argparse.Namespace, runtime: Project) -> int:
    text = sys.stdin.read() if args.json == "-" else args.json
    try:
        params = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        print(f"--json is not valid JSON: {exc}", file=sys.stderr)
        return 2
    caller: Caller | None = SYSTEM
    headers: dict[str, str] = {}
    if args.token:
        caller, headers = None, {"Authorization": f"Bearer {args.token}"}
    elif args.api_key:
        caller, headers = None, {"X-API-Key": args.api_key}
    elif args.scopes is not None:
        scopes = frozenset(s.strip() for s in args.scopes.split(",") if s.strip())
        caller = Caller("api_key", id="cli", scopes=scopes)
    code, body = runtime.call(
        args.action,
        params,
        caller=caller,
        headers=headers,
        as_user=args.as_user,
        background=args.background,
        wait=args.wait,
    )
    print(json.dumps(body, indent=2), file=sys.stderr if code else sys.stdout)
    return code


def _call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action")
    parser.add_argument("--json", default="{}", help="params as a JSON object, or - for stdin")
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--as", dest="as_user", metavar="EMAIL", help="call as this user, with their roles"
    )
    who.add_argument("--token", help="call with this access token (as HTTP would)")
    who.add_argument("--api-key", help="call with this API key (as HTTP would)")
    parser.add_argument(
        "--background",
        action="store_true",
        help="a run: either action as an execution (Prefer: respond-async)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="a background call: run the job here and print the finished execution",
    )
    who.add_argument(
        "--scopes",
        metavar="A,B",
        help="call as an API key that has these scopes (none: an empty list)",
    )


def _actions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print declarations as JSON")


def _config(_args: argparse.Namespace, runtime: Project) -> int:
    """The effective settings with the source of each; secrets are shown as ***."""
    rows = list(runtime.config().describe())
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        shown = json.dumps(list(value) if isinstance(value, tuple) else value)
        print(f"{key:<{width}}  {shown}  ({source})")
    return 0


def _new_module(args: argparse.Namespace, runtime: Project) -> int:
    from core.transports.scaffold import ScaffoldError, write_module

    try:
        folder = write_module(Path(args.dir) if args.dir else runtime.root / "modules", args.name)
    except ScaffoldError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"created {folder}; `python app.py check` to verify, then call {args.name}.hello")
    return 0


def _new_module_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("--dir", help="parent folder (default: modules/)")


KERNEL_COMMANDS = (
    Command("serve", "serve HTTP (the default command)", _serve, _serve_arguments),
    Command("check", "load config, modules and actions; report problems", _check),
    Command("actions", "list every action", _actions, _actions_arguments),
    Command(
        "call",
        "run one action in-process (as the system caller, or --as/--token/--api-key/--scopes)",
        _call,
        _call_arguments,
    ),
    Command("config", "print the effective settings and their sources", _config),
    Command("new-module", "scaffold a module folder", _new_module, _new_module_arguments),
)


# --- entry point ----------------------------------------------------------------------


def parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="app.py", description="Switchboard plugin runtime")
    sub = root.add_subparsers(dest="command")
    for command in commands:
        child = sub.add_parser(command.name, help=command.help)
        command.configure(child)
        child.set_defaults(func=command.run)
    return root


def main(argv: Sequence[str], runtime: Project, extra: Sequence[Command] = ()) -> int:
    """Run one command; a boot problem prints the problem list and exits 1."""
    commands: dict[str, Command] = {c.name: c for c in KERNEL_COMMANDS}
    for command in [
        *extra,
        *(c for manager in runtime.managers() for c in type(manager).commands()),
    ]:
        if command.name in commands:
            raise BootError(f"two commands are named {command.name!r}")
        commands[command.name] = command
    arguments = list(argv)
    if not arguments or (arguments[0].startswith("-") and arguments[0] not in ("-h", "--help")):
        arguments.insert(0, "serve")  # serve is the default command
    args = parser(list(commands.values())).parse_args(arguments)
    try:
        return int(args.func(args, runtime))
    except BootError as error:
        print(f"{len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    except ManagerStopError as error:  # a module's dispose() (or a manager's stop) raised
        print("problem(s) while stopping:", file=sys.stderr)
        for name, exc in error.errors.items():
            print(f"  - {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
