"""Development secrets: generated once into ``var/dev-secrets/`` and shared by every process.

Outside production a missing JWT key or API-key pepper is made here (mode 0600) the first
time any process needs it, so the server and the CLI agree: a key created by
``python app.py keys create`` works on the server. Production never generates: it refuses
to start, naming the setting to provide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from core.base.errors import ConfigError, Problem
from core.config.config import Config

DIRECTORY = Path("var") / "dev-secrets"


def dev_secret(config: Config, setting: str, filename: str, generate: Callable[[], bytes]) -> bytes:
    """The value of ``setting`` if configured, else the shared development value."""
    configured = config[setting]
    if configured:
        return str(configured).encode()
    if config.is_production:
        raise ConfigError(
            [
                Problem(
                    f"{setting} is required in production; set "
                    f"SB_{setting.replace('.', '__').upper()} (or a secret file / Vault entry): "
                    "development values are never generated there",
                    field=setting,
                )
            ]
        )
    directory = config.path(str(DIRECTORY))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / filename
    try:
        # O_EXCL: of several processes starting at once exactly one writes the secret.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_complete(path)
    with os.fdopen(descriptor, "wb") as out:
        out.write(generate())
    return path.read_bytes()


def _read_complete(path: Path) -> bytes:
    """Another process may still be writing it: wait briefly for a non-empty file."""
    for _ in range(50):
        data = path.read_bytes()
        if data:
            return data
        time.sleep(0.02)
    raise ConfigError([Problem(f"{path} is empty; delete it to generate a new one")])
