"""Request ids: the caller's ``X-Request-ID`` when it is well-formed, else a new one."""

from __future__ import annotations

import itertools
import os
import re

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# New request ids: a random prefix per process, then a counter. Unique, as cheap as a
# counter (no system call for random bytes on every request), and 32 hex characters.
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFF:012x}"


def request_id_of(incoming: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is well-formed, else a new one."""
    return incoming if incoming and REQUEST_ID.match(incoming) else new_request_id()
