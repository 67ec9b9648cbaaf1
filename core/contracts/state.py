"""State machine declarations: states, the initial state, allowed transitions, guards.

Declared in ``module.yaml``::

    state_machines:
      order:
        initial: pending
        states: [pending, paid, shipped, cancelled]
        transitions:
          pending: [paid, cancelled]
          paid: [shipped, cancelled]
        guards:                       # optional, by target state
          shipped: handlers:can_ship  # can_ship(record, to, data) -> bool

and reached as ``ctx.state.transition("<module>.order", id, "paid")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.base.errors import Problem
from core.contracts.module import ImportFailed

Guard = Callable[[Mapping[str, Any], str, Mapping[str, Any]], bool]
_KEYS = {"initial", "states", "transitions", "guards", "description"}


@dataclass(frozen=True)
class Machine:
    """A validated state machine."""

    kind: str
    initial: str
    states: frozenset[str]
    transitions: Mapping[str, frozenset[str]]
    guards: Mapping[str, Guard] = field(default_factory=dict)

    def allows(self, current: str, target: str) -> bool:
        return target in self.transitions.get(current, frozenset())


def parse_machine(
    kind: str, spec: Any, resolve: Callable[[str], Guard], where: dict[str, Any]
) -> tuple[Machine | None, list[Problem]]:
    """The machine for ``spec``, or the problems that stop it (each naming its field)."""
    field_prefix = f"state_machines.{kind.split('.', 1)[-1]}"

    def problem(message: str, suffix: str = "") -> Problem:
        return Problem(message, field=field_prefix + suffix, **where)

    if not isinstance(spec, dict):
        return None, [problem("must be a mapping with initial, states and transitions")]
    problems = [problem(f"unknown key {k!r}", f".{k}") for k in spec if k not in _KEYS]
    states = spec.get("states")
    if not isinstance(states, list) or not states or not all(isinstance(s, str) for s in states):
        return None, [*problems, problem("states must be a non-empty list of names", ".states")]
    known = frozenset(states)
    initial = spec.get("initial")
    if initial not in known:
        problems.append(problem(f"initial {initial!r} is not one of the states", ".initial"))
    transitions: dict[str, frozenset[str]] = {}
    raw = spec.get("transitions") or {}
    if not isinstance(raw, dict):
        problems.append(
            problem("transitions must map a state to the states it may go to", ".transitions")
        )
        raw = {}
    for source, targets in raw.items():
        if source not in known:
            problems.append(problem(f"unknown state {source!r}", f".transitions.{source}"))
            continue
        if not isinstance(targets, list) or not all(t in known for t in targets):
            problems.append(
                problem(
                    f"targets of {source!r} must be a list of known states",
                    f".transitions.{source}",
                )
            )
            continue
        transitions[source] = frozenset(targets)
    guards: dict[str, Guard] = {}
    for target, ref in (spec.get("guards") or {}).items():
        if target not in known:
            problems.append(problem(f"guard for unknown state {target!r}", f".guards.{target}"))
            continue
        try:
            guards[target] = resolve(ref)
        except ImportFailed as exc:  # named once, at the file that does not import
            problems.append(exc.problem)
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            problems.append(problem(f"guard {ref!r}: {exc}", f".guards.{target}"))
    if problems:
        return None, problems
    return Machine(kind, str(initial), known, transitions, guards), []


class MachineRegistry(Protocol):
    """What the module loader needs from the state manager."""

    def define(self, machine: Machine) -> None: ...
