"""The loaded configuration (``ctx.config``); the ``config`` manager that refreshes it is
``core.runtime.config_manager``.

How values are found is ``core.config_loader``; what production refuses is
``core.config_policy``. A value may be a reference, ``file://<path>`` or
``<scheme>://<target>`` of a document source (``vault://<path>#<key>``); references are
re-read every ``refresh``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from core.base.errors import ActionError
from core.config.settings import Setting

REDACTED = "***"
log = logging.getLogger("switchboard.config")


@dataclass(frozen=True)
class Value:
    """A resolved setting, where it came from, and whether it must never be shown."""

    value: Any
    source: str
    sensitive: bool = False
    reference: str | None = None  # the file:// or <scheme>:// it came from, re-read on refresh


@runtime_checkable
class ReferenceResolver(Protocol):
    """Resolves ``<scheme>://<target>`` references at run time (Vault's, for instance)."""

    scheme: str
    refresh_interval: float  # how often settings that refer to it are re-read (seconds)

    def resolve_reference(self, target: str) -> Any:
        """The value ``target`` names; ``ValueError`` saying why there is none."""
        ...


def read_file_reference(root: Path, target: str) -> str:
    """``file://<target>``: the file's text without its final newline."""
    path = Path(target)
    path = path if path.is_absolute() else root / path
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise ValueError(f"cannot read file://{target}: {exc.strerror}") from None


class Config:
    """Read-only, typed settings of one app (``ctx.config``)."""

    def __init__(
        self, root: Path, values: Mapping[str, Value], settings: Mapping[str, Setting]
    ) -> None:
        self.root = root
        self._values = dict(values)
        self._settings = settings

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key].value
        except KeyError:
            raise KeyError(f"unknown setting {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def get(self, key: str, default: Any = None) -> Any:
        entry = self._values.get(key)
        return default if entry is None else entry.value

    def source(self, key: str) -> str:
        return self._values[key].source

    @property
    def settings(self) -> Mapping[str, Setting]:
        """The declarations behind the values (kernel, managers, modules)."""
        return self._settings

    @property
    def env(self) -> str:
        return str(self["app.env"])

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def path(self, value: str) -> Path:
        """A path setting resolved against the project root (absolute paths stay)."""
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    def refresh(self, resolvers: Mapping[str, Callable[[str], Any]]) -> list[str]:
        """Re-read every reference; return the keys that changed.

        ``resolvers`` maps a scheme (``vault``) to what reads its targets; ``file://`` is
        read here. A reference that fails now keeps its last value (logged), so an outage
        never takes a setting away. Values that managers copied at boot need a restart.
        """
        changed = []
        for key, entry in list(self._values.items()):
            if entry.reference is None:
                continue
            scheme, _, target = entry.reference.partition("://")
            try:
                if scheme == "file":
                    raw: Any = read_file_reference(self.root, target)
                elif scheme in resolvers:
                    raw = resolvers[scheme](target)
                else:
                    continue
                value = self._settings[key].coerce(raw, from_text=True)
            except (ValueError, KeyError, OSError, ActionError) as exc:
                log.warning("could not refresh %s from its reference: %s", key, type(exc).__name__)
                continue
            if value != entry.value:
                self._values[key] = Value(value, entry.source, entry.sensitive, entry.reference)
                changed.append(key)
        return changed

    def has_references(self) -> bool:
        return any(entry.reference for entry in self._values.values())

    def secret_values(self) -> frozenset[str]:
        """Every sensitive value as text, for the log redaction filter."""
        return frozenset(
            str(entry.value)
            for entry in self._values.values()
            if entry.sensitive and entry.value and len(str(entry.value)) >= 4
        )

    def describe(self) -> Iterator[tuple[str, Any, str]]:
        """(key, value, source) for every setting, secrets redacted."""
        for key in sorted(self._values):
            entry = self._values[key]
            shown = REDACTED if entry.sensitive and entry.value else entry.value
            yield key, shown, entry.source
