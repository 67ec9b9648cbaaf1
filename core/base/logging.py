"""Logging setup: one JSON object a line (or plain text), with the request id, action and
caller of the call, to stderr or to a rotating file per process (``logging.file``).

Records are stamped (request id) and redacted on the thread that logs them, then queued for
one writer thread per process, which formats and writes them in batches every 50 ms: a
request thread never waits on stderr nor wakes another thread, and JSON is encoded with
orjson.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import copy
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "switchboard_request_id", default=None
)

# The action being called and who calls it ("user:<id>", "api_key:<id>", "anonymous"):
# set by the pipeline, stamped on every record logged meanwhile.
call_var: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "switchboard_call", default=None
)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_HANDLER_NAME = "switchboard"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id, action and caller of the call being served
    (if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        call = call_var.get()
        if call is not None and not hasattr(record, "action"):
            record.action, record.caller = call
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


# The configured secrets of the app that set logging up (settings marked secret, values
# from secret files and Vault), for ``redact``: one list per process, as logging is.
_configured_secrets: list[str] = []


def redact(text: str) -> str:
    """``text`` with every secret the logs would mask replaced by ``***`` (for what a
    caller may read: the detail of a development 500)."""
    with _runtime_lock:
        known = {*_configured_secrets, *secret_params_var.get(), *_runtime_secrets}
    return _mask(text, sorted(known, key=len, reverse=True))


def _mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (longest first, so none is half masked) as ***."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Replaces known secret values (settings marked secret, values from secret files and
    Vault, and the current call's secret params) in the message and string extras."""

    def __init__(self, secrets: frozenset[str]) -> None:
        super().__init__()
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def _redact(self, text: str, extra: frozenset[str]) -> str:
        return _mask(text, (*self._secrets, *extra))

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
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:  # a lone surrogate, an integer past 64 bits: the slow encoder copes
            return json.dumps(entry, default=str)


# C0 and C1 control characters and DEL: written as \xNN in text lines, so that what a
# caller put in a path or a header cannot colour a terminal, end a line or write a NUL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _hex(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class TextFormatter(logging.Formatter):
    """One line a record, control characters escaped; a traceback follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        line = _CONTROL.sub(_hex, self.formatMessage(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info):
            if extra:
                line += "\n" + _CONTROL_BUT_NEWLINE.sub(_hex, extra)
        return line


class _BatchWriter(logging.Handler):
    """Stamps and redacts a record on the logging thread (its filters), queues it without
    waking anyone, and writes what is queued from its own thread every ``interval``: one
    write for many records, and no thread handoff on the request path."""

    def __init__(
        self,
        formatter: logging.Formatter,
        interval: float = 0.05,
        target: logging.handlers.RotatingFileHandler | None = None,
    ) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._target = target  # None: stderr
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._drain_lock = threading.Lock()
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: appending to the deque is atomic.
        if not self.filter(record):
            return False
        if record.args or record.exc_info:
            record = copy.copy(record)  # other handlers (pytest's, say) keep the original
            record.msg, record.args = record.getMessage(), None  # the arguments may change
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # its frames stay with this thread
        self._pending.append(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Write everything queued so far (the writer thread, ``flush_logs``, shutdown)."""
        with self._drain_lock:
            lines = []
            while self._pending:
                record = self._pending.popleft()
                try:
                    lines.append(self.format(record))
                except Exception:  # one bad record must not lose the others
                    self.handleError(record)
            if lines and self._target is not None:
                for line in lines:  # the handler rotates between lines
                    self._target.emit(logging.makeLogRecord({"msg": line}))
            elif lines:
                try:
                    sys.stderr.write("\n".join(lines) + "\n")
                    sys.stderr.flush()
                except (OSError, ValueError):  # stderr closed or gone: nothing to tell
                    pass

    def close(self) -> None:
        self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self.flush()
        if self._target is not None:
            self._target.close()
        super().close()


class _Writer:
    """The process's current writer (logging is process-wide, so this is too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: _BatchWriter | None = None

    def replace(self, writer: _BatchWriter) -> None:
        with self._lock:
            previous, self._current = self._current, writer
        if previous is not None:
            previous.close()

    def flush(self) -> None:
        current = self._current
        if current is not None:
            current.flush()

    def stop(self) -> None:
        with self._lock:
            previous, self._current = self._current, None
        if previous is not None:
            previous.close()


_WRITER = _Writer()


def flush_logs() -> None:
    """Write every record logged so far (tests, shutdown)."""
    _WRITER.flush()


@dataclass(frozen=True)
class LogFile:
    """Logs go to ``<stem>.<pid><suffix>`` beside ``path`` (several processes rotating one
    file would race), rotated at ``max_bytes`` keeping ``backups`` old files."""

    path: Path
    max_bytes: int
    backups: int

    def handler(self) -> logging.handlers.RotatingFileHandler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f"{self.path.stem}.{os.getpid()}{self.path.suffix or '.log'}")
        handler = logging.handlers.RotatingFileHandler(
            mine, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))  # lines come formatted
        return handler


def configure_logging(
    level: str, fmt: str, secrets: frozenset[str] = frozenset(), file: LogFile | None = None
) -> None:
    """Install Switchboard's handler on the root logger (idempotent; replaces its own);
    with ``file``, lines go to this process's rotating file instead of stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    # What the records would carry and no line shows (the logging HOWTO's "Optimization"):
    # the caller's file and line, thread and process names.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = _BatchWriter(
        JsonFormatter() if fmt == "json" else TextFormatter(),
        target=file.handler() if file is not None else None,
    )
    writer.set_name(_HANDLER_NAME)
    writer.addFilter(RequestIdFilter())
    _configured_secrets[:] = secrets
    writer.addFilter(RedactingFilter(secrets))
    _WRITER.replace(writer)
    root.addHandler(writer)
    root.setLevel(level)


atexit.register(_WRITER.stop)
