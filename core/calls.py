"""What a call hands over and gets back (module API): ``WithMeta`` for a handler that adds
to the answer's ``meta``; ``CallRequest`` / ``CallResult`` for transports.
"""

from __future__ import annotations

from core.contracts.calls import (
    CallRequest,
    CallResult,
    WithMeta,
)

__all__ = [
    "CallRequest",
    "CallResult",
    "WithMeta",
]
