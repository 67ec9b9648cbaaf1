"""Handlers of the auth module."""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.errors import Conflict, NotFound, RateLimited, Unauthorized
from core.module import Limit, parse_duration

BAD_LOGIN = "invalid email or password"

USERS = "sb_users"  # the runtime's own collection ("users" before 0.2)


def _module(ctx: Any) -> Any:
    return ctx.modules.get("auth").instance


def _users(ctx: Any) -> Any:
    return ctx.db.collection(USERS)


def _public(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": user["_id"],
        "email": user["email"],
        "roles": sorted(user.get("roles", [])),
        "created_at": user["created_at"],
    }


def register(ctx: Any, *, email: str, password: str) -> dict[str, Any]:
    module = _module(ctx)
    user = {
        "_id": uuid.uuid4().hex,
        "email": email.strip().lower(),
        "password_hash": module.hasher.hash(password),
        "roles": [],
        "created_at": time.time(),
        "session_epoch": uuid.uuid4().hex,
    }
    try:
        _users(ctx).insert_one(user)
    except Conflict:
        raise Conflict("an account with this email already exists") from None
    return _public(user)


def login(ctx: Any, *, email: str, password: str) -> dict[str, Any]:
    module = _module(ctx)
    address = email.strip().lower()
    failures = _Failures(ctx, address, module.failures_per_email)
    failures.check()
    user = _users(ctx).find_one({"email": address})
    # Unknown email or wrong password: one Argon2 verify and the same answer either way.
    stored = user["password_hash"] if user is not None else module.dummy_hash
    try:
        module.hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        failures.count()
        raise Unauthorized(BAD_LOGIN, reason="bad_login") from None
    if user is None or user.get("disabled"):  # the same answer: nothing to learn here
        failures.count()
        raise Unauthorized(BAD_LOGIN, reason="bad_login")
    if module.hasher.check_needs_rehash(stored):
        _users(ctx).update_one(
            {"_id": user["_id"]}, {"$set": {"password_hash": module.hasher.hash(password)}}
        )
    pair: dict[str, Any] = ctx.jwt.issue_pair(
        user["_id"], user.get("roles", []), epoch=_epoch(ctx, user)
    )
    return pair


def _epoch(ctx: Any, user: dict[str, Any]) -> str:
    """The user's session epoch (accounts made before epochs existed get one now)."""
    epoch = user.get("session_epoch")
    if not epoch:
        epoch = uuid.uuid4().hex
        _users(ctx).update_one({"_id": user["_id"]}, {"$set": {"session_epoch": epoch}})
    return str(epoch)


class _Failures:
    """Failed logins of one email address in a fixed window (``login_failures_per_email``):
    a guess spread over many addresses, each within the IP limits, is limited per target
    too. Only failures count, so the owner's own logins never use the budget up; the same
    answer for known and unknown addresses. The key holds a digest, never the address."""

    def __init__(self, ctx: Any, address: str, limit: Limit) -> None:
        digest = hashlib.sha256(address.encode()).hexdigest()[:32]
        self._cache, self._key, self._limit = ctx.cache, f"auth:login-failures:{digest}", limit

    def check(self) -> None:
        if int(self._cache.get_json(self._key, 0)) < self._limit.count:
            return
        wait = max(1, math.ceil(self._cache.ttl(self._key) or self._limit.period))
        raise RateLimited(
            f"too many failed logins for this account; retry in {wait}s",
            headers={"Retry-After": str(wait)},
        )

    def count(self) -> None:
        self._cache.incr(self._key, ttl=self._limit.period)


def refresh(ctx: Any, *, refresh_token: str) -> dict[str, Any]:
    def current_roles(subject: str) -> list[str]:
        user = _users(ctx).find_one({"_id": subject})
        if user is None:
            raise Unauthorized("the account of this session no longer exists", reason="revoked")
        if user.get("disabled"):
            raise Unauthorized("the account of this session is disabled", reason="revoked")
        return list(user.get("roles", []))

    pair: dict[str, Any] = ctx.jwt.refresh(refresh_token, roles_for=current_roles)
    return pair


def logout(ctx: Any) -> dict[str, bool]:
    caller = ctx.caller
    ctx.jwt.revoke_session(caller.token_id, caller.session, caller.expires_at)
    return {"logged_out": True}


def me(ctx: Any) -> dict[str, Any]:
    user = _users(ctx).find_one({"_id": ctx.caller.id})
    if user is None:
        raise NotFound("the account of this session no longer exists")
    return _public(user)


def keys_create(
    ctx: Any,
    *,
    name: str,
    scopes: list[str],
    owner: str | None = None,
    expires: str | None = None,
    rate_limit: list[str] | None = None,
) -> dict[str, Any]:
    expires_in = parse_duration(expires) if expires else None
    record, raw = ctx.api_keys.create(
        name=name,
        owner=owner if owner is not None else ctx.caller.id,
        scopes=scopes,
        expires_in=expires_in,
        rate_limit=rate_limit,
    )
    return {
        **record,
        "key": raw,
        "warning": "store this key now: it is shown only once and cannot be recovered",
    }


def keys_list(ctx: Any, *, owner: str | None = None) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = ctx.api_keys.list(owner=owner)
    return keys


def keys_revoke(ctx: Any, *, id: str) -> dict[str, Any]:
    if not ctx.api_keys.revoke(id):
        raise NotFound(f"no API key {id!r}")
    return {"id": id, "revoked": True}


def users_promote(ctx: Any, *, email: str, role: str) -> dict[str, Any]:
    user = _user_by_email(ctx, email)
    roles = sorted({*user.get("roles", []), role})
    _users(ctx).update_one({"_id": user["_id"]}, {"$set": {"roles": roles}})
    return {
        **_public({**user, "roles": roles}),
        "note": "new roles apply from the next login or token refresh",
    }


def users_demote(ctx: Any, *, email: str, role: str) -> dict[str, Any]:
    user = _user_by_email(ctx, email)
    if role not in user.get("roles", []):
        raise NotFound(f"{email} does not have role {role!r}")
    roles = sorted(set(user["roles"]) - {role})
    _users(ctx).update_one({"_id": user["_id"]}, {"$set": {"roles": roles}})
    return {
        **_public({**user, "roles": roles}),
        "note": "tokens issued before keep the role until they expire or are refreshed",
    }


def users_show(ctx: Any, *, email: str) -> dict[str, Any]:
    user = _user_by_email(ctx, email)
    return {**_public(user), "disabled": bool(user.get("disabled", False))}


def _user_by_email(ctx: Any, email: str) -> dict[str, Any]:
    user: dict[str, Any] | None = _users(ctx).find_one({"email": email.strip().lower()})
    if user is None:
        raise NotFound(f"no user with email {email!r}")
    return user


def _end_sessions(ctx: Any, user: dict[str, Any]) -> None:
    """Every token issued to ``user`` stops working now (at its next call)."""
    if user.get("session_epoch"):
        ctx.jwt.revoke_epoch(user["session_epoch"])


def users_disable(ctx: Any, *, email: str) -> dict[str, Any]:
    user = _user_by_email(ctx, email)
    _users(ctx).update_one({"_id": user["_id"]}, {"$set": {"disabled": True}})
    _end_sessions(ctx, user)
    return {**_public(user), "disabled": True, "note": "every session of this user has ended"}


def users_enable(ctx: Any, *, email: str) -> dict[str, Any]:
    user = _user_by_email(ctx, email)
    # A new epoch: sessions ended by the disable stay ended.
    changes = {"disabled": False, "session_epoch": uuid.uuid4().hex}
    _users(ctx).update_one({"_id": user["_id"]}, {"$set": changes})
    return {**_public(user), "disabled": False, "note": "the user may log in again"}


def users_delete(ctx: Any, *, email: str) -> dict[str, Any]:
    user = _user_by_email(ctx, email)
    _users(ctx).delete_one({"_id": user["_id"]})
    _end_sessions(ctx, user)
    return {"id": user["_id"], "email": user["email"], "deleted": True}
