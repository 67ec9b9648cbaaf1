"""One retry helper for the places that try again: lost transaction races, transient
connection errors. Exponential backoff from tenacity; the last error propagates."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

T = TypeVar("T")


def retrying(
    work: Callable[[], T],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    retries: int,
    first_wait: float = 0.02,
    max_wait: float = 0.5,
) -> T:
    """``work()``, run again after ``first_wait``, then twice as long each time (at most
    ``max_wait``), while it raises ``on``: at most ``retries`` more times."""
    for attempt in Retrying(
        stop=stop_after_attempt(retries + 1),
        retry=retry_if_exception_type(on),
        wait=wait_exponential(multiplier=first_wait, max=max_wait),
        reraise=True,
    ):
        with attempt:
            return work()
    raise AssertionError("tenacity returned without an attempt")  # pragma: no cover
