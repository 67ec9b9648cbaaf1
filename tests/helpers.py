"""Test helpers: the config chain as the app assembles it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from app import config_spec
from core.config import config_loader
from core.config.config import Config
from core.transports.http import extension
from managers.modules.manager import ModuleManager
from managers.vault.manager import Connect, vault_source


def load_config(
    root: Path,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    vault_connect: Connect | None = None,
) -> Config:
    """``core.config.config_loader.load_config`` with every setting this build declares; Vault is
    reached through ``vault_connect`` when given (a double)."""
    sources = None if vault_connect is None else [vault_source(vault_connect)]
    return config_loader.load_config(root, environ, overrides, spec=config_spec(sources=sources))


def module_object(app: Flask, name: str) -> Any:
    """The module object of ``name`` in ``app`` (its own attributes are the test's)."""
    loaded = extension(app).app_manager.get(ModuleManager).get(name)
    assert loaded is not None, f"no module {name!r}"
    return loaded.instance
