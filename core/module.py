"""The module API: ``BaseModule`` (what a module's ``__init__.py`` may export), and the
few helpers the shipped modules use (rate limits and durations as declarations write
them, the runtime's version). Everything a module imports comes from ``core.errors``,
``core.module``, ``core.calls`` and ``core.testing``.
"""

from __future__ import annotations

from core import (
    __version__ as VERSION,
)
from core.base.durations import (
    parse_duration,
)
from core.contracts.limits import (
    Limit,
    parse_limit,
)
from core.contracts.module import (
    BaseModule,
    ModuleManifest,
)

__all__ = [
    "VERSION",
    "BaseModule",
    "Limit",
    "ModuleManifest",
    "parse_duration",
    "parse_limit",
]
