"""What a running job's ``ctx`` reaches (``core.contracts.executions`` tells the whole
story): its execution, its progress and its cancellation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ExecutionRef:
    """``ctx.execution``: which execution and which attempt a job is."""

    id: str
    attempt: int


class JobControl(Protocol):
    """What a running job's ``ctx`` reaches: its execution, progress and cancellation."""

    @property
    def ref(self) -> ExecutionRef: ...

    @property
    def cancelled(self) -> bool:
        """True once a cancel was asked (or the time limit passed)."""
        ...

    def progress(self, done: float, message: str | None = None) -> None: ...
