"""What managers report to the app's metrics, when it has them.

``Instruments`` is a capability (looked up with ``app.capability(Instruments)``, None when the
app runs no metrics manager): the call chain's own counts come from the metrics manager's
middleware; the rest (sockets, hook failures, the database pool) are reported here by the
managers that see them. Every label value comes from a fixed list or a declaration, never
from what a caller sent.
"""

from __future__ import annotations

import os
from typing import Protocol

# The events a socket may send (``unknown``: any other), for the ``event`` label.
REALTIME_EVENTS = ("call", "join", "leave", "presence", "unknown")
# A service's circuit breaker, in the order of the gauge's values (0, 1, 2).
BREAKER_STATES = ("closed", "half_open", "open")


class Instruments(Protocol):
    def socket_opened(self) -> None: ...

    def socket_closed(self) -> None: ...

    def realtime_message(self, event: str) -> None: ...

    def auth_failed(self, reason: str) -> None: ...

    def hook_failed(self, event: str) -> None: ...

    def pool_in_use(self, delta: int) -> None: ...

    def upstream_call(self, service: str, outcome: str, seconds: float) -> None: ...

    def breaker_changed(self, service: str, state: str) -> None: ...


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists (its metric files, or serve's directory, are live)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
