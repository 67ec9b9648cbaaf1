"""The module API's test kit: ``Harness`` boots an app on a module folder and calls its
actions as any caller (see README "Testing your module"). Lives in
``core.transports.testing``.
"""

from __future__ import annotations

from core.contracts.context import (
    ANONYMOUS,
    SYSTEM,
    Caller,
)
from core.transports.testing import (
    Answer,
    FrozenClock,
    Harness,
    api_key,
    user,
)

__all__ = [
    "ANONYMOUS",
    "SYSTEM",
    "Answer",
    "Caller",
    "FrozenClock",
    "Harness",
    "api_key",
    "user",
]
