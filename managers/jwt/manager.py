"""JWTManager: access and refresh tokens on PyJWT, with rotation, reuse detection and revocation.

Every verification key is pinned to one algorithm: a token is checked only with the key its
``kid`` names and only under that key's algorithm, so ``alg: none`` and HS/RS confusion (an
HMAC made with a public key as the secret) never reach a signature check. Revocation state
(denylisted ``jti``s, revoked token families, used refresh tokens) lives in the ``redis``
manager's store, so every worker process sees it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import jwt
from flask import Response

from core.base.errors import ConfigError, Problem, Unauthorized
from core.base.store import KeyValueStore
from core.config.settings import Setting
from core.manager import Health, Manager, Route
from core.pipeline.gate import Precondition, check_absent
from core.pipeline.identity import TokenVerifier
from managers.jwt.keys import JWT_SETTINGS, PrivateKey, VerificationKey, jwk_set, load_keys

if TYPE_CHECKING:
    from core.config.config import Config
    from core.manager import App

log = logging.getLogger("switchboard.jwt")

TokenType = Literal["access", "refresh"]

JWKS_PATH = "/.well-known/jwks.json"
# Far above any token issued here; bounds the work an unauthenticated caller can cause.
MAX_TOKEN_LENGTH = 16 * 1024
VERIFIED_CACHE_SIZE = 4096  # tokens whose signature was checked, per worker
# "ep" too: a token without an epoch would escape revoke_epoch (every token issued here has
# one).
REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "ep"]

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_TOKEN_ID = re.compile(r"[0-9a-f]{32}")  # jti, fam and ep: uuid4().hex
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def _unauthorized(detail: str, reason: str = "invalid") -> Unauthorized:
    return Unauthorized(detail, headers=dict(_INVALID_TOKEN), reason=reason)


def _token_revoked() -> Unauthorized:
    return _unauthorized("token revoked", "revoked")


def _session_revoked() -> Unauthorized:
    return _unauthorized("session revoked", "revoked")


def _account_revoked() -> Unauthorized:
    return _unauthorized("the account's sessions were revoked", "revoked")


@dataclass(frozen=True)
class TokenPolicy:
    """Lifetimes and the iss/aud pair every token carries and must carry."""

    issuer: str
    audience: str
    access_ttl: int
    refresh_ttl: int
    leeway: float

    @classmethod
    def from_config(cls, config: Config) -> TokenPolicy:
        access, refresh = round(config["jwt.access_ttl"]), round(config["jwt.refresh_ttl"])
        problems = [
            Problem(f"must be at least 1 second, got {value}", field=key)
            for key, value in (("jwt.access_ttl", access), ("jwt.refresh_ttl", refresh))
            if value < 1
        ]
        if problems:
            raise ConfigError(problems)
        return cls(
            str(config["jwt.issuer"]),
            str(config["jwt.audience"]),
            access,
            refresh,
            float(config["jwt.leeway"]),
        )


class JWTManager(Manager):
    """Issues, verifies, refreshes and revokes tokens; serves the public keys as a JWKS."""

    name = "jwt"
    requires = ("config", "redis")
    provides: ClassVar[tuple[type, ...]] = (TokenVerifier,)
    facade = "jwt"
    privileged = True
    settings: ClassVar[tuple[Setting, ...]] = JWT_SETTINGS

    @classmethod
    def production_problems(cls, config: Config) -> list[Problem]:
        if config["jwt.algorithm"] == "HS256":
            return [
                Problem(
                    "HS256 shares one secret between signer and verifiers; set "
                    "jwt.algorithm to EdDSA or RS256 with jwt.private_key",
                    field="jwt.algorithm",
                )
            ]
        if not config["jwt.private_key"]:
            return [
                Problem(
                    "production needs its own signing key: set jwt.private_key "
                    "(a PEM; a secret file or a vault:// reference keeps it out of "
                    "the environment)",
                    field="jwt.private_key",
                )
            ]
        return []

    def __init__(self) -> None:
        self._store: KeyValueStore | None = None
        self._policy: TokenPolicy | None = None
        self._signer: PrivateKey | bytes = b""
        self._signing: VerificationKey | None = None
        self._keys: dict[str, VerificationKey] = {}
        self._verified: dict[str, Mapping[str, Any]] = {}  # token -> claims, oldest first
        self._verified_lock = threading.Lock()
        # Options merged once: every registered claim is required, aud must match exactly,
        # and a key below the minimum length is an error rather than a warning.
        self._codec = jwt.PyJWT(
            {
                "require": list(REQUIRED_CLAIMS),
                "strict_aud": True,
                "enforce_minimum_key_length": True,
            }
        )

    def start(self, app: App) -> None:
        config = app.config
        policy = TokenPolicy.from_config(config)
        signer, signing, keys = load_keys(config)
        self._store = self.require(KeyValueStore)
        self._policy, self._signer, self._signing, self._keys = policy, signer, signing, keys

    def routes(self) -> list[Route]:
        return [Route(JWKS_PATH, "jwks", self._jwks_view)]

    def stop(self) -> None:
        self._store = None

    def health(self) -> Health:
        if self._signing is None:
            return Health("failed", {"error": "not started"})
        return Health("ok", {"algorithm": self._signing.algorithm, "kid": self._signing.kid})

    # --- issuing ----------------------------------------------------------------------

    def issue_pair(
        self, subject: str, roles: Iterable[str], *, epoch: str | None = None
    ) -> dict[str, Any]:
        """A new login: an access and a refresh token sharing a new family id.

        ``epoch`` (an id the subject's owner keeps, such as a user record's) goes into both
        tokens: ``revoke_epoch`` then ends every session issued with it at once.
        """
        if epoch is not None and not _is_token_id(epoch):
            raise ValueError("epoch must be 32 lower-case hex digits (uuid4().hex)")
        # Without an owner's epoch the pair gets one of its own: every token carries one.
        return self._issue(subject, roles, uuid.uuid4().hex, epoch or uuid.uuid4().hex)

    def _issue(self, subject: str, roles: Iterable[str], family: str, epoch: str) -> dict[str, Any]:
        policy = self._ready_policy()
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject must be a non-empty string")
        if isinstance(roles, str):
            raise TypeError("roles must be an iterable of role names, not one string")
        role_list = list(roles)
        if not all(isinstance(role, str) for role in role_list):
            raise TypeError("every role must be a string")
        now = int(time.time())
        common = {
            "iss": policy.issuer,
            "aud": policy.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "fam": family,
            "ep": epoch,
        }
        access = self._sign(
            {
                **common,
                "exp": now + policy.access_ttl,
                "typ": "access",
                "jti": uuid.uuid4().hex,
                "roles": role_list,
            }
        )
        refresh = self._sign(
            {**common, "exp": now + policy.refresh_ttl, "typ": "refresh", "jti": uuid.uuid4().hex}
        )
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": policy.access_ttl,
        }

    def _sign(self, claims: dict[str, Any]) -> str:
        signing = self._signing
        if signing is None:
            raise self.not_started()
        token = self._codec.encode(
            claims, self._signer, algorithm=signing.algorithm, headers={"kid": signing.kid}
        )
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError(
                f"the token would exceed {MAX_TOKEN_LENGTH} characters; too many or too long roles"
            )
        return token

    # --- verifying --------------------------------------------------------------------

    def verify_access(self, token: str) -> dict[str, Any]:
        """The claims of a valid, unrevoked access token; ``Unauthorized`` saying why not."""
        claims = dict(self.decode_access(token))
        self._check_not_revoked(claims)
        return claims

    def decode_access(self, token: str) -> Mapping[str, Any]:
        """The claims of a well-signed, current access token, without the revocation check
        (the chain's gate makes it, with the call's other store work).

        A token whose signature was verified once is remembered until it expires (a bounded
        cache keyed by the token itself), so a repeat caller skips the signature check.
        """
        if isinstance(token, str):
            cached = self._verified.get(token)
            if cached is not None:
                if cached["exp"] + self._ready_policy().leeway <= time.time():
                    raise _unauthorized("token expired", "expired")
                return cached
        claims = MappingProxyType(self._decode(token, "access"))
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))  # the oldest entry
            self._verified[token] = claims
        return claims

    def revocations(self, claims: Mapping[str, Any]) -> tuple[Precondition, ...]:
        """The markers ``logout``, refresh-token reuse and ``revoke_epoch`` set: this token,
        its session, every session of its account."""
        found = (
            Precondition(f"jwt:deny:{claims['jti']}", _token_revoked, lasting=False),
            Precondition(f"jwt:fam:{claims['fam']}", _session_revoked),
        )
        return (*found, Precondition(f"jwt:ep:{claims['ep']}", _account_revoked))

    def _decode(self, token: str, expected: TokenType) -> dict[str, Any]:
        policy = self._ready_policy()
        if (
            not isinstance(token, str)
            or len(token) > MAX_TOKEN_LENGTH
            or not _COMPACT_JWS.fullmatch(token)
        ):
            raise _unauthorized("malformed token", "malformed")
        try:
            # PyJWT's own parser on the header segment alone: the signature and payload are
            # decoded once, by the verifying decode below.
            header = jwt.get_unverified_header(token.partition(".")[0] + "..")
        except jwt.PyJWTError:
            raise _unauthorized("malformed token header", "malformed") from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _unauthorized("unknown key id")
        if header.get("alg") != key.algorithm:
            raise _unauthorized("algorithm not allowed")
        try:
            claims = self._codec.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=policy.audience,
                issuer=policy.issuer,
                leeway=policy.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired", "expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("invalid signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"missing claim {exc.claim}", "malformed") from None
        except jwt.PyJWTError:
            raise _unauthorized("invalid token") from None
        if claims.get("typ") != expected:
            raise _unauthorized("wrong token type")
        if not (claims["sub"] and _is_token_id(claims["jti"]) and _is_token_id(claims.get("fam"))):
            raise _unauthorized("malformed token claims", "malformed")
        if not _is_token_id(claims["ep"]):
            raise _unauthorized("malformed token claims", "malformed")
        if expected == "access":
            roles = claims.get("roles")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise _unauthorized("malformed token claims", "malformed")
        return claims

    def _check_not_revoked(self, claims: Mapping[str, Any]) -> None:
        check_absent(self._ready_store(), self.revocations(claims))

    # --- refresh and revocation -------------------------------------------------------

    def refresh(
        self,
        refresh_token: str,
        roles: Iterable[str] | None = None,
        *,
        roles_for: Callable[[str], Iterable[str]] | None = None,
    ) -> dict[str, Any]:
        """A new pair in the same family; a refresh token works once.

        The refresh token carries no roles. Pass the subject's current ``roles``, or
        ``roles_for(subject)`` to look them up once the token is verified (it may raise, e.g.
        ``Unauthorized`` for a deleted account); neither: no roles. A second use of one
        refresh token revokes its whole family.
        """
        if roles is not None and roles_for is not None:
            raise TypeError("pass roles or roles_for, not both")
        claims = self._decode(refresh_token, "refresh")
        self._check_not_revoked(claims)
        # Looked up before the token is spent: a failing lookup (database down) must leave
        # the client a token to retry with, not turn its retry into "reuse".
        if roles_for is not None:
            roles = roles_for(claims["sub"])
        # SET NX: of two concurrent refreshes of one token exactly one marks it used.
        marked = self._ready_store().set(
            f"jwt:used:{claims['jti']}", b"1", ttl=self._ttl_until(claims["exp"]), nx=True
        )
        if not marked:
            self._revoke_family(claims["fam"])
            log.warning(
                "refresh token reuse: family %s of subject %r revoked", claims["fam"], claims["sub"]
            )
            raise _unauthorized("refresh token reuse detected; session revoked", "revoked")
        return self._issue(
            claims["sub"], roles if roles is not None else (), claims["fam"], claims["ep"]
        )

    def revoke_session(
        self, caller_token_id: str | None, session: str | None, expires_at: float | None
    ) -> None:
        """Logout: denylist the access token until it expires and revoke its family."""
        if caller_token_id:
            policy = self._ready_policy()
            until = expires_at if expires_at is not None else time.time() + policy.access_ttl
            self._ready_store().set(f"jwt:deny:{caller_token_id}", b"1", ttl=self._ttl_until(until))
        if session:
            self._revoke_family(session)

    def revoke_epoch(self, epoch: str) -> None:
        """End every session issued with ``epoch``: its access tokens at their next call,
        its refresh tokens at once. The marker outlives the longest token it can refuse."""
        policy = self._ready_policy()
        self._ready_store().set(f"jwt:ep:{epoch}", b"1", ttl=policy.refresh_ttl + policy.leeway + 1)

    def _revoke_family(self, family: str) -> None:
        # A family lives as long as its newest refresh token: at most refresh_ttl from now.
        policy = self._ready_policy()
        self._ready_store().set(
            f"jwt:fam:{family}", b"1", ttl=policy.refresh_ttl + policy.leeway + 1
        )

    def _ttl_until(self, expires_at: float) -> float:
        # A token is accepted until exp + leeway, so its record must outlive that.
        return max(1.0, expires_at - time.time() + self._ready_policy().leeway + 1)

    # --- public keys ------------------------------------------------------------------

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public verification keys as a JWK Set (empty for HS256)."""
        return jwk_set(self._keys.values())

    def _jwks_view(self) -> Response:
        return Response(
            json.dumps(self.jwks(), separators=(",", ":")),
            mimetype="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    def _ready_policy(self) -> TokenPolicy:
        if self._policy is None:
            raise self.not_started()
        return self._policy

    def _ready_store(self) -> KeyValueStore:
        if self._store is None:
            raise self.not_started()
        return self._store


def _is_token_id(value: Any) -> bool:
    return isinstance(value, str) and _TOKEN_ID.fullmatch(value) is not None
