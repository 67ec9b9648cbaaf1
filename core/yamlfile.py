"""Safe YAML loading whose errors name the file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# libyaml's parser when PyYAML was built with it (the wheels are): same documents, same
# error marks, about ten times faster than the pure-Python one on module declarations.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlFileError(ValueError):
    """A file is unreadable or is not valid YAML."""


def load_yaml_file(path: Path) -> Any:
    """Parse ``path`` with ``yaml.safe_load``; raise ``YamlFileError`` saying where it broke."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlFileError(f"cannot read file: {exc}") from exc
    try:
        return yaml.load(text, Loader=_LOADER)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlFileError(f"invalid YAML: {where}{exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise YamlFileError(f"invalid YAML: {exc}") from exc
