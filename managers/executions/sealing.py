"""Secret params kept in an execution record: AES-GCM (``cryptography``), so the job and a
later attempt can use them while every view, log line and audit entry shows ``***``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.base.errors import InternalError

MIN_KEY_BYTES = 32


def generate_key() -> bytes:
    return base64.urlsafe_b64encode(os.urandom(32))


class Sealer:
    """Seals a mapping of secret params with ``executions.secret_key``; the record's id is
    the associated data, so a sealed value cannot be moved to another record."""

    def __init__(self, secret: bytes) -> None:
        # Any text of at least 32 bytes: the AES-256 key is its SHA-256.
        self._aead = AESGCM(hashlib.sha256(secret).digest())

    def seal(self, values: Mapping[str, Any], execution_id: str) -> str:
        nonce = os.urandom(12)
        plain = json.dumps(dict(values), separators=(",", ":")).encode()
        sealed = self._aead.encrypt(nonce, plain, execution_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, execution_id: str) -> dict[str, Any]:
        raw = base64.b64decode(sealed)
        try:
            plain = self._aead.decrypt(raw[:12], raw[12:], execution_id.encode())
        except InvalidTag:
            raise InternalError(
                "the execution's secret params cannot be read: executions.secret_key changed"
            ) from None
        opened: dict[str, Any] = json.loads(plain)
        return opened
