"""The module contract: the manifest of ``module.yaml``, ``BaseModule``'s lifecycle, and the
catalog of loaded modules that managers read in the modules-loaded phase."""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.base.errors import Problem
from core.base.health import Health
from core.base.yamlfile import key_line

if TYPE_CHECKING:
    import types

    from core.contracts.context import Context

MODULE_PACKAGE = "switchboard_modules"  # each module imports as switchboard_modules.<name>
MODULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
MANIFEST_KEYS = frozenset(
    {
        "name",
        "version",
        "description",
        "depends_on",
        "requires",
        "secrets",
        "state_machines",
        "rooms",
        "services",
        "hooks",
        "events",
        "config",
        "config_schema",
    }
)


@dataclass(frozen=True)
class ModuleManifest:
    """What ``module.yaml`` says about a module (every key optional)."""

    name: str
    path: Path
    version: str = "0.0.0"
    description: str = ""
    depends_on: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    state_machines: Mapping[str, Any] = field(default_factory=dict)
    rooms: Mapping[str, Any] = field(default_factory=dict)
    services: Mapping[str, Any] = field(default_factory=dict)
    hooks: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    config_schema: Mapping[str, Any] | None = None
    file: str = ""  # its module.yaml as problems name it (relative to the project)
    document: Any = field(default=None, compare=False, repr=False)  # module.yaml as loaded
    lines: Mapping[int, Mapping[Any, int]] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, at: str | None) -> int | None:
        """The line in module.yaml of the deepest key of the dotted ``at`` found."""
        return key_line(self.document, self.lines, at)


class BaseModule:
    """Base class a module's ``__init__.py`` may export to hook into its lifecycle.

    The loader creates the object and sets ``module_name``, ``manifest``, ``settings``
    (module.yaml ``config:`` merged with the operator's settings) and ``ctx`` (a context of
    this module with the ``system`` caller: ``self.ctx.db``, ``self.ctx.cache``, ...), then
    calls ``initialize(app_manager)`` and ``configure()`` in dependency order and
    ``register_routes()`` once every module is up. ``dispose()`` runs in reverse order at
    shutdown. Seed-format actions (``type: function``) call ``_<function>(args)`` on it.
    """

    module_name: str
    manifest: ModuleManifest
    settings: Mapping[str, Any]
    ctx: Context

    # The AppManager that booted the module; typed loosely here (the contract is below the
    # runtime): handlers reach managers through ``ctx``, not through it.
    def __init__(self, app_manager: Any = None) -> None:
        self.app_manager = app_manager
        self.dependencies: list[str] = []
        self.module_name = type(self).__name__

    def initialize(self, app_manager: Any) -> None:
        """Acquire what the module needs; raising here fails the module (and, strict, the boot)."""
        self.app_manager = app_manager

    def configure(self) -> None:
        """Apply configuration after ``initialize``."""

    def register_routes(self) -> None:
        """Add extra Flask routes through ``self.app_manager.flask`` (optional)."""

    def dispose(self) -> None:
        """Release what ``initialize`` acquired."""

    def declare_dependencies(self) -> list[str]:
        """Modules this one needs, in addition to module.yaml ``depends_on``."""
        return list(self.dependencies)

    def health_check(self) -> Health | dict[str, Any]:
        """``Health`` (or a dict with a ``status`` key) for ``/health/ready``."""
        return Health()


@dataclass
class LoadedModule:
    """A discovered module and how its lifecycle went."""

    manifest: ModuleManifest
    package: types.ModuleType
    instance: BaseModule
    status: str = "pending"  # pending | ok | failed
    error: str | None = None
    depends_on: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.manifest.name


class ModuleCatalog(Protocol):
    """The loaded modules, in load order (``ctx.modules``; what managers read once modules
    have loaded)."""

    def __iter__(self) -> Iterator[LoadedModule]: ...

    def get(self, name: str) -> LoadedModule | None: ...

    def names(self) -> list[str]: ...

    def unavailable_reason(self, module: str) -> str | None: ...


class RefError(ValueError):
    """A ``"python_module:function"`` reference cannot be resolved; says why."""


def _label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def failure_place(exc: BaseException, folder: Path | None) -> tuple[str, int | None]:
    """Where an import failed: the file and line of a SyntaxError, else the innermost
    frame inside ``folder`` (the module's own code), else the folder."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return _label(Path(exc.filename)), exc.lineno
    if folder is not None:
        inside = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if Path(frame.filename).resolve().is_relative_to(folder.resolve())
        ]
        if inside:
            return _label(Path(inside[-1].filename)), inside[-1].lineno
        return _label(folder), None
    return "", None


def failure_problem(module: str, stage: str, exc: BaseException, folder: Path) -> Problem:
    """A module's lifecycle method that raised, at the line of its own code that did."""
    file, line = failure_place(exc, folder)
    return Problem(
        f"{stage} failed: {type(exc).__name__}: {exc}", file=file or None, module=module, line=line
    )


class ImportFailed(RefError):
    """A file of the module does not import. Every reference to it (actions, guards, hooks)
    reports the same ``problem``, which names the file and line once."""

    def __init__(self, module: str, exc: BaseException, folder: Path | None) -> None:
        file, line = failure_place(exc, folder)
        detail = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        self.text = f"{type(exc).__name__}: {detail}"
        where = f"{file}:{line}" if line else file
        self.problem = Problem(
            f"cannot import: {self.text}", file=file or None, module=module, line=line
        )
        super().__init__(f"{where}: {self.text}")


def resolve_ref(module: str, ref: str) -> Callable[..., Any]:
    """``"handlers:transfer"`` -> ``switchboard_modules.<module>.handlers.transfer``."""
    module_path, _, attr = ref.partition(":")
    if not module_path or not attr:
        raise RefError(f"{ref!r}: write it as 'python_module:function'")
    qualified = f"{MODULE_PACKAGE}.{module}.{module_path}"
    package = sys.modules.get(f"{MODULE_PACKAGE}.{module}")
    paths = getattr(package, "__path__", None) or []
    folder = Path(next(iter(paths))) if paths else None
    try:
        python_module = importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            raise RefError(f"{module_path}.py not found in module {module!r}") from exc
        raise ImportFailed(module, exc, folder) from exc
    except (Exception, SystemExit) as exc:  # a file that does not import: the module's problem
        raise ImportFailed(module, exc, folder) from exc
    function = getattr(python_module, attr, None)
    if function is None:
        names = [n for n, v in vars(python_module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RefError(f"{module_path}.py has no function {attr!r}{hint}")
    if not callable(function):
        raise RefError(f"{ref} is not callable")
    return function  # type: ignore[no-any-return]
