"""Logging setup: one JSON object a line (or plain text), with the request id of the call."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
import time
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "switchboard_request_id", default=None
)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_HANDLER_NAME = "switchboard"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the call being served (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


# Values of params marked ``secret: true`` in the call being served (set by the pipeline).
secret_params_var: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "switchboard_secret_params", default=frozenset()
)
MASK = "***"


# Secrets read at run time (ctx.secrets): masked from then on, by every handler's filter.
_runtime_secrets: set[str] = set()
_runtime_lock = threading.Lock()


def remember_secret(value: Any) -> None:
    """Mask ``value`` (and every string inside it) in logs from now on."""
    texts = (
        [value]
        if isinstance(value, str)
        else ([v for v in value.values() if isinstance(v, str)] if isinstance(value, dict) else [])
    )
    with _runtime_lock:
        _runtime_secrets.update(t for t in texts if len(t) >= 4)


class RedactingFilter(logging.Filter):
    """Replaces known secret values (settings marked secret, values from secret files and
    Vault, and the current call's secret params) in the message and string extras."""

    def __init__(self, secrets: frozenset[str]) -> None:
        super().__init__()
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def _redact(self, text: str, extra: frozenset[str]) -> str:
        for secret in (*self._secrets, *extra):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        extra = secret_params_var.get()
        if _runtime_secrets:
            with _runtime_lock:
                extra = extra | _runtime_secrets
        if not self._secrets and not extra:
            return True
        record.msg = self._redact(record.getMessage(), extra)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text, extra)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self._redact(value, extra))
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_text:  # possibly redacted by RedactingFilter: prefer it
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str, secrets: frozenset[str] = frozenset()) -> None:
    """Install Switchboard's handler on the root logger (idempotent; replaces its own)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
