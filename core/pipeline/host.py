"""``Host``: what the pipeline needs of the booted app (the ``AppManager`` provides it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from core.config.config import Config
    from core.contracts.context import ModuleScope
    from core.pipeline.chain import Middleware

T = TypeVar("T")


class Host(Protocol):
    """The app the chain is built for: its config, its capabilities by type, the
    middleware its managers contribute, and each module's scope for ``ctx``."""

    config: Config

    def capability(self, kind: type[T]) -> T | None: ...

    def middleware(self) -> Sequence[tuple[str, Middleware]]: ...

    def scope(self, module: str) -> ModuleScope: ...
