"""JWTManager: issuing, verification, attacks on it, refresh rotation, revocation, rotation keys.

Attack tokens are forged here with PyJWT and ``hmac`` directly (no mocks): a forged token is
exactly what an attacker would send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

import app as switchboard
from core.base.errors import ConfigError, DependencyUnavailable, Unauthorized
from core.runtime.app_manager import AppManager
from core.transports.flask_app import build_app, shutdown_app
from managers.jwt.keys import _public_jwk, thumbprint
from managers.jwt.manager import MAX_TOKEN_LENGTH, JWTManager
from managers.redis.manager import RedisManager

LEEWAY = 30  # the built-in jwt.leeway

# --- keys and forging -----------------------------------------------------------------


def _private_pem(
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _public_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def forge(
    header: Mapping[str, Any], claims: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS with exactly this header, these claims and ``sign(signing_input)``."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    """An HMAC-SHA256 signer with ``secret``, which PyJWT would refuse if it looks like a key."""
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def access_claims(**changes: Any) -> dict[str, Any]:
    """Claims of a valid access token as the manager issues them, with ``changes``."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "switchboard",
        "aud": "switchboard-api",
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
        "fam": uuid.uuid4().hex,
        "ep": uuid.uuid4().hex,
        "typ": "access",
        "roles": ["member"],
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def reason(call: Callable[[], object]) -> str:
    """The detail of the ``Unauthorized`` that ``call`` raises (checking its header too)."""
    with pytest.raises(Unauthorized) as caught:
        call()
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    return caught.value.detail


# --- apps -----------------------------------------------------------------------------

MakeJWT = Callable[..., JWTManager]


def _boot(
    root: Path, env: Mapping[str, str] | None, overrides: Mapping[str, Any] | None
) -> AppManager:
    config = switchboard.load({"APP_ENV": "test", **(env or {})}, overrides, root=root)
    return AppManager(config, [RedisManager(), JWTManager()]).boot()


@pytest.fixture
def make_jwt(tmp_path: Path) -> Iterator[MakeJWT]:
    """Boot config + redis + jwt on ``tmp_path`` as the project root (dev secrets land in
    ``tmp_path/var``); returns the started JWTManager."""
    booted: list[AppManager] = []

    def make(
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        root: Path | None = None,
    ) -> JWTManager:
        app_manager = _boot(root or tmp_path, env, overrides)
        booted.append(app_manager)
        return app_manager.get(JWTManager)

    yield make
    for app_manager in reversed(booted):
        app_manager.shutdown()


@pytest.fixture
def ed_jwt(make_jwt: MakeJWT, ed_key: ed25519.Ed25519PrivateKey) -> JWTManager:
    return make_jwt({"jwt.private_key": _private_pem(ed_key)})


@pytest.fixture
def rs_jwt(make_jwt: MakeJWT, rsa_key: rsa.RSAPrivateKey) -> JWTManager:
    return make_jwt({"jwt.algorithm": "RS256", "jwt.private_key": _private_pem(rsa_key)})


def _kid(manager: JWTManager) -> str:
    return str(manager.health().details["kid"])


def _sign_ed(manager: JWTManager, key: ed25519.Ed25519PrivateKey, claims: dict[str, Any]) -> str:
    """A token signed with the real signing key: only the claims are the attacker's."""
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": _kid(manager)})


# --- issuing and verifying ------------------------------------------------------------


def test_a_pair_carries_every_claim_and_verifies(ed_jwt: JWTManager) -> None:
    pair = ed_jwt.issue_pair("alice", ["member", "admin"])
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == 900
    claims = ed_jwt.verify_access(pair["access_token"])
    assert claims["iss"] == "switchboard" and claims["aud"] == "switchboard-api"
    assert claims["sub"] == "alice" and claims["roles"] == ["member", "admin"]
    assert claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 5
    header = jwt.get_unverified_header(pair["access_token"])
    assert header == {"alg": "EdDSA", "kid": _kid(ed_jwt), "typ": "JWT"}

    refresh = jwt.decode(pair["refresh_token"], options={"verify_signature": False})
    assert refresh["typ"] == "refresh" and "roles" not in refresh
    assert refresh["exp"] - refresh["iat"] == 30 * 86400
    assert refresh["fam"] == claims["fam"] and refresh["jti"] != claims["jti"]
    assert len(claims["jti"]) == 32 and len(claims["fam"]) == 32


def test_rs256_pairs_verify_and_the_jwks_has_the_public_key(rs_jwt: JWTManager) -> None:
    pair = rs_jwt.issue_pair("bob", [])
    assert rs_jwt.verify_access(pair["access_token"])["roles"] == []
    (jwk,) = rs_jwt.jwks()["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert "d" not in jwk and jwk["kid"] == _kid(rs_jwt)
    # Interoperable: a standard client verifies our token with the published JWK.
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        pair["access_token"], public, algorithms=["RS256"], audience="switchboard-api"
    )
    assert claims["sub"] == "bob"


def test_the_default_kid_is_the_rfc7638_thumbprint(
    ed_jwt: JWTManager, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    assert _kid(ed_jwt) == thumbprint(_public_jwk(ed_key.public_key()))
    # The example of RFC 7638 section 3.1.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJE"
        "CPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2"
        "QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh"
        "6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    number = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    example = rsa.RSAPublicNumbers(65537, number).public_key()
    assert thumbprint(_public_jwk(example)) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_configured_kid_wins(make_jwt: MakeJWT, ed_key: ed25519.Ed25519PrivateKey) -> None:
    manager = make_jwt({"jwt.private_key": _private_pem(ed_key), "jwt.kid": "2025-01"})
    pair = manager.issue_pair("alice", [])
    assert jwt.get_unverified_header(pair["access_token"])["kid"] == "2025-01"
    assert manager.jwks()["keys"][0]["kid"] == "2025-01"
    assert manager.health().details == {"algorithm": "EdDSA", "kid": "2025-01"}


def test_issue_refuses_a_bare_string_of_roles_and_an_empty_subject(ed_jwt: JWTManager) -> None:
    with pytest.raises(TypeError):
        ed_jwt.issue_pair("alice", "admin")
    with pytest.raises(ValueError):
        ed_jwt.issue_pair("", [])


# --- attacks: every one is a 401 ------------------------------------------------------


def test_a_tampered_signature_is_rejected(ed_jwt: JWTManager) -> None:
    token = ed_jwt.issue_pair("alice", ["member"])["access_token"]
    head, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    assert (
        reason(lambda: ed_jwt.verify_access(f"{head}.{payload}.{flipped}")) == "invalid signature"
    )


def test_tampered_claims_under_the_original_signature_are_rejected(ed_jwt: JWTManager) -> None:
    token = ed_jwt.issue_pair("alice", ["member"])["access_token"]
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    forged = f"{head}.{_segment(claims)}.{signature}"
    assert reason(lambda: ed_jwt.verify_access(forged)) == "invalid signature"


@pytest.mark.parametrize("signature", [b"", b"anything"])
@pytest.mark.parametrize("with_kid", [True, False])
def test_alg_none_is_rejected(ed_jwt: JWTManager, signature: bytes, with_kid: bool) -> None:
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if with_kid:
        header["kid"] = _kid(ed_jwt)
    forged = forge(header, access_claims(), lambda _: signature)
    assert reason(lambda: ed_jwt.verify_access(forged)) in {
        "algorithm not allowed",
        "unknown key id",
    }


@pytest.mark.parametrize("alg", ["None", "NONE", "nOnE", "HS256", "RS256", "ES256", "EdDSA "])
def test_any_alg_but_the_keys_own_is_rejected_before_verifying(
    ed_jwt: JWTManager, alg: str
) -> None:
    forged = forge({"alg": alg, "kid": _kid(ed_jwt)}, access_claims(), lambda _: b"x" * 64)
    assert reason(lambda: ed_jwt.verify_access(forged)) == "algorithm not allowed"


def test_hs256_signed_with_the_rsa_public_key_is_rejected(
    rs_jwt: JWTManager, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The classic HS/RS confusion: the public key (published in the JWKS) as HMAC secret."""
    forged = forge(
        {"alg": "HS256", "typ": "JWT", "kid": _kid(rs_jwt)},
        access_claims(roles=["admin"]),
        hs256(_public_pem(rsa_key).encode()),
    )
    assert reason(lambda: rs_jwt.verify_access(forged)) == "algorithm not allowed"
    # Other spellings of the same public key as the secret: DER, and the published JWK.
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (der, json.dumps(rs_jwt.jwks()["keys"][0]).encode()):
        token = forge({"alg": "HS256", "kid": _kid(rs_jwt)}, access_claims(), hs256(secret))
        with pytest.raises(Unauthorized, match="algorithm not allowed"):
            rs_jwt.verify_access(token)


def test_keys_stay_pinned_when_an_hs256_app_also_accepts_an_rsa_key(
    make_jwt: MakeJWT, rsa_key: rsa.RSAPrivateKey
) -> None:
    """HS256 signing plus an RSA rotation key: HS256 is still never checked with the RSA key."""
    manager = make_jwt(
        {
            "jwt.algorithm": "HS256",
            "jwt.secret": "s" * 40,
            "jwt.verification_keys": {"old-rsa": _public_pem(rsa_key)},
        }
    )
    forged = forge(
        {"alg": "HS256", "kid": "old-rsa"}, access_claims(), hs256(_public_pem(rsa_key).encode())
    )
    assert reason(lambda: manager.verify_access(forged)) == "algorithm not allowed"
    # ...and an RS256 token is never checked with the HMAC secret's kid either.
    rs_token = jwt.encode(access_claims(), rsa_key, algorithm="RS256", headers={"kid": "hs256"})
    assert reason(lambda: manager.verify_access(rs_token)) == "algorithm not allowed"
    # The legitimate RS256 token under its own kid still verifies.
    good = jwt.encode(access_claims(), rsa_key, algorithm="RS256", headers={"kid": "old-rsa"})
    assert manager.verify_access(good)["sub"] == "alice"


def test_an_expired_token_is_rejected(
    ed_jwt: JWTManager, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    now = int(time.time())
    expired = _sign_ed(
        ed_jwt, ed_key, access_claims(iat=now - 2000, nbf=now - 2000, exp=now - LEEWAY - 5)
    )
    assert reason(lambda: ed_jwt.verify_access(expired)) == "token expired"
    # Inside the leeway it is still accepted: clocks of issuer and verifier may differ a little.
    late = _sign_ed(
        ed_jwt, ed_key, access_claims(iat=now - 1000, nbf=now - 1000, exp=now - LEEWAY + 10)
    )
    assert ed_jwt.verify_access(late)["sub"] == "alice"


def test_a_token_not_yet_valid_beyond_the_leeway_is_rejected(
    ed_jwt: JWTManager, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    now = int(time.time())
    future = _sign_ed(ed_jwt, ed_key, access_claims(nbf=now + LEEWAY + 60))
    assert reason(lambda: ed_jwt.verify_access(future)) == "token not yet valid"
    issued_later = _sign_ed(ed_jwt, ed_key, access_claims(iat=now + LEEWAY + 60))
    assert reason(lambda: ed_jwt.verify_access(issued_later)) == "token not yet valid"
    slightly_ahead = _sign_ed(ed_jwt, ed_key, access_claims(iat=now + 10, nbf=now + 10))
    assert ed_jwt.verify_access(slightly_ahead)["sub"] == "alice"


class CountingPyJWT(jwt.PyJWT):
    """PyJWT that counts its verifying decodes."""

    decodes = 0

    def decode(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.decodes += 1
        return super().decode(*args, **kwargs)


def test_each_verification_decodes_and_checks_the_signature_once(ed_jwt: JWTManager) -> None:
    counting = CountingPyJWT()
    counting.options = ed_jwt._codec.options  # the manager's own merged options
    ed_jwt._codec = counting
    pair = ed_jwt.issue_pair("alice", [])
    ed_jwt.verify_access(pair["access_token"])
    assert counting.decodes == 1
    ed_jwt.refresh(pair["refresh_token"])
    assert counting.decodes == 2
    reason(lambda: ed_jwt.verify_access(pair["refresh_token"]))
    assert counting.decodes == 3
    # Rejected on the header alone: no signature check is spent on it.
    reason(lambda: ed_jwt.verify_access(forge({"alg": "none"}, access_claims(), lambda _: b"")))
    assert counting.decodes == 3


def test_a_refresh_token_used_as_access_token_is_rejected(ed_jwt: JWTManager) -> None:
    pair = ed_jwt.issue_pair("alice", ["member"])
    assert reason(lambda: ed_jwt.verify_access(pair["refresh_token"])) == "wrong token type"
    assert reason(lambda: ed_jwt.refresh(pair["access_token"])) == "wrong token type"


@pytest.mark.parametrize("typ", [None, "", "Access", "refresh", "id", 1])
def test_a_token_without_the_access_typ_is_rejected(
    ed_jwt: JWTManager, ed_key: ed25519.Ed25519PrivateKey, typ: object
) -> None:
    token = _sign_ed(ed_jwt, ed_key, access_claims(typ=typ))
    assert reason(lambda: ed_jwt.verify_access(token)) == "wrong token type"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"aud": "another-api"}, "wrong audience"),
        ({"aud": ["switchboard-api", "another-api"]}, "wrong audience"),  # strict: one audience
        ({"aud": None}, "missing claim aud"),
        ({"iss": "someone-else"}, "wrong issuer"),
        ({"iss": None}, "missing claim iss"),
        ({"exp": None}, "missing claim exp"),
        ({"nbf": None}, "missing claim nbf"),
        ({"jti": None}, "missing claim jti"),
        ({"sub": None}, "missing claim sub"),
        ({"fam": None}, "malformed token claims"),
        # Without an epoch a token would escape revoke_epoch (account-wide revocation).
        ({"ep": None}, "missing claim ep"),
        ({"ep": "not-an-epoch"}, "malformed token claims"),
        ({"jti": "../../other-key"}, "malformed token claims"),
        ({"roles": "admin"}, "malformed token claims"),
        ({"roles": [1]}, "malformed token claims"),
        ({"sub": 7}, "invalid token"),
        ({"exp": "tomorrow"}, "invalid token"),
    ],
)
def test_claims_the_manager_would_never_issue_are_rejected(
    ed_jwt: JWTManager, ed_key: ed25519.Ed25519PrivateKey, changes: dict[str, Any], expected: str
) -> None:
    token = _sign_ed(ed_jwt, ed_key, access_claims(**changes))
    assert reason(lambda: ed_jwt.verify_access(token)) == expected


def test_wrong_aud_and_wrong_iss_are_rejected(
    make_jwt: MakeJWT, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    """A token a sibling service (same key, other aud/iss) issued is no good here."""
    pem = _private_pem(ed_key)
    sibling = make_jwt({"jwt.private_key": pem, "jwt.audience": "billing-api"})
    other_issuer = make_jwt({"jwt.private_key": pem, "jwt.issuer": "elsewhere"})
    here = make_jwt({"jwt.private_key": pem})
    assert (
        reason(lambda: here.verify_access(sibling.issue_pair("a", [])["access_token"]))
        == "wrong audience"
    )
    assert (
        reason(lambda: here.verify_access(other_issuer.issue_pair("a", [])["access_token"]))
        == "wrong issuer"
    )


def test_unknown_or_missing_kid_is_rejected(
    ed_jwt: JWTManager, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    unknown = jwt.encode(access_claims(), ed_key, algorithm="EdDSA", headers={"kid": "nope"})
    assert reason(lambda: ed_jwt.verify_access(unknown)) == "unknown key id"
    missing = jwt.encode(access_claims(), ed_key, algorithm="EdDSA")
    assert reason(lambda: ed_jwt.verify_access(missing)) == "unknown key id"
    not_a_string = forge({"alg": "EdDSA", "kid": 5}, access_claims(), lambda _: b"x")
    assert reason(lambda: ed_jwt.verify_access(not_a_string)) == "malformed token header"


def test_a_token_of_another_key_under_our_kid_is_rejected(ed_jwt: JWTManager) -> None:
    stranger = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode(access_claims(), stranger, algorithm="EdDSA", headers={"kid": _kid(ed_jwt)})
    assert reason(lambda: ed_jwt.verify_access(token)) == "invalid signature"


GARBAGE = [
    "",
    "a",
    "a.b",
    "a.b.c",
    "..",
    "a.b.c.d",
    "Bearer x.y.z",
    " " + "x" * 20,
    "é.é.é",
    "\ud800.\udfff.\x00",
    "\x00" * 100,
    "eyJhbGciOiJFZERTQSJ9",
    _segment([]) + "." + _segment({}) + ".",
    _segment("str") + "." + _segment({}) + ".",
    "e30.e30.",  # {} . {} . empty
    "eyJhbGciOiJFZERTQSIsImtpZCI6MX0.e30.e30",
    _segment({"alg": "EdDSA", "crit": ["exp"], "exp": 1}) + ".e30.",
    _segment({"alg": "EdDSA", "b64": False}) + "..",
    "[" * 5000 + "." + "]" * 5000 + ".x",
    _b64(b"[" * 3000) + "." + _b64(b"{" * 3000) + ".AAAA",
    "x" * (MAX_TOKEN_LENGTH + 1),
    "a." * 1_000_000 + "a",
]


@pytest.mark.parametrize("token", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_is_a_401_never_a_500(ed_jwt: JWTManager, token: str) -> None:
    started = time.perf_counter()
    reason(lambda: ed_jwt.verify_access(token))
    reason(lambda: ed_jwt.refresh(token))
    assert time.perf_counter() - started < 1.0


# --- properties -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["EdDSA", "RS256", "HS256"])
def shared_jwt(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JWTManager]:
    """One manager per algorithm for the property tests (hypothesis runs a body many times)."""
    root = tmp_path_factory.mktemp("jwt-props")
    app_manager = _boot(root, None, {"jwt.algorithm": request.param})
    yield app_manager.get(JWTManager)
    app_manager.shutdown()


@settings(max_examples=150)
@given(
    subject=st.text(min_size=1, max_size=200),
    roles=st.lists(st.text(max_size=40), max_size=20),
)
def test_round_trip_keeps_any_subject_and_roles(
    shared_jwt: JWTManager, subject: str, roles: list[str]
) -> None:
    pair = shared_jwt.issue_pair(subject, roles)
    claims = shared_jwt.verify_access(pair["access_token"])
    assert claims["sub"] == subject
    assert claims["roles"] == roles


@pytest.fixture(scope="module")
def shared_token(shared_jwt: JWTManager) -> str:
    return str(shared_jwt.issue_pair("alice", ["member", "admin"])["access_token"])


@settings(max_examples=300)
@given(data=st.data())
def test_any_single_byte_change_is_rejected(
    shared_jwt: JWTManager, shared_token: str, data: st.DataObject
) -> None:
    raw = shared_token.encode()
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
    byte = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != raw[position]))
    changed = raw[:position] + bytes([byte]) + raw[position + 1 :]
    # Bytes >= 0x80 become lone surrogates: non-UTF-8 input reaches verify_access too.
    reason(lambda: shared_jwt.verify_access(changed.decode("utf-8", "surrogateescape")))


@settings(max_examples=200)
@given(
    token=st.text(max_size=600)
    | st.from_regex(
        r"[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,300}\.[A-Za-z0-9_-]{0,100}", fullmatch=True
    )
)
def test_arbitrary_text_is_rejected_cleanly(shared_jwt: JWTManager, token: str) -> None:
    reason(lambda: shared_jwt.verify_access(token))


# --- refresh rotation and reuse detection ---------------------------------------------


def test_refresh_rotates_and_keeps_the_family(ed_jwt: JWTManager) -> None:
    first = ed_jwt.issue_pair("alice", ["member"])
    second = ed_jwt.refresh(first["refresh_token"], ["member", "editor"])
    assert second["refresh_token"] != first["refresh_token"]
    old, new = (ed_jwt.verify_access(p["access_token"]) for p in (first, second))
    assert new["fam"] == old["fam"] and new["sub"] == "alice"
    assert new["roles"] == ["member", "editor"]
    third = ed_jwt.refresh(second["refresh_token"])  # no roles given: none issued
    assert ed_jwt.verify_access(third["access_token"])["roles"] == []


def test_refresh_looks_up_current_roles_for_the_verified_subject(ed_jwt: JWTManager) -> None:
    seen: list[str] = []

    def roles_for(subject: str) -> list[str]:
        seen.append(subject)
        return ["member", "moderator"]

    pair = ed_jwt.refresh(ed_jwt.issue_pair("alice", [])["refresh_token"], roles_for=roles_for)
    assert seen == ["alice"]
    assert ed_jwt.verify_access(pair["access_token"])["roles"] == ["member", "moderator"]
    with pytest.raises(TypeError):
        ed_jwt.refresh(pair["refresh_token"], ["x"], roles_for=roles_for)


def test_a_failing_role_lookup_does_not_spend_the_refresh_token(ed_jwt: JWTManager) -> None:
    token = ed_jwt.issue_pair("alice", [])["refresh_token"]

    def unavailable(subject: str) -> list[str]:
        raise DependencyUnavailable("the database is down")

    with pytest.raises(DependencyUnavailable):
        ed_jwt.refresh(token, roles_for=unavailable)
    # The retry is not mistaken for reuse.
    assert ed_jwt.refresh(token, roles_for=lambda _: ["member"])["token_type"] == "Bearer"


def test_a_reused_refresh_token_revokes_the_whole_family(ed_jwt: JWTManager) -> None:
    first = ed_jwt.issue_pair("alice", ["member"])
    other_login = ed_jwt.issue_pair("alice", ["member"])
    second = ed_jwt.refresh(first["refresh_token"])
    # An attacker (or a confused client) presents the already used refresh token.
    assert reason(lambda: ed_jwt.refresh(first["refresh_token"])) == (
        "refresh token reuse detected; session revoked"
    )
    # Every token of that family is dead now, including the legitimately rotated ones.
    assert reason(lambda: ed_jwt.refresh(second["refresh_token"])) == "session revoked"
    assert reason(lambda: ed_jwt.verify_access(second["access_token"])) == "session revoked"
    assert reason(lambda: ed_jwt.verify_access(first["access_token"])) == "session revoked"
    # Another login of the same user is a different family and is untouched.
    assert ed_jwt.verify_access(other_login["access_token"])["sub"] == "alice"
    ed_jwt.refresh(other_login["refresh_token"])


def _race(manager: JWTManager, token: str, workers: int = 8) -> list[dict[str, Any] | str]:
    barrier = threading.Barrier(workers)

    def attempt() -> dict[str, Any] | str:
        barrier.wait()
        try:
            return manager.refresh(token)
        except Unauthorized as exc:
            return exc.detail

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: attempt(), range(workers)))


def test_concurrent_refreshes_of_one_token_cannot_both_succeed(ed_jwt: JWTManager) -> None:
    token = ed_jwt.issue_pair("alice", [])["refresh_token"]
    results = _race(ed_jwt, token)
    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1
    # The first loser detects the reuse and revokes the family; later ones find it revoked.
    losers = [r for r in results if isinstance(r, str)]
    assert "refresh token reuse detected; session revoked" in losers
    assert set(losers) <= {"refresh token reuse detected; session revoked", "session revoked"}
    # The race was reuse: the winner's new tokens are revoked with the family.
    assert reason(lambda: ed_jwt.verify_access(winners[0]["access_token"])) == "session revoked"


# --- revocation -----------------------------------------------------------------------


def test_logout_revokes_the_access_token_and_the_family(ed_jwt: JWTManager) -> None:
    pair = ed_jwt.issue_pair("alice", ["member"])
    other_login = ed_jwt.issue_pair("alice", ["member"])
    claims = ed_jwt.verify_access(pair["access_token"])
    ed_jwt.revoke_session(claims["jti"], claims["fam"], claims["exp"])
    assert reason(lambda: ed_jwt.verify_access(pair["access_token"])) == "token revoked"
    assert reason(lambda: ed_jwt.refresh(pair["refresh_token"])) == "session revoked"
    assert ed_jwt.verify_access(other_login["access_token"])["sub"] == "alice"


def test_revocation_records_live_as_long_as_the_tokens(make_jwt: MakeJWT) -> None:
    manager = make_jwt()
    pair = manager.issue_pair("alice", [])
    claims = manager.verify_access(pair["access_token"])
    manager.revoke_session(claims["jti"], claims["fam"], claims["exp"])
    store = manager._ready_store()
    deny_ttl = store.ttl(f"jwt:deny:{claims['jti']}")
    fam_ttl = store.ttl(f"jwt:fam:{claims['fam']}")
    assert deny_ttl is not None and 900 + LEEWAY - 5 < deny_ttl <= 900 + LEEWAY + 1
    assert fam_ttl is not None and 30 * 86400 + LEEWAY - 5 < fam_ttl <= 30 * 86400 + LEEWAY + 1
    manager.refresh(manager.issue_pair("bob", [])["refresh_token"])
    used = list(store.scan("jwt:used:"))
    assert len(used) == 1
    used_ttl = store.ttl(used[0])
    assert used_ttl is not None and used_ttl > 30 * 86400


def test_revoke_session_with_only_a_token_id_or_nothing(ed_jwt: JWTManager) -> None:
    pair = ed_jwt.issue_pair("alice", [])
    claims = ed_jwt.verify_access(pair["access_token"])
    ed_jwt.revoke_session(None, None, None)
    ed_jwt.verify_access(pair["access_token"])
    ed_jwt.revoke_session(claims["jti"], None, None)
    assert reason(lambda: ed_jwt.verify_access(pair["access_token"])) == "token revoked"
    ed_jwt.refresh(pair["refresh_token"])  # the family itself was not revoked


# --- two workers on one Redis ---------------------------------------------------------


@pytest.fixture
def redis_env(redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "SB_REDIS__PREFIX": redis_prefix}


def test_revocation_and_reuse_are_seen_by_every_worker(
    make_jwt: MakeJWT, tmp_path: Path, redis_env: dict[str, str], ed_key: ed25519.Ed25519PrivateKey
) -> None:
    overrides = {"jwt.private_key": _private_pem(ed_key)}
    worker_a = make_jwt(overrides, redis_env, tmp_path / "a")
    worker_b = make_jwt(overrides, redis_env, tmp_path / "b")

    pair = worker_a.issue_pair("alice", ["member"])
    claims = worker_b.verify_access(pair["access_token"])
    worker_a.revoke_session(claims["jti"], claims["fam"], claims["exp"])
    assert reason(lambda: worker_b.verify_access(pair["access_token"])) == "token revoked"
    assert reason(lambda: worker_b.refresh(pair["refresh_token"])) == "session revoked"

    login = worker_b.issue_pair("alice", [])
    rotated = worker_a.refresh(login["refresh_token"])
    assert reason(lambda: worker_b.refresh(login["refresh_token"])).startswith(
        "refresh token reuse"
    )
    assert reason(lambda: worker_a.verify_access(rotated["access_token"])) == "session revoked"


def test_concurrent_refreshes_on_two_workers_cannot_both_succeed(
    make_jwt: MakeJWT, tmp_path: Path, redis_env: dict[str, str], ed_key: ed25519.Ed25519PrivateKey
) -> None:
    overrides = {"jwt.private_key": _private_pem(ed_key)}
    workers = [make_jwt(overrides, redis_env, tmp_path / name) for name in ("a", "b")]
    token = workers[0].issue_pair("alice", [])["refresh_token"]
    barrier = threading.Barrier(8)

    def attempt(index: int) -> bool:
        barrier.wait()
        try:
            workers[index % 2].refresh(token)
        except Unauthorized:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(attempt, range(8))) == 1


# --- key rotation ---------------------------------------------------------------------


def test_rotation_keys_verify_old_tokens_and_are_published(
    make_jwt: MakeJWT, tmp_path: Path
) -> None:
    old_key = ed25519.Ed25519PrivateKey.generate()
    old = make_jwt(
        {"jwt.private_key": _private_pem(old_key), "jwt.kid": "k1"}, root=tmp_path / "old"
    )
    old_token = old.issue_pair("alice", [])["access_token"]

    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = make_jwt(
        {
            "jwt.algorithm": "RS256",
            "jwt.private_key": _private_pem(new_key),
            "jwt.kid": "k2",
            "jwt.verification_keys": {"k1": _public_pem(old_key)},
        },
        root=tmp_path / "new",
    )
    assert new.verify_access(old_token)["sub"] == "alice"
    new_token = new.issue_pair("bob", [])["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert reason(lambda: old.verify_access(new_token)) == "unknown key id"
    published = {k["kid"]: (k["alg"], k["kty"]) for k in new.jwks()["keys"]}
    assert published == {"k2": ("RS256", "RSA"), "k1": ("EdDSA", "OKP")}
    # The rotation key only verifies: a token it did not sign under its kid fails.
    stranger = jwt.encode(
        access_claims(),
        ed25519.Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": "k1"},
    )
    assert reason(lambda: new.verify_access(stranger)) == "invalid signature"


# --- configuration --------------------------------------------------------------------


def test_development_keys_are_generated_once_and_reused(make_jwt: MakeJWT, tmp_path: Path) -> None:
    first = make_jwt()
    path = tmp_path / "var" / "dev-secrets" / "jwt_eddsa.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = make_jwt()
    assert _kid(first) == _kid(second)
    assert second.verify_access(first.issue_pair("alice", [])["access_token"])["sub"] == "alice"


def test_hs256_outside_production(make_jwt: MakeJWT, tmp_path: Path) -> None:
    manager = make_jwt({"jwt.algorithm": "HS256"})
    secret = (tmp_path / "var" / "dev-secrets" / "jwt_hs256.secret").read_bytes()
    assert len(secret) >= 32
    pair = manager.issue_pair("alice", ["member"])
    assert manager.verify_access(pair["access_token"])["roles"] == ["member"]
    assert jwt.decode(
        pair["access_token"], secret, algorithms=["HS256"], audience="switchboard-api"
    )
    assert manager.jwks() == {"keys": []}  # a shared secret is never published
    assert manager.health().details == {"algorithm": "HS256", "kid": "hs256"}


def test_rs256_development_key_is_generated(make_jwt: MakeJWT, tmp_path: Path) -> None:
    manager = make_jwt({"jwt.algorithm": "RS256"})
    pem = (tmp_path / "var" / "dev-secrets" / "jwt_rs256.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048
    assert manager.verify_access(manager.issue_pair("a", [])["access_token"])["sub"] == "a"


def _boot_error(
    tmp_path: Path, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> str:
    with pytest.raises(ConfigError) as caught:
        _boot(tmp_path, env, overrides)
    return str(caught.value)


def test_production_refuses_hs256(tmp_path: Path) -> None:
    message = _boot_error(
        tmp_path, {"jwt.algorithm": "HS256", "jwt.secret": "s" * 64}, {"APP_ENV": "production"}
    )
    assert "jwt.algorithm" in message and "EdDSA" in message
    assert not (tmp_path / "var").exists()


def test_production_refuses_a_missing_key_and_never_generates_one(tmp_path: Path) -> None:
    message = _boot_error(tmp_path, {}, {"APP_ENV": "production"})
    assert "jwt.private_key" in message and "production" in message
    assert not (tmp_path / "var").exists()


def test_production_starts_with_a_configured_key(
    make_jwt: MakeJWT, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    # Through the environment, as a secret manager would inject it, newlines escaped.
    escaped = _private_pem(ed_key).replace("\n", "\\n")
    manager = make_jwt(
        env={
            "APP_ENV": "production",
            "SB_JWT__PRIVATE_KEY": escaped,
            "SB_API_KEYS__PEPPER": "p" * 40,
            "SB_EXECUTIONS__SECRET_KEY": "e" * 40,
        }
    )  # production needs one too
    assert manager.health().status == "ok"
    assert manager.verify_access(manager.issue_pair("a", [])["access_token"])["sub"] == "a"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"jwt.private_key": "not a pem"}, "jwt.private_key"),
        ({"jwt.algorithm": "RS256", "jwt.private_key": "ED"}, "needs an RSA key"),
        ({"jwt.private_key": "RSA"}, "needs an Ed25519 key"),
        ({"jwt.algorithm": "RS256", "jwt.private_key": "RSA1024"}, "1024 bits"),
        ({"jwt.private_key": "EC"}, "needs an Ed25519 key"),
        ({"jwt.algorithm": "HS256", "jwt.secret": "short"}, "at least 32 bytes"),
        ({"jwt.verification_keys": {"old": "garbage"}}, "jwt.verification_keys.old"),
        ({"jwt.verification_keys": {"old": "EC_PUBLIC"}}, "only Ed25519 and RSA"),
        ({"jwt.kid": "same", "jwt.verification_keys": {"same": "ED_PUBLIC"}}, "signing key's kid"),
        ({"jwt.access_ttl": 0}, "jwt.access_ttl"),
    ],
)
def test_bad_key_configuration_fails_the_boot_naming_the_setting(
    tmp_path: Path,
    ed_key: ed25519.Ed25519PrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    overrides: dict[str, Any],
    expected: str,
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pems = {
        "ED": _private_pem(ed_key),
        "RSA": _private_pem(rsa_key),
        "RSA1024": _private_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "EC": _private_pem(ec_key),
        "ED_PUBLIC": _public_pem(ed_key),
        "EC_PUBLIC": ec_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    }

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return pems.get(value, value) if isinstance(value, str) else value

    assert expected in _boot_error(tmp_path, {k: resolve(v) for k, v in overrides.items()})


# --- the JWKS route -------------------------------------------------------------------


def test_the_jwt_manager_contributes_the_jwks_route(
    tmp_path: Path, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    config = switchboard.load(
        {"APP_ENV": "test"}, {"jwt.private_key": _private_pem(ed_key)}, root=tmp_path
    )
    app_manager = AppManager(config, [RedisManager(), JWTManager()])
    app_manager.boot()
    try:
        (route,) = app_manager.routes()
        assert route.path == "/.well-known/jwks.json" and route.methods == ("GET",)
        flask_app = Flask("jwks-test")
        flask_app.add_url_rule(route.path, route.endpoint, route.view)
        response = flask_app.test_client().get(route.path)
        assert response.status_code == 200 and response.mimetype == "application/json"
        assert response.get_json() == app_manager.get(JWTManager).jwks()
        assert "public" in response.headers["Cache-Control"]
    finally:
        app_manager.shutdown()


def test_jwks_is_served_by_the_full_app_and_verifies_its_tokens(
    tmp_path: Path, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    # Rooted in tmp_path: the runtime's managers without the project's own modules.
    config = switchboard.load(
        {"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{tmp_path}/a.db"},
        {"jwt.private_key": _private_pem(ed_key)},
        root=tmp_path,
    )
    managers = switchboard.default_managers()
    if not any(m.name == "jwt" for m in managers):
        managers.append(JWTManager())
    flask_app = build_app(config, managers)
    try:
        client = flask_app.test_client()
        response = client.get("/.well-known/jwks.json")
        assert response.status_code == 200
        assert "X-Request-ID" in response.headers
        body = response.get_json()
        manager: JWTManager = flask_app.extensions["switchboard"].app_manager.get(JWTManager)
        assert body == manager.jwks()
        # A client that knows only the JWKS verifies our tokens.
        token = manager.issue_pair("alice", ["member"])["access_token"]
        key = jwt.PyJWKSet.from_dict(body)[jwt.get_unverified_header(token)["kid"]]
        assert jwt.decode(token, key, audience="switchboard-api")["sub"] == "alice"
        assert client.post("/.well-known/jwks.json").status_code == 405
        ready = client.get("/health/ready").get_json()
        assert ready["checks"]["jwt"] == {
            "status": "ok",
            "algorithm": "EdDSA",
            "kid": _kid(manager),
        }
    finally:
        shutdown_app(flask_app)
