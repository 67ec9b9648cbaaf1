"""Idempotent replay: the first result for an ``Idempotency-Key`` is stored and replayed.

For an action declared ``idempotent: true``, a call with a key first *claims* it in the
shared store (SET NX in the gate's one round trip, so exactly one of several concurrent
calls wins). The winner runs
and stores its status and body for ``idempotency.ttl``; a retry with the same key, caller
and params gets exactly that response back with ``Idempotent-Replayed: true``. A retry
while the first still runs gets 409 with Retry-After; the same key with other params 422.
Server errors (5xx) are not stored: the claim is released so the client can try again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.base.errors import (
    ActionError,
    IdempotencyInProgress,
    IdempotencyMismatch,
    MalformedRequest,
)
from core.base.store import KeyValueStore
from core.contracts.calls import CallResult
from core.pipeline.call import Call
from core.pipeline.chain import Next
from core.pipeline.gate import ClaimRequest

log = logging.getLogger("switchboard.pipeline")

KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as the IETF draft's examples
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


@dataclass(frozen=True)
class Claim:
    """The right to run a call for one key; ``finish`` or ``release`` it."""

    record: str
    fingerprint: str


@dataclass(frozen=True)
class StoredResponse:
    """A response exactly as the first call answered it."""

    status: int
    body: str
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)  # the ones that say where


# Answer headers a replay repeats: where the result is (an execution's URL), not the
# limits of the first call (a replay has its own).
KEPT_HEADERS = ("Location", "Preference-Applied")


def fingerprint(params: Any) -> str:
    """A hash of the validated params, independent of key order and of how a number is
    spelled (JSON has one number type: ``3`` and ``3.0`` are the same params)."""
    canonical = json.dumps(_numbers(params), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers(item) for item in value]
    return value


class Idempotency:
    """Claims, stores and replays results in the shared key-value store."""

    def __init__(self, store: KeyValueStore, ttl: float) -> None:
        self._store = store
        self._ttl = ttl

    def claim(self, action: str, caller: str, key: str, params: Any) -> tuple[Claim, str]:
        """The claim of ``key`` for this call and the record that marks it running (what
        the gate sets if the key is free); ``MalformedRequest`` for a bad key."""
        if not KEY.match(key):
            raise MalformedRequest(f"{HEADER} must be 1-255 visible ASCII characters")
        digest = hashlib.sha256(f"{action}\n{caller}\n{key}".encode()).hexdigest()
        mine = fingerprint(params)
        return Claim(f"idem:{digest}", mine), json.dumps({"state": "running", "params": mine})

    @staticmethod
    def held(claim: Claim, record: bytes, action: str, key: str) -> StoredResponse:
        """What the record of an already-held key means for this call: the stored response
        to replay, or 409 (still running) / 422 (the key was used with other params)."""
        stored = json.loads(record)
        if stored["params"] != claim.fingerprint:
            raise IdempotencyMismatch(
                f"{HEADER} {key!r} was used with different params for {action}"
            )
        if stored["state"] == "running":
            raise IdempotencyInProgress(
                f"a request with {HEADER} {key!r} is still running; retry shortly",
                headers={"Retry-After": "1"},
            )
        return StoredResponse(
            stored["status"], stored["body"], stored["content_type"], stored.get("headers", {})
        )

    def finish(
        self,
        claim: Claim,
        status: int,
        body: str,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Store the response for replay (server errors release the claim instead)."""
        if status >= 500:
            self.release(claim)
            return
        self._store.set(
            claim.record,
            json.dumps(
                {
                    "state": "done",
                    "params": claim.fingerprint,
                    "status": status,
                    "body": body,
                    "content_type": content_type,
                    "headers": dict(headers or {}),
                }
            ),
            ttl=self._ttl,
        )

    def finish_error(self, claim: Claim, error: ActionError, request_id: str) -> None:
        self.finish(
            claim,
            error.status,
            error.problem_json(request_id),
            "application/problem+json",
        )

    def release(self, claim: Claim) -> None:
        self._store.delete(claim.record)


class IdempotencyStep:
    """Declares the claim of an ``Idempotency-Key`` for the gate, and settles it: what the
    call answers is stored for replay unless it is a 5xx (worth retrying) or a 422 (the
    retry will send other params).

    The claim is made on the validated params, so ``3`` and ``3.0`` are one request.
    """

    def __init__(self, idempotency: Idempotency, claim_ttl: float = 300.0) -> None:
        self.idempotency = idempotency
        self.claim_ttl = claim_ttl  # a claim whose worker died frees itself after this

    def __call__(self, call: Call, next: Next) -> CallResult:
        key = call.request.idempotency_key
        if key is None or not call.spec.idempotent:
            return next(call)
        caller = call.caller
        who = caller.key if caller.id else f"ip:{call.request.client_ip}"
        action = call.spec.name
        claim, running = self.idempotency.claim(action, who, key, call.params)

        def taken(record: bytes) -> CallResult:
            stored = self.idempotency.held(claim, record, action, key)
            headers = {**stored.headers, REPLAYED: "true"}
            return CallResult(
                stored.body, stored.status, stored.content_type, headers, replayed=True
            )

        call.gate.claim = ClaimRequest(claim.record, running, self.claim_ttl, taken)
        try:
            result = next(call)
        except ActionError as error:
            if not call.claimed:
                raise
            if error.status >= 500 or error.status == 422:
                self._settle(call, self.idempotency.release, claim)
            else:
                request_id = call.request.request_id
                self._settle(call, self.idempotency.finish_error, claim, error, request_id)
            raise
        except BaseException:
            if call.claimed:
                self._settle(call, self.idempotency.release, claim)
            raise
        if call.claimed:
            status, body, content_type = result.status, result.body, result.content_type
            kept = {k: v for k, v in result.headers.items() if k in KEPT_HEADERS}
            self._settle(call, self.idempotency.finish, claim, status, body, content_type, kept)
        return result

    @staticmethod
    def _settle(call: Call, settle: Callable[..., None], *args: Any) -> None:
        """The call's own outcome stands even if the store fails: the claim then expires."""
        try:
            settle(*args)
        except ActionError as error:  # the store is down: expected, and said once per call
            log.warning(
                "could not settle the idempotency record of %s (%s): a retry runs again "
                "after idempotency.claim_ttl",
                call.request.action,
                error.detail,
            )
