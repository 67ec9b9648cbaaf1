"""The call chain: middleware ``(call, next) -> result``, built once at boot.

The kernel's built-in steps are named, in order::

    audit -> identify -> lookup -> authorize -> validate -> rate_limit -> idempotency
          -> gate -> run

A step whose capability the app lacks (no rate limiter, no shared store) keeps its name, so
managers can still place middleware relative to it, but does no work. Managers contribute
``Middleware`` with ``before=`` or ``after=`` one of those names; several at one place keep
the order in which their managers are declared (``app.py``). Work a middleware does after
its inner call (headers, settling, timing) lives in the same middleware as the work before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.base.errors import BootError, Problem
from core.contracts.calls import CallResult
from core.pipeline.call import Call

Next = Callable[[Call], CallResult]
Handle = Callable[[Call, Next], CallResult]

STEPS = (
    "audit",
    "identify",
    "lookup",
    "authorize",
    "validate",
    "rate_limit",
    "idempotency",
    "gate",
    "run",
)


@dataclass(frozen=True)
class Middleware:
    """A contributed step: ``handle(call, next)``, placed before or after a built-in step."""

    name: str
    handle: Handle
    before: str | None = None
    after: str | None = None

    def place(self, owner: str) -> tuple[str, bool]:
        """(anchor, before?) or ``BootError`` naming the owner and the bad position."""
        if (self.before is None) == (self.after is None):
            raise BootError(
                f"middleware {self.name!r} of {owner} must name exactly one of before= or after="
            )
        anchor = self.before or self.after or ""
        if anchor not in STEPS:
            raise BootError(
                [
                    Problem(
                        f"middleware {self.name!r} of {owner} is placed relative to "
                        f"{anchor!r}, which is not a step; steps: {', '.join(STEPS)}"
                    )
                ]
            )
        if anchor == "run" and self.after is not None:
            raise BootError(f"middleware {self.name!r} of {owner}: nothing runs after 'run'")
        return anchor, self.before is not None


def arrange(
    builtins: Sequence[tuple[str, Handle | None]],
    contributed: Sequence[tuple[str, Middleware]],
) -> list[tuple[str, Handle]]:
    """The chain's middleware, outermost first (``run`` is not among them).

    ``builtins`` gives a handle (or None: the step does nothing here) for each of
    ``STEPS[:-1]``; ``contributed`` is (owner, middleware) in declaration order. A built-in
    name that is not a step is a ``BootError`` (it would be dropped from the chain).
    """
    unknown = [name for name, _ in builtins if name not in STEPS or name == STEPS[-1]]
    if unknown:
        raise BootError(
            [
                Problem(
                    f"built-in step {name!r} is not a step of the chain "
                    f"(steps: {', '.join(STEPS[:-1])})",
                    field="pipeline",
                )
                for name in unknown
            ]
        )
    before: dict[str, list[tuple[str, Handle]]] = {step: [] for step in STEPS}
    after: dict[str, list[tuple[str, Handle]]] = {step: [] for step in STEPS}
    for owner, middleware in contributed:
        anchor, is_before = middleware.place(owner)
        (before if is_before else after)[anchor].append((middleware.name, middleware.handle))
    handles = dict(builtins)
    arranged: list[tuple[str, Handle]] = []
    for step in STEPS:
        arranged.extend(before[step])
        handle = handles.get(step)
        if handle is not None:
            arranged.append((step, handle))
        arranged.extend(after[step])
    return arranged


def compose(middleware: Sequence[tuple[str, Handle]], run: Next) -> Next:
    """One callable: the outermost middleware, whose ``next`` leads down to ``run``."""
    inner = run
    for _name, handle in reversed(middleware):
        inner = _link(handle, inner)
    return inner


def _link(handle: Handle, inner: Next) -> Next:
    def step(call: Call) -> CallResult:
        return handle(call, inner)

    return step
