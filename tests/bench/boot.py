"""Boot time: ``python app.py check`` with 50 generated modules against the shipped ones."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_ACTION = """
  act{n}:
    summary: Generated action {n}
    handler: handlers:act{n}
    auth: user
    roles: [member]
    rate_limit: [{limit}/minute]
    params:
      name: {{type: string, minLength: 1, maxLength: 100, required: true}}
      amount: {{type: integer, minimum: 1, maximum: 1000000, required: true}}
      note: {{type: string, maxLength: 200}}
      tags: {{type: array, items: {{type: string, maxLength: 20}}, maxItems: 10}}
    returns: {{type: object, properties: {{ok: {{type: boolean}}}}, required: [ok]}}
"""
_HANDLER = "def act{n}(ctx, *, name, amount, note=None, tags=None):\n    return {{'ok': True}}\n"


@dataclass(frozen=True)
class Boot:
    modules: int
    actions: int
    shipped_s: float  # median wall seconds
    generated_s: float

    @property
    def ratio(self) -> float:
        return self.generated_s / self.shipped_s


def generate(parent: Path, modules: int = 50, actions: int = 10) -> None:
    for m in range(modules):
        folder = parent / f"gen{m:02d}"
        folder.mkdir(parents=True)
        (folder / "module.yaml").write_text(f"description: generated module {m}\n")
        (folder / "actions.yaml").write_text(
            "actions:\n" + "".join(_ACTION.format(n=n, limit=10 + n % 3) for n in range(actions))
        )
        (folder / "handlers.py").write_text("".join(_HANDLER.format(n=n) for n in range(actions)))


def _check(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "app.py", "check"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.perf_counter() - started


def measure(runs: int = 3) -> Boot:
    work = Path(tempfile.mkdtemp(prefix="sbboot"))
    generate(work / "modules")
    base = {k: v for k, v in os.environ.items() if k != "MODULES_PATH"}
    base.update({"APP_ENV": "test", "DATABASE_URL": f"sqlite:///{work}/boot.db"})
    shipped, generated = [], []
    _check(base)  # warm the file cache and byte-compiled imports
    for _ in range(runs):
        shipped.append(_check(base))
        generated.append(_check({**base, "MODULES_PATH": str(work / "modules")}))
    return Boot(50, 500, statistics.median(shipped), statistics.median(generated))
