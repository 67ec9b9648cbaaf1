"""A new module author's tour, scripted: scaffold a module, break it in each of the ways
authors do and read one precise problem each time, fix it, serve it with --reload, change a
handler and see the change without a restart, and run the scaffolded tests green.

Everything goes through ``python app.py`` processes, as the author would type it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import ROOT
from tests.servers import free_port

MODULE_YAML = """\
name: bookshelf
version: 0.1.0
config:
  page_size: 20
state_machines:
  loan:
    initial: out
    states: [out, back]
    transitions: {out: [back]}
    guards: {back: "handlers:can_return"}
"""
HANDLERS = """\
def hello(ctx, *, name="world"):
    return {"greeting": f"hello, {name}"}


def can_return(ctx, instance, target):
    return True
"""


def app_py(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    modules = tmp_path / "mods"
    modules.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SB_", "MODULES_PATH"))}
    env.update(
        {
            "APP_ENV": "development",
            "MODULES_PATH": str(modules),
            "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
            "REDIS_URL": "memory://",
        }
    )
    yield modules, env


def one_problem(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def post(port: int, action: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/actions/{action}",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        body: dict[str, object] = json.loads(answer.read())
        return body


def test_a_module_authors_tour(tour: tuple[Path, dict[str, str]]) -> None:
    modules, env = tour
    created = app_py("new-module", "bookshelf", "--dir", str(modules), env=env)
    assert created.returncode == 0, created.stderr
    folder = modules / "bookshelf"
    (folder / "module.yaml").write_text(MODULE_YAML)
    (folder / "handlers.py").write_text(HANDLERS)
    good_actions = (folder / "actions.yaml").read_text()
    assert app_py("check", env=env).returncode == 0

    def broken(file: str, text: str, *, extra_env: dict[str, str] | None = None) -> str:
        path = folder / file
        kept = path.read_text()
        path.write_text(text)
        try:
            return one_problem(app_py("check", env={**env, **(extra_env or {})}))
        finally:
            path.write_text(kept)

    # A syntax error in handlers.py, which module.yaml's guard and the action both name:
    # one problem, at the file and line.
    problem = broken(
        "handlers.py",
        HANDLERS.replace("def can_return(ctx, instance, target):", "def can_return(ctx)"),
    )
    assert "bookshelf/handlers.py:5" in problem and "SyntaxError" in problem

    # A key written twice: the second would have replaced the first.
    twice = good_actions + "  hello:\n    handler: handlers:hello\n"
    problem = broken("actions.yaml", twice)
    assert "duplicate key 'hello'" in problem and "first at line 2" in problem

    # Typos get a likely meaning and a line.
    problem = broken(
        "actions.yaml", good_actions.replace("handler: handlers:hello", "hanlder: handlers:hello")
    )
    assert (
        "unknown key 'hanlder' (did you mean 'handler'?)" in problem and "actions.yaml:4" in problem
    )
    problem = broken("actions.yaml", good_actions.replace("handlers:hello", "handlers:helo"))
    assert "no function 'helo' (did you mean 'hello'?)" in problem
    problem = broken("actions.yaml", good_actions.replace("{type: string,", "{type: str,"))
    assert "type 'str' is not a JSON Schema type (did you mean 'string'?)" in problem
    problem = broken(
        "actions.yaml",
        good_actions.split("    params:")[0] + "    params:\n    rate_limit: [10/minute]\n",
    )
    assert "params is empty" in problem
    problem = broken(
        "actions.yaml",
        good_actions.replace("    params:", "    rate_limit: [10 a minute]\n    params:"),
    )
    assert "is not a rate: write N/second, N/minute, N/hour or N/day" in problem

    # Settings: an unknown key, a wrong type, a module that does not exist.
    problem = broken("actions.yaml", good_actions, extra_env={"SB_BOOKSHELF__PAGE_SISE": "3"})
    assert "did you mean 'bookshelf.page_size'?" in problem
    problem = broken("actions.yaml", good_actions, extra_env={"SB_BOOKSHELF__PAGE_SIZE": "lots"})
    assert "expected an integer" in problem
    problem = broken("actions.yaml", good_actions, extra_env={"SB_BOOKSTORE__PAGE_SIZE": "3"})
    assert "nothing has settings under 'bookstore'" in problem

    # Likely mistakes that still load are warnings: check says so and passes.
    (folder / "module.yaml").write_text(MODULE_YAML.replace("name: bookshelf", "name: library"))
    warned = app_py("check", env=env)
    assert (
        warned.returncode == 0
        and "warning:" in warned.stderr
        and "its folder is 'bookshelf'" in warned.stderr
    )
    (folder / "module.yaml").write_text(MODULE_YAML)
    # A private path of the kernel: it may move, so check says which line to change.
    handlers = (folder / "handlers.py").read_text()
    (folder / "handlers.py").write_text("from core.base.errors import NotFound\n" + handlers)
    warned = app_py("check", env=env)
    assert warned.returncode == 0, warned.stderr
    assert "handlers.py:1" in warned.stderr and "imports core.base.errors" in warned.stderr
    assert "core.errors, core.module, core.calls, core.testing" in warned.stderr
    (folder / "handlers.py").write_text(handlers)

    # Serve with --reload; a handler change is served without a restart by hand, and a
    # broken change leaves the old code serving while the problem is printed.
    port = free_port()
    log = folder.parent.parent / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "serve", "--reload", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert eventually(lambda: post(port, "bookshelf.hello")["data"]) == {
            "greeting": "hello, world"
        }
        (folder / "handlers.py").write_text(HANDLERS.replace("hello, {name}", "welcome, {name}"))
        assert eventually(
            lambda: post(port, "bookshelf.hello")["data"] == {"greeting": "welcome, world"} or None
        )
        (folder / "handlers.py").write_text(
            HANDLERS.replace('def hello(ctx, *, name="world"):', "def hello(ctx")
        )
        assert eventually(lambda: "the change does not load" in log.read_text() or None)
        assert post(port, "bookshelf.hello")["data"] == {"greeting": "welcome, world"}
        assert "bookshelf/handlers.py:1" in log.read_text()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    (folder / "handlers.py").write_text(HANDLERS)

    # The scaffolded tests, green.
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "3 passed" in ran.stdout


def eventually(probe: object, timeout: float = 30.0) -> object:
    """``probe()``'s first truthy result within ``timeout`` (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()  # type: ignore[operator]
        except Exception as exc:  # the server may be (re)starting
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {last!r}")
