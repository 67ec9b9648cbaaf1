"""``Headers``: a request's header fields as every transport hands them to the pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class Headers(Mapping[str, str]):
    """Header fields by name in any case (kept lower-case); a repeated field is folded into
    one value with ", " (RFC 9110 5.3), as the ASGI server and WSGI do."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        self._fields: dict[str, str] = {} if fields is None else fields  # lower-case names

    @classmethod
    def of(cls, fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> Headers:
        """From (name, value) pairs or a mapping, names in any case."""
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        folded: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            folded[key] = f"{folded[key]}, {value}" if key in folded else value
        return cls(folded)

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From an ASGI scope's ``headers`` (latin-1 bytes, names lower-case already)."""
        folded: dict[str, str] = {}
        for raw_name, raw_value in raw:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            folded[name] = f"{folded[name]}, {value}" if name in folded else value
        return cls(folded)

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._fields)})"  # names only: values may be credentials
