"""ApiKeyManager: API keys ``sb_<id>_<secret>`` whose secret is only ever stored as a hash.

A key is ``sb_`` + a 12-character public id + ``_`` + a 52-character secret, both in
lowercase unpadded base32 (``a-z2-7``): neither part contains ``_``, so the key parses
unambiguously, survives URLs, shells and headers unquoted, and anything else is refused
before the database is asked. The id (60 random bits) is the record's ``_id`` and is not
secret; the secret (256 random bits) is stored only as HMAC-SHA256 keyed with the server's
pepper (``api_keys.pepper``; outside production generated once into
``var/dev-secrets/api_key_pepper`` as 64 hex characters and used as those bytes, exactly as a
configured pepper is), so a copy of the database alone cannot check guesses. A fast keyed
hash is enough here because the secret is random, not a password.

``verify`` gives one answer, "invalid API key", for an unknown id and for a wrong secret, and
computes the HMAC in both cases; "revoked" and "expired" are only said once the secret
matched, so they reveal nothing to someone without the key. The raw key is returned once by
``create`` and never stored or logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import (
    ConfigError,
    Conflict,
    DependencyUnavailable,
    FieldError,
    Problem,
    Unauthorized,
    ValidationError,
)
from core.base.retry import retrying
from core.base.store import KeyValueStore
from core.config.dev_secrets import dev_secret
from core.config.settings import Setting, text
from core.contracts.facades import Documents
from core.contracts.limits import RATE
from core.manager import Health, Manager
from core.pipeline.gate import Precondition
from core.pipeline.identity import KeyIdentity, KeyVerifier

if TYPE_CHECKING:
    from core.config.config import Config
    from core.contracts.documents import Collection
    from core.manager import App, Command

log = logging.getLogger("switchboard.api_keys")

COLLECTION = "sb_api_keys"
PREFIX = "sb_"
ID_LENGTH = 12  # base32 characters: 60 bits
SECRET_BYTES = 32  # 256 bits -> 52 base32 characters
SECRET_LENGTH = 52
MAX_KEY_LENGTH = 128  # longer input is refused before any parsing
KEY = re.compile(rf"sb_([a-z2-7]{{{ID_LENGTH}}})_([a-z2-7]{{{SECRET_LENGTH}}})", re.ASCII)
KEY_ID = re.compile(rf"[a-z2-7]{{{ID_LENGTH}}}", re.ASCII)
SCOPE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}", re.ASCII)
RATE_LIMIT = re.compile(RATE)
MIN_PEPPER_BYTES = 32
MAX_NAME = 100
MAX_OWNER = 200
MAX_SCOPES = 64
MAX_RATE_LIMITS = 8
TOUCH_INTERVAL = 60.0  # last_used_at is written at most this often per key
CACHE_SECONDS = 30.0  # how long a worker trusts its copy of a key record
CACHE_SIZE = 4096  # key records a worker keeps
REVOKED_MARKER = "apikey:revoked:"  # in the shared store: revoked since workers read it
# In the shared store: a new random value at every create, so each worker knows its index
# of key ids is out of date before it answers a refusal from it (random, not a counter: a
# Redis that restarted empty would count again from 1).
IDS_GENERATION = "apikey:ids:generation"
IDS_MAX_AGE = 300.0  # a refusal reloads an index older than this even without a bump

INVALID = "invalid API key"  # unknown id and wrong secret alike: no oracle
MALFORMED = "malformed API key; expected sb_<id>_<secret>"
EXPIRED = "API key expired"
REVOKED = "API key revoked"

# Compared against when the id is unknown, so that path also hashes and compares.
_NO_HASH = "0" * 64

PublicRecord = dict[str, Any]
_PUBLIC_FIELDS = (
    "name",
    "owner",
    "scopes",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked",
    "rate_limit",
)


def _base32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def new_key_id() -> str:
    return _base32(secrets.token_bytes(8))[:ID_LENGTH]


def new_secret() -> str:
    return _base32(secrets.token_bytes(SECRET_BYTES))


def _generate_pepper() -> bytes:
    # Hex text, so the dev file has the same shape as a pepper set in config or a secret file.
    return secrets.token_hex(32).encode("ascii")


def _revoked() -> Unauthorized:
    return Unauthorized(REVOKED, reason="revoked")


def parse_key(raw: object) -> tuple[str, str]:
    """(id, secret) of a well-formed key; ``Unauthorized`` for anything else."""
    if not isinstance(raw, str) or len(raw) > MAX_KEY_LENGTH:
        raise Unauthorized(MALFORMED, reason="malformed")
    match = KEY.fullmatch(raw)
    if match is None:
        raise Unauthorized(MALFORMED, reason="malformed")
    return match.group(1), match.group(2)


def public(record: Mapping[str, Any]) -> PublicRecord:
    """The record as callers see it: never the hash."""
    return {"id": record["_id"], **{name: record.get(name) for name in _PUBLIC_FIELDS}}


class ApiKeyManager(Manager):
    """Creates, verifies, lists and revokes API keys (the identify step calls ``verify``)."""

    name = "api_keys"
    requires = ("config", "db", "redis")
    provides: ClassVar[tuple[type, ...]] = (KeyVerifier,)
    facade = "api_keys"
    privileged = True
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "api_keys.pepper",
            text,
            None,
            "Server-side secret mixed into API key hashes; "
            "generated into var/dev-secrets/ outside production",
            secret=True,
            owner="manager api_keys",
        ),
    )

    @classmethod
    def production_problems(cls, config: Config) -> list[Problem]:
        if config["api_keys.pepper"]:
            return []
        return [
            Problem(
                "set api_keys.pepper (32 random bytes or more, from a secret file or Vault)",
                field="api_keys.pepper",
            )
        ]

    @classmethod
    def commands(cls) -> Sequence[Command]:
        from managers.api_keys.commands import KEYS

        return (KEYS,)

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pepper: bytes | None = None
        self._db: Documents | None = None
        self._store: KeyValueStore | None = None
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (fresh until, record)
        self._cache_lock = threading.Lock()
        self._cache_seconds = CACHE_SECONDS
        self._index = _KeyIds()

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        pepper = dev_secret(app.config, "api_keys.pepper", "api_key_pepper", _generate_pepper)
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ConfigError(
                [
                    Problem(
                        f"api_keys.pepper must be at least {MIN_PEPPER_BYTES} bytes of random "
                        "text, e.g. python -c 'import secrets; print(secrets.token_hex(32))'",
                        field="api_keys.pepper",
                    )
                ]
            )
        self._db = self.require(Documents)
        self._store = self.require(KeyValueStore)
        # A revocation reaches other processes through the store's marker; a store of this
        # process alone (memory://) cannot carry it, so then every call reads the database.
        self._cache_seconds = CACHE_SECONDS if self._store.shared else 0.0
        self._keys().create_index(["owner"])
        self._pepper = pepper
        # On a shared store an unknown key id is answered from the index, as fast as a
        # wrong secret for a real one (no database read per guess); on memory:// every
        # call reads the database, both alike.
        self._index = _KeyIds(self._load_ids if self._store.shared else None)

    def stop(self) -> None:
        self._pepper = None
        self._db = None
        self._store = None
        self._cache.clear()

    def health(self) -> Health:
        try:
            active = self._keys().count(
                {
                    "revoked": False,
                    "$or": [{"expires_at": None}, {"expires_at": {"$gt": self._clock()}}],
                }
            )
        except DependencyUnavailable as exc:
            return Health("failed", {"error": exc.detail})
        return Health("ok", {"keys": active})

    # --- the API ----------------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        owner: str | None,
        scopes: Sequence[str],
        expires_in: float | None = None,
        rate_limit: Sequence[str] | None = None,
    ) -> tuple[PublicRecord, str]:
        """A new key: (its public record, the raw key). The raw key is not kept anywhere."""
        errors: list[FieldError] = []
        clean_name = _name(name, errors)
        _owner(owner, errors)
        clean_scopes = _strings(
            scopes,
            "/scopes",
            errors,
            pattern=SCOPE,
            most=MAX_SCOPES,
            hint="a scope is [a-z] then up to 63 of [a-z0-9_.:-]",
        )
        clean_limits = _strings(
            () if rate_limit is None else rate_limit,
            "/rate_limit",
            errors,
            pattern=RATE_LIMIT,
            most=MAX_RATE_LIMITS,
            hint="a rate limit looks like '100/minute' or '5/10s'",
        )
        _expires_in(expires_in, errors)
        if errors:
            raise ValidationError(
                "invalid API key settings: " + "; ".join(e.message for e in errors), errors=errors
            )
        now = self._clock()
        key_id, secret = new_key_id(), new_secret()
        record: dict[str, Any] = {
            "_id": key_id,
            "name": clean_name,
            "owner": owner,
            # Sorted and unique: the order scopes were given in means nothing.
            "scopes": sorted(set(clean_scopes)),
            "created_at": now,
            "last_used_at": None,
            "expires_at": None if expires_in is None else now + float(expires_in),
            "revoked": False,
            "rate_limit": clean_limits or None,
            "secret_hash": self._hash(secret),
        }
        # 60 random bits: a clash is a one-in-10^12 event at a million keys; it would surface
        # as a 409 from the unique _id rather than overwrite anything.
        self._keys().insert_one(record)
        self._index.add(key_id)
        self._bump_ids()
        log.info("API key %s created (owner %s)", key_id, owner)
        return public(record), f"{PREFIX}{key_id}_{secret}"

    def verify(self, raw: str) -> KeyIdentity:
        """The identity of a valid, unrevoked key, read from the database now;
        ``Unauthorized`` saying why not."""
        key_id, secret = parse_key(raw)
        return self._identity(key_id, secret, self._record(key_id, fresh=True))

    def authenticate(self, raw: str) -> KeyIdentity:
        """Like ``verify``, from a record this worker read at most ``CACHE_SECONDS`` ago:
        a revocation since then is the marker ``revocations`` hands the gate."""
        key_id, secret = parse_key(raw)
        try:
            return self._identity(key_id, secret, self._record(key_id))
        except Unauthorized as failure:
            # Every refusal for an unknown id or a wrong secret asks the store whether the
            # index is current (the same work on both paths); a key created on another
            # worker since then is looked up once more.
            if failure.reason != "invalid" or not self._index.outdated(self._ids_generation):
                raise
            return self._identity(key_id, secret, self._record(key_id))

    def revocations(self, identity: KeyIdentity) -> tuple[Precondition, ...]:
        """The marker ``revoke`` sets; while the store is down the database decides."""
        return (
            Precondition(
                f"{REVOKED_MARKER}{identity.id}",
                _revoked,
                fallback=lambda: self._check_in_database(identity.id),
            ),
        )

    def _identity(self, key_id: str, secret: str, record: dict[str, Any] | None) -> KeyIdentity:
        stored = record.get("secret_hash") if record is not None else None
        if not isinstance(stored, str):
            stored = _NO_HASH
        matches = hmac.compare_digest(self._hash(secret).encode(), stored.encode())
        if record is None or not matches:
            log.debug("API key %s refused: unknown id or wrong secret", key_id)
            raise Unauthorized(INVALID, reason="invalid")
        # Only now, with the secret proven, may the answer differ.
        if record.get("revoked"):
            log.debug("API key %s refused: revoked", key_id)
            raise Unauthorized(REVOKED, reason="revoked")
        now = self._clock()
        expires_at = record.get("expires_at")
        if expires_at is not None and now >= expires_at:
            log.debug("API key %s refused: expired", key_id)
            raise Unauthorized(EXPIRED, reason="expired")
        if self._touch(key_id, record.get("last_used_at"), now):
            record["last_used_at"] = now  # this worker's copy: no second write within a minute
        return KeyIdentity(
            key_id,
            record.get("owner"),
            tuple(record.get("scopes") or ()),
            rate_limit=tuple(record.get("rate_limit") or ()),
        )

    def _record(self, key_id: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """The key's record; unless ``fresh``, from this worker's copy while it is young."""
        now = time.monotonic()
        cached = None if fresh else self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if not fresh and self._index.absent(key_id):
            return None
        record = self._keys().find_one({"_id": key_id})
        with self._cache_lock:
            if record is None:
                self._cache.pop(key_id, None)
            else:
                if len(self._cache) >= CACHE_SIZE and key_id not in self._cache:
                    self._cache.pop(next(iter(self._cache)))  # the oldest entry
                self._cache[key_id] = (now + self._cache_seconds, record)
        return record

    def _check_in_database(self, key_id: str) -> None:
        record = self._record(key_id, fresh=True)
        if record is None or record.get("revoked"):
            raise Unauthorized(REVOKED, reason="revoked")

    def recheck(self, key_id: str) -> None:
        self._check_in_database(key_id)
        record = self._record(key_id, fresh=False)
        expires_at = None if record is None else record.get("expires_at")
        if expires_at is not None and self._clock() >= expires_at:
            raise Unauthorized(EXPIRED, reason="expired")

    def get(self, key_id: str) -> PublicRecord | None:
        """The public record of a key, or None."""
        if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
            return None
        record = self._keys().find_one({"_id": key_id})
        return None if record is None else public(record)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when there is no such key (revoking twice is True)."""
        if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
            return False
        changes = {"$set": {"revoked": True, "revoked_at": self._clock()}}
        # A concurrent last_used_at write may win the row: try again.
        found = retrying(
            lambda: self._keys().update_one({"_id": key_id}, changes), on=Conflict, retries=2
        )
        if found:
            log.info("API key %s revoked", key_id)
            self._mark_revoked(key_id)
        return found

    def _mark_revoked(self, key_id: str) -> None:
        """Every worker refuses the key from its next call: the gate finds the marker."""
        with self._cache_lock:
            self._cache.pop(key_id, None)
        if self._store is None:
            raise self.not_started()
        try:
            # It only has to outlive the copies workers keep: after that they read the
            # database, which says revoked.
            self._store.set(f"{REVOKED_MARKER}{key_id}", b"1", ttl=2 * CACHE_SECONDS)
        except DependencyUnavailable:
            log.warning(
                "API key %s is revoked in the database, but the store is unavailable: "
                "workers stop accepting it within %ss",
                key_id,
                int(CACHE_SECONDS),
            )

    def list(self, owner: str | None = None) -> list[PublicRecord]:
        """Public records, oldest first; all keys, or those of ``owner``."""
        where = {} if owner is None else {"owner": owner}
        return [public(r) for r in self._keys().find(where, sort=[("created_at", 1)])]

    # --- internals --------------------------------------------------------------------

    def _keys(self) -> Collection:
        if self._db is None:
            raise self.not_started()
        return self._db.collection(COLLECTION)

    def _load_ids(self) -> tuple[bytes | None, frozenset[str]]:
        """(the store's generation, every key id): the generation first, so a key created
        meanwhile moves it again; read in a transaction, so from the primary, never from a
        replica that may lag behind the create."""
        generation = self._ids_generation()
        if self._db is None:
            raise self.not_started()
        with self._db.transaction():
            ids = frozenset(str(r["_id"]) for r in self._keys().find({}))
        return generation, ids

    def _ids_generation(self) -> bytes | None:
        if self._store is None:
            raise self.not_started()
        return self._store.get(IDS_GENERATION)

    def _bump_ids(self) -> None:
        if self._store is None:
            raise self.not_started()
        try:
            self._store.set(IDS_GENERATION, secrets.token_hex(8).encode())
        except DependencyUnavailable:
            log.warning(
                "a new API key was stored, but the store is unavailable: other workers "
                "accept it within %ss",
                int(IDS_MAX_AGE),
            )

    def _hash(self, secret: str) -> str:
        if self._pepper is None:
            raise self.not_started()
        return hmac.new(self._pepper, secret.encode("ascii"), hashlib.sha256).hexdigest()

    def _touch(self, key_id: str, last_used_at: Any, now: float) -> bool:
        """Record use, at most once per TOUCH_INTERVAL: not a write per request. True when
        it wrote (or tried to)."""
        if isinstance(last_used_at, int | float) and now - last_used_at < TOUCH_INTERVAL:
            return False
        stale = {"$or": [{"last_used_at": None}, {"last_used_at": {"$lte": now - TOUCH_INTERVAL}}]}
        # The condition makes concurrent verifications of one key write once; a Conflict
        # means another request recorded the use first, which is all that was wanted.
        with contextlib.suppress(Conflict):
            self._keys().update_one({"_id": key_id, **stale}, {"$set": {"last_used_at": now}})
        return True


# --- validation of create()'s arguments ------------------------------------------------


def _name(name: object, errors: list[FieldError]) -> str:
    if not isinstance(name, str) or not name.strip():
        errors.append(FieldError("/name", "name must be a non-empty string"))
        return ""
    clean = name.strip()
    if len(clean) > MAX_NAME or any(not ch.isprintable() for ch in clean):
        errors.append(FieldError("/name", f"name must be 1-{MAX_NAME} printable characters"))
    return clean


def _owner(owner: object, errors: list[FieldError]) -> None:
    if owner is None:
        return
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER or "\x00" in owner:
        errors.append(FieldError("/owner", f"owner must be null or 1-{MAX_OWNER} characters"))


def _strings(
    values: object,
    path: str,
    errors: list[FieldError],
    *,
    pattern: re.Pattern[str],
    most: int,
    hint: str,
) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        errors.append(FieldError(path, "must be a list of strings"))
        return []
    if len(values) > most:
        errors.append(FieldError(path, f"at most {most} entries"))
        return []
    clean: list[str] = []
    for index, value in enumerate(values):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
            errors.append(FieldError(f"{path}/{index}", f"invalid entry {shown}: {hint}"))
        else:
            clean.append(value.strip())
    return clean


def _expires_in(expires_in: object, errors: list[FieldError]) -> None:
    if expires_in is None:
        return
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not math.isfinite(expires_in)
        or expires_in <= 0
    ):
        errors.append(FieldError("/expires_in", "expires_in must be a positive number of seconds"))


class _KeyIds:
    """A worker's index of every key id, so that an unknown id is refused without a
    database read. ``outdated`` asks the store's generation (bumped by every create) and
    reloads the index when it moved, or when the index is older than ``IDS_MAX_AGE``."""

    def __init__(
        self, load: Callable[[], tuple[bytes | None, frozenset[str]]] | None = None
    ) -> None:
        self._load = load
        self._ids: frozenset[str] | None = None
        self._generation: bytes | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one reload at a time; the others wait for it

    def absent(self, key_id: str) -> bool:
        """True when the index knows ``key_id`` does not exist (loaded on first use; False
        when there is no index, or it cannot be loaded now)."""
        if self._load is None:
            return False
        ids = self._ids
        if ids is None:
            try:
                ids = self._reload()
            except DependencyUnavailable:
                return False
        return key_id not in ids

    def add(self, key_id: str) -> None:
        with self._lock:
            if self._ids is not None:
                self._ids = self._ids | {key_id}

    def outdated(self, generation: Callable[[], bytes | None]) -> bool:
        """Whether the index missed a key created elsewhere (and is now reloaded); True
        when the store cannot say, so the database decides."""
        if self._load is None:
            return False
        try:
            current = generation()
        except DependencyUnavailable:
            with self._lock:
                self._ids = None  # read the database until the store answers again
            return True
        if current == self._generation and time.monotonic() - self._loaded_at < IDS_MAX_AGE:
            return False
        try:
            self._reload()
        except DependencyUnavailable:
            return True
        return True

    def _reload(self) -> frozenset[str]:
        assert self._load is not None
        asked = time.monotonic()
        with self._loading:
            if self._ids is not None and self._loaded_at >= asked:
                return self._ids  # another thread reloaded while this one waited
            generation, ids = self._load()
            with self._lock:
                self._ids, self._generation = ids, generation
                self._loaded_at = time.monotonic()
        return ids
