"""JWT settings and keys: the signing key, the table of keys tokens may be verified with, and
their JWKs.

A key comes from its setting (a PEM) or, outside production, from ``core.dev_secrets``. Each is
checked at boot (type, size, a kid of its own) and bound to the one algorithm it accepts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from core.base.errors import ConfigError, Problem
from core.config.dev_secrets import dev_secret
from core.config.settings import Setting, duration, mapping, text

if TYPE_CHECKING:
    from core.config.config import Config

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey

_OWNER = "manager jwt"

JWT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "jwt.algorithm",
        text,
        "EdDSA",
        "Signing algorithm: EdDSA or RS256 (HS256 outside production only)",
        choices=("EdDSA", "RS256", "HS256"),
        owner=_OWNER,
    ),
    Setting(
        "jwt.private_key",
        text,
        None,
        "PEM private key that signs tokens (EdDSA/RS256); "
        "generated into var/dev-secrets/ outside production",
        secret=True,
        owner=_OWNER,
    ),
    Setting(
        "jwt.secret",
        text,
        None,
        "HS256 shared secret (development and tests only)",
        secret=True,
        owner=_OWNER,
    ),
    Setting(
        "jwt.kid",
        text,
        None,
        "Key id of the signing key (default: its RFC 7638 thumbprint)",
        owner=_OWNER,
    ),
    Setting(
        "jwt.verification_keys",
        mapping,
        {},
        "Extra public keys still accepted, {kid: PEM} (YAML only), for key rotation",
        owner=_OWNER,
    ),
    Setting("jwt.issuer", text, "switchboard", "iss claim issued and required", owner=_OWNER),
    Setting("jwt.audience", text, "switchboard-api", "aud claim issued and required", owner=_OWNER),
    Setting("jwt.access_ttl", duration, 900.0, "Lifetime of access tokens", owner=_OWNER),
    Setting("jwt.refresh_ttl", duration, 30 * 86400.0, "Lifetime of refresh tokens", owner=_OWNER),
    Setting("jwt.leeway", duration, 30.0, "Clock skew tolerated on exp/nbf/iat", owner=_OWNER),
)

MIN_RSA_BITS = 2048
MIN_HMAC_BYTES = 32  # RFC 7518 3.2: at least the hash output size


@dataclass(frozen=True)
class VerificationKey:
    """A key tokens may be checked with, bound to the one algorithm it accepts."""

    kid: str
    algorithm: str
    key: PublicKey | bytes  # bytes: the HS256 secret
    jwk: Mapping[str, str] | None  # public JWK for /.well-known/jwks.json; None for HS256


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _public_jwk(key: PublicKey) -> dict[str, str]:
    """The RFC 7638 required members only, so the thumbprint can be taken from it."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of a public JWK holding only its required members."""
    canonical = json.dumps(dict(jwk), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def _algorithm_of(key: object) -> str | None:
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "EdDSA"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "RS256"
    return None


def _pem(value: bytes) -> bytes:
    # A PEM passed through an environment variable often arrives with literal "\n"s.
    return value.replace(b"\\n", b"\n") if b"\n" not in value.strip() else value


def _generate_pem(algorithm: str) -> bytes:
    key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "EdDSA"
        else rsa.generate_private_key(public_exponent=65537, key_size=3072)
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _config_error(message: str, setting: str) -> ConfigError:
    return ConfigError([Problem(message, field=setting)])


def _too_small(key: PrivateKey | PublicKey) -> str | None:
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) and key.key_size < MIN_RSA_BITS:
        return f"the RSA key has {key.key_size} bits; use at least {MIN_RSA_BITS}"
    return None


def _signing_key(config: Config, algorithm: str) -> tuple[PrivateKey | bytes, VerificationKey]:
    """(what signs, how tokens it signed are verified)."""
    if algorithm == "HS256":
        if config.is_production:
            raise _config_error(
                "HS256 is refused in production: a shared secret lets every verifier mint "
                "tokens. Set jwt.algorithm to EdDSA (or RS256) and provide jwt.private_key",
                "jwt.algorithm",
            )
        secret = dev_secret(
            config, "jwt.secret", "jwt_hs256.secret", lambda: secrets.token_urlsafe(48).encode()
        )
        if len(secret) < MIN_HMAC_BYTES:
            raise _config_error(
                f"HS256 needs a secret of at least {MIN_HMAC_BYTES} bytes, got {len(secret)}",
                "jwt.secret",
            )
        kid = str(config["jwt.kid"] or "hs256")  # a thumbprint of a secret would leak a hash
        return secret, VerificationKey(kid, "HS256", secret, None)

    filename = f"jwt_{algorithm.lower()}.pem"
    pem = _pem(dev_secret(config, "jwt.private_key", filename, lambda: _generate_pem(algorithm)))
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:  # not PEM, encrypted, or an unsupported key type
        raise _config_error(
            f"not an unencrypted PEM private key ({exc})", "jwt.private_key"
        ) from None
    if _algorithm_of(private) != algorithm or not isinstance(
        private, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)
    ):
        wanted = "an Ed25519" if algorithm == "EdDSA" else "an RSA"
        raise _config_error(
            f"jwt.algorithm is {algorithm}, which needs {wanted} key, but this is "
            f"{type(private).__name__}; provide such a key or change jwt.algorithm",
            "jwt.private_key",
        )
    problem = _too_small(private)
    if problem:
        raise _config_error(problem, "jwt.private_key")
    public = private.public_key()
    jwk = _public_jwk(public)
    kid = str(config["jwt.kid"] or thumbprint(jwk))
    return private, VerificationKey(kid, algorithm, public, jwk)


def _rotation_keys(config: Config) -> list[VerificationKey]:
    """``jwt.verification_keys``: {kid: public PEM}, each bound to its key type's algorithm."""
    keys: list[VerificationKey] = []
    problems: list[Problem] = []
    for kid, value in dict(config["jwt.verification_keys"]).items():
        setting = f"jwt.verification_keys.{kid}"
        try:
            public = serialization.load_pem_public_key(_pem(str(value).encode()))
        except (ValueError, TypeError) as exc:
            problems.append(Problem(f"not a PEM public key ({exc})", field=setting))
            continue
        algorithm = _algorithm_of(public)
        if algorithm is None or not isinstance(
            public, (ed25519.Ed25519PublicKey, rsa.RSAPublicKey)
        ):
            problems.append(
                Problem(
                    f"only Ed25519 and RSA public keys are accepted, not {type(public).__name__}",
                    field=setting,
                )
            )
            continue
        problem = _too_small(public)
        if problem:
            problems.append(Problem(problem, field=setting))
            continue
        keys.append(VerificationKey(str(kid), algorithm, public, _public_jwk(public)))
    if problems:
        raise ConfigError(problems)
    return keys


def load_keys(
    config: Config,
) -> tuple[PrivateKey | bytes, VerificationKey, dict[str, VerificationKey]]:
    """(what signs, its verification key, every key a token may be checked with by kid)."""
    signer, signing = _signing_key(config, str(config["jwt.algorithm"]))
    keys = {signing.kid: signing}
    for key in _rotation_keys(config):
        if key.kid in keys:
            raise _config_error(
                f"kid {key.kid!r} is also the signing key's kid; give each key its own",
                f"jwt.verification_keys.{key.kid}",
            )
        keys[key.kid] = key
    return signer, signing, keys


def jwk_set(keys: Iterable[VerificationKey]) -> dict[str, list[dict[str, str]]]:
    """The public verification keys as a JWK Set (HS256 keys have no public JWK)."""
    return {
        "keys": [
            {**key.jwk, "kid": key.kid, "alg": key.algorithm, "use": "sig"}
            for key in keys
            if key.jwk is not None
        ]
    }
