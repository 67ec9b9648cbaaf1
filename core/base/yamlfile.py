"""Safe YAML loading whose errors name the file, line and column."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

# libyaml's parser when PyYAML was built with it (the wheels are): same documents, same
# error marks, about ten times faster than the pure-Python one on module declarations.
_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """A file is unreadable or is not valid YAML."""


Lines = dict[int, dict[Any, int]]  # id(mapping) -> {key: line (1-based)}


class _Loader(_BASE):  # type: ignore[valid-type,misc]
    """The safe loader, refusing a key written twice in one mapping (YAML says keys are
    unique; PyYAML would keep the last one silently, so a second ``add:`` action would
    replace the first), and noting the line of every key when asked to."""

    lines: Lines | None = None
    _keys: dict[Any, int]

    def construct_yaml_map(self, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        data.update(self.construct_mapping(node))
        if self.lines is not None:
            self.lines[id(data)] = self._keys

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._keys = {}
        first: dict[Any, tuple[int, int]] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            mark = (key_node.start_mark.line, key_node.start_mark.column)
            try:
                seen = first.setdefault(key, mark)
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            self._keys[key] = mark[0] + 1
            if seen != mark:
                raise YamlFileError(
                    f"duplicate key {key!r} at line {mark[0] + 1} (first at line "
                    f"{seen[0] + 1}); the second would silently replace the first"
                )
        keys = self._keys
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        self._keys = keys
        return result


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)


def key_line(
    tree: Any, lines: Mapping[int, Mapping[Any, int]], path: str | None, line: int | None = None
) -> int | None:
    """The line of the deepest key of the dotted ``path`` found in ``tree`` (a key may hold
    dots itself, as hook event names do: the longest match wins), else ``line``."""
    parts = path.split(".") if path else []
    node, index = tree, 0
    while index < len(parts):
        if isinstance(node, dict):
            for end in range(len(parts), index, -1):
                key = ".".join(parts[index:end])
                if key in node:
                    break
            else:
                return line
            line = lines.get(id(node), {}).get(key, line)
            node, index = node[key], end
        elif isinstance(node, list) and parts[index].isdigit() and int(parts[index]) < len(node):
            node, index = node[int(parts[index])], index + 1
        else:
            return line
    return line


def load_yaml_file(path: Path, lines: Lines | None = None) -> Any:
    """Parse ``path`` with a safe loader; raise ``YamlFileError`` saying where it broke.
    With ``lines``, the line of every mapping key is noted there (``id(mapping)`` ->
    ``{key: line}``) while the returned document is alive."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlFileError(f"cannot read file: {exc}") from exc
    try:
        loader = _Loader(text)  # a safe loader
        loader.lines = lines
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlFileError(f"invalid YAML: {where}{exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise YamlFileError(f"invalid YAML: {exc}") from exc
