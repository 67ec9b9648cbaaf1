"""Handlers of the credits module.

Invariants: ledger entries are only ever inserted; a wallet's balance never goes below
zero; the sum of all balances equals the sum of all grants. A transfer is one database
transaction that debits (guarded by the balance) and credits, touching the two wallets in
id order so that two opposite transfers never wait on each other.

Exactly once: with an Idempotency-Key, the ledger entry's id is derived from the caller and
the key, so the database itself refuses a second entry. A retry that the shared store can
no longer recognise (Redis lost its records) gets the first result, never a second transfer.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from typing import Any

from core.errors import Conflict, FieldError, IdempotencyMismatch, NotFound, ValidationError

WALLETS, LEDGER, USERS = "credit_wallets", "credit_ledger", "sb_users"


def _ensure_wallet(ctx: Any, user_id: str) -> None:
    """A wallet exists for every user who has ever held credits (created outside any
    transaction: a failed insert would poison a PostgreSQL transaction)."""
    wallets = ctx.db.collection(WALLETS)
    if wallets.find_one({"_id": user_id}) is None:
        with contextlib.suppress(Conflict):  # created concurrently: what we wanted
            wallets.insert_one({"_id": user_id, "balance": 0})


def _recipient(ctx: Any, user_id: str) -> None:
    """The recipient must be a user; their wallet is created on first use."""
    if ctx.db.collection(USERS).find_one({"_id": user_id}) is None:
        raise NotFound(f"no user {user_id!r}")
    _ensure_wallet(ctx, user_id)


def _entry(
    ctx: Any, kind: str, *, source: str | None, to: str, amount: int, note: str | None
) -> dict[str, Any]:
    """A new ledger entry (entries are only ever inserted)."""
    key = ctx.idempotency_key
    entry_id = (
        hashlib.sha256(f"{kind}\0{ctx.caller.id}\0{key}".encode()).hexdigest()[:32]
        if key is not None
        else uuid.uuid4().hex
    )
    return {
        "_id": entry_id,
        "kind": kind,
        "from": source,
        "to": to,
        "amount": amount,
        "note": note,
        "at": time.time(),
        "by": ctx.caller.id,
        "request_id": ctx.request_id,
    }


def _record_once(ctx: Any, entry: dict[str, Any], work: Any) -> dict[str, Any]:
    """Run ``work`` (which inserts ``entry``) in a transaction; the entry that is stored.

    When an entry with this id exists, this is a retry of one idempotent call: nothing is
    applied again, and the first entry is the answer (422 if the retry asks otherwise).
    """
    try:
        ctx.db.run_transaction(work)
    except Conflict:
        first = ctx.db.collection(LEDGER).find_one({"_id": entry["_id"]})
        if first is None or ctx.idempotency_key is None:
            raise
        if (first["to"], first["amount"]) != (entry["to"], entry["amount"]):
            raise IdempotencyMismatch(
                f"Idempotency-Key {ctx.idempotency_key!r} was used with different params"
            ) from None
        return dict(first)
    return entry


def balance(ctx: Any) -> dict[str, Any]:
    wallet = ctx.db.collection(WALLETS).find_one({"_id": ctx.caller.id})
    return {"user": ctx.caller.id, "balance": wallet["balance"] if wallet else 0}


def transfer(ctx: Any, *, to: str, amount: int, note: str | None = None) -> dict[str, Any]:
    sender = ctx.caller.id
    if to == sender:
        raise ValidationError(
            "cannot transfer to yourself", errors=[FieldError("/to", "is the caller")]
        )
    _recipient(ctx, to)
    wallets, ledger = ctx.db.collection(WALLETS), ctx.db.collection(LEDGER)
    entry = _entry(ctx, "transfer", source=sender, to=to, amount=amount, note=note)

    def work() -> None:
        for wallet in sorted((sender, to)):
            if wallet == sender:
                funded = {"_id": sender, "balance": {"$gte": amount}}
                if not wallets.update_one(funded, {"$inc": {"balance": -amount}}):
                    raise Conflict("insufficient credits", extra={"needed": amount})
            else:
                wallets.update_one({"_id": to}, {"$inc": {"balance": amount}})
        ledger.insert_one(entry)

    entry = _record_once(ctx, entry, work)
    left = wallets.find_one({"_id": sender})
    return {
        "transfer_id": entry["_id"],
        "from": sender,
        "to": to,
        "amount": amount,
        "note": entry.get("note"),
        "balance": left["balance"] if left else 0,
    }


def history(ctx: Any, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
    mine = {"$or": [{"from": ctx.caller.id}, {"to": ctx.caller.id}]}
    ledger = ctx.db.collection(LEDGER)
    entries = ledger.find(mine, sort=[("at", -1)], limit=limit, skip=offset)
    return {
        "entries": [
            {
                "id": e["_id"],
                "kind": e["kind"],
                "from": e["from"],
                "to": e["to"],
                "amount": e["amount"],
                "note": e.get("note"),
                "at": e["at"],
            }
            for e in entries
        ],
        "total": ledger.count(mine),
        "limit": limit,
        "offset": offset,
    }


def grant(ctx: Any, *, to: str, amount: int, note: str | None = None) -> dict[str, Any]:
    _recipient(ctx, to)
    wallets, ledger = ctx.db.collection(WALLETS), ctx.db.collection(LEDGER)
    entry = _entry(ctx, "grant", source=None, to=to, amount=amount, note=note)

    def work() -> None:
        wallets.update_one({"_id": to}, {"$inc": {"balance": amount}})
        ledger.insert_one(entry)

    entry = _record_once(ctx, entry, work)
    wallet = wallets.find_one({"_id": to})
    return {
        "grant_id": entry["_id"],
        "to": to,
        "amount": amount,
        "balance": wallet["balance"] if wallet else amount,
    }
