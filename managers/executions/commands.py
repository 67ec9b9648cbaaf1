"""``python app.py executions list|show|cancel``: the executions module's actions, called as
the system caller (who sees every execution)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.manager import Command, CommandRuntime


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="executions_command", required=True)
    listing = sub.add_parser("list", help="executions, newest first")
    listing.add_argument("--action")
    listing.add_argument("--status")
    listing.add_argument("--caller", help="user:<id> or api_key:<id>")
    listing.add_argument("--limit", type=int, default=20)
    sub.add_parser("show", help="one execution, whole").add_argument("id")
    sub.add_parser("cancel", help="cancel a queued or running execution").add_argument("id")


def _command(args: argparse.Namespace, runtime: CommandRuntime) -> int:
    which = args.executions_command
    params: dict[str, Any]
    if which == "list":
        params = {
            k: v
            for k, v in (
                ("action", args.action),
                ("status", args.status),
                ("caller", args.caller),
                ("limit", args.limit),
            )
            if v is not None
        }
    else:
        params = {"id": args.id}
    code, body = runtime.call(f"executions.{which}", params)
    if code:
        print(f"{body['title']}: {body['detail']}", file=sys.stderr)
        return code
    data = body["data"]
    if which == "list":
        for execution in data:
            done = (execution.get("progress") or {}).get("done")
            shown = "" if done is None else f" {done:.0%}"
            print(
                f"{execution['id']}  {execution['status']:<9}{shown}  {execution['action']}  "
                f"{execution['created_at']}  {execution['caller']['kind']}:"
                f"{execution['caller']['id']}"
            )
        return 0
    print(json.dumps(data, indent=2))
    return 0


EXECUTIONS = Command(
    "executions", "list, show or cancel background executions", _command, _arguments
)
