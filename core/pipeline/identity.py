"""The identify step: who is calling, from ``Authorization: Bearer`` or ``X-API-Key``.

Credentials are checked here, once, in process, before the action is looked up: a bad
signature, an expired token or a wrong key secret ends the call with 401
``unauthenticated`` (an anonymous call to a public action still works, but a *wrong* token
never silently downgrades to anonymous). Whether the credential was revoked since is a
marker in the shared store: identify hands those markers to the gate, which checks them in
the call's one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from core.base.errors import (
    Unauthorized,
)
from core.base.logging import call_var
from core.contracts.calls import CallRequest, CallResult
from core.contracts.context import ANONYMOUS, Caller
from core.contracts.limits import rate_limit_headers
from core.pipeline.call import Call
from core.pipeline.chain import Next
from core.pipeline.gate import Gate, GateRequest, LimitRequest, Precondition, limit_refusal

if TYPE_CHECKING:
    from collections.abc import Sequence


API_KEY_HEADER = "X-API-Key"
AUTH_FAILURE = "auth_failure"  # the limiter's kind of failed identifications (per IP)

Identify = Callable[[CallRequest], tuple[Caller, Sequence[Precondition]]]


class TokenVerifier(Protocol):
    """The jwt manager: an access token's claims (signature and claims checked here, in
    process), and the revocation markers the gate checks in the shared store."""

    def decode_access(self, token: str) -> Mapping[str, Any]:
        """The claims of a well-signed, current access token; ``Unauthorized`` saying why not."""
        ...

    def revocations(self, claims: Mapping[str, Any]) -> Sequence[Precondition]: ...


@dataclass(frozen=True)
class KeyIdentity:
    """What a verified API key stands for."""

    id: str
    owner: str | None
    scopes: Sequence[str]
    rate_limit: Sequence[str] = ()  # the key's own limits, replacing the global api_key ones


class KeyVerifier(Protocol):
    """The api_keys manager: the key's identity (checked in process, from a short-lived
    cache of key records), and the revocation marker the gate checks."""

    def authenticate(self, raw: str) -> KeyIdentity:
        """The identity of a valid key; ``Unauthorized`` saying why not."""
        ...

    def revocations(self, identity: KeyIdentity) -> Sequence[Precondition]: ...

    def recheck(self, key_id: str) -> None:
        """``Unauthorized`` unless the key is still valid, read from the database (not the
        short-lived markers): for work done later in its name, a background job."""
        ...


class FailedIdentification:
    """Each failed identification takes one from its client IP's ``auth_failure`` limits
    (``ratelimit.auth_failures``), in one round trip of the gate that also checks the IP's
    ban: a banned IP gets 403 ``banned`` whatever it sent, and past the limit the answer is
    429, which counts as a strike toward a ban like any other. Credentials cannot be
    guessed faster than the limit from one address."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(self, request: CallRequest, declared: GateRequest | None = None) -> None:
        """Count one failure of ``request``'s IP; ``declared`` (the call's gate request)
        is left holding what was asked, so the call's metrics name the limits that
        applied."""
        limits = LimitRequest(identity=f"ip:{request.client_ip}", kind=AUTH_FAILURE)
        if declared is not None:
            declared.limits, declared.absent, declared.claim = limits, [], None
        outcome = self.gate.pass_gate(GateRequest(limits=limits))
        decision = outcome.decision
        if decision is not None and not decision.allowed:
            error = limit_refusal(decision, "too many failed identifications from this address")
            error.headers = {**rate_limit_headers(decision.states), **error.headers}
            raise error


def credential_identifier(
    tokens: TokenVerifier | None = None, keys: KeyVerifier | None = None
) -> Identify:
    """An identify step that accepts whichever credential kinds this app runs."""

    def identify(request: CallRequest) -> tuple[Caller, Sequence[Precondition]]:
        if request.caller is not None:  # trusted transports (the CLI) preset the caller
            return request.caller, ()
        authorization = request.headers.get("Authorization")
        api_key = request.headers.get(API_KEY_HEADER)
        if authorization is not None and api_key is not None:
            raise Unauthorized(
                "send either Authorization or X-API-Key, not both", reason="malformed"
            )
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or " " in token:
                raise Unauthorized(
                    "malformed Authorization header; use 'Bearer <token>'",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
                    reason="malformed",
                )
            if tokens is None:
                raise Unauthorized("this service does not accept bearer tokens")
            claims = tokens.decode_access(token)
            caller = Caller(
                "user",
                id=str(claims["sub"]),
                roles=frozenset(claims.get("roles", ())),
                token_id=claims.get("jti"),
                session=claims.get("fam"),
                expires_at=claims.get("exp"),
            )
            return caller, tokens.revocations(claims)
        if api_key is not None:
            if keys is None:
                raise Unauthorized("this service does not accept API keys")
            identity = keys.authenticate(api_key.strip())
            caller = Caller(
                "api_key",
                id=identity.id,
                scopes=frozenset(identity.scopes),
                rate_limit=tuple(identity.rate_limit),
            )
            return caller, keys.revocations(identity)
        return ANONYMOUS, ()

    return identify


class IdentifyStep:
    """Who is calling, from the credentials the transport passed on; whether they were
    revoked is left to the gate (one round trip for everything the call needs).

    A failed identification — a credential that is malformed, invalid, expired or revoked,
    or none where the action needs one — is handed to ``failed`` (``FailedIdentification``)
    before its 401 goes out, which may answer 403 ``banned`` or 429 instead. A 401 raised
    after the gate admitted the call (a handler's) is not one.
    """

    def __init__(self, identify: Identify, failed: FailedIdentification | None = None) -> None:
        self.identify = identify
        self.failed = failed

    def __call__(self, call: Call, next: Next) -> CallResult:
        try:
            call.caller, revocations = self.identify(call.request)
        except Unauthorized:
            if self.failed is not None:
                self.failed(call.request, call.gate)
            raise
        call_var.set((call.request.action, call.caller.key))
        call.gate.absent.extend(revocations)
        if self.failed is None:
            return next(call)
        try:
            return next(call)
        except Unauthorized:
            if not call.admitted:
                self.failed(call.request, call.gate)
            raise
