"""``python app.py keys create|list|revoke``: API keys from the command line."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from core.base.durations import parse_duration
from core.base.errors import ActionError
from core.manager import Command, CommandRuntime
from managers.api_keys.manager import ApiKeyManager


def _keys_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes",
        type=lambda value: [s for s in value.split(",") if s],
        help="comma-separated, e.g. credits:read,credits:write",
    )
    create.add_argument("--owner", help="user id the key belongs to")
    create.add_argument("--expires", help="lifetime, e.g. 30d or 12h")
    create.add_argument(
        "--rate-limit", dest="rate_limit", action="append", help="e.g. 100/minute (repeatable)"
    )
    listing = sub.add_parser("list", help="list keys")
    listing.add_argument("--owner")
    revoke = sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id")


def _keys_command(args: argparse.Namespace, runtime: CommandRuntime) -> int:
    with runtime.booted_managers() as app:
        keys = app.get(ApiKeyManager)
        if args.keys_command == "create":
            used = app.names_in_use("scopes")
            for scope in sorted(set(args.scopes or []) - used):
                print(
                    f"warning: no action or room asks for scope {scope!r} (a typo?)",
                    file=sys.stderr,
                )
        try:
            return _run_keys(args, keys)
        except (ActionError, ValueError) as error:
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            return 1


def _run_keys(args: argparse.Namespace, keys: ApiKeyManager) -> int:
    if args.keys_command == "create":
        record, raw = keys.create(
            name=args.name,
            owner=args.owner,
            scopes=args.scopes or [],
            expires_in=parse_duration(args.expires) if args.expires else None,
            rate_limit=args.rate_limit,
        )
        print(f"id:      {record['id']}")
        print(f"scopes:  {', '.join(record['scopes']) or '(none)'}")
        expires = record["expires_at"]
        when = (
            datetime.fromtimestamp(float(expires), UTC).isoformat(timespec="seconds")
            if isinstance(expires, int | float)
            else expires or "never"
        )
        print(f"expires: {when}")
        print(f"key:     {raw}")
        print("Store the key now: it is shown only once and cannot be recovered.", file=sys.stderr)
        return 0
    if args.keys_command == "list":
        for key in keys.list(owner=args.owner):
            status = "revoked" if key["revoked"] else "active"
            print(
                f"{key['id']}  {status:<7}  {key['name']}  "
                f"scopes={','.join(key['scopes']) or '-'}  owner={key['owner'] or '-'}"
            )
        return 0
    if not keys.revoke(args.id):
        print(f"no API key {args.id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


KEYS = Command("keys", "manage API keys", _keys_command, _keys_arguments)
