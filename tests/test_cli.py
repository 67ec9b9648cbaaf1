"""The command line, run as a real process: ``python app.py check|actions|call|new-module``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from app import ROOT

WriteModule = Callable[..., Path]

SYSTEM_ACTIONS = {"system.echo", "system.info", "system.ping"}
OK_LINE = re.compile(r"^ok: (\d+) module\(s\), (\d+) action\(s\)$", re.MULTILINE)


def run(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python app.py *args`` in the project root with APP_ENV=test (plus ``env``)."""
    environ = {k: v for k, v in os.environ.items() if k != "MODULES_PATH"}
    environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='sbtest')}/app.db"
    environ.update({"APP_ENV": "test", **(env or {})})
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        env=environ,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stdout_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stderr_json(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stderr)
    except ValueError:
        pytest.fail(f"stderr is not JSON:\n{result.stderr}")


# --- check ----------------------------------------------------------------------------


def test_check_the_project() -> None:
    result = run("check")
    assert result.returncode == 0, result.stderr
    match = OK_LINE.search(result.stdout)
    assert match is not None, result.stdout
    modules, actions = int(match[1]), int(match[2])
    assert modules >= 1
    listed = stdout_json(run("actions", "--json"))
    assert actions == len(listed) >= len(SYSTEM_ACTIONS)


def test_check_reports_every_problem_of_a_broken_module(write_module: WriteModule) -> None:
    extra = write_module(
        "broken",
        {
            "__init__.py": "",
            "actions.yaml": """\
                actions:
                  one:
                    hanlder: handlers:one
                    auth: public
                  two:
                    handler: handlers:missing
                    auth: public
            """,
            "handlers.py": """\
                def one(ctx):
                    return {}
            """,
        },
    )
    result = run("check", env={"MODULES_PATH": str(extra)})
    assert result.returncode == 1
    assert OK_LINE.search(result.stdout) is None
    lines = [line for line in result.stderr.splitlines() if "actions.yaml" in line]
    typo = [line for line in lines if "broken.one" in line and "hanlder" in line]
    missing = [line for line in lines if "broken.two" in line and "missing" in line]
    assert typo, result.stderr
    assert missing, result.stderr
    for line in (typo[0], missing[0]):
        assert "extra/broken/actions.yaml" in line
        assert "broken" in line
    assert "field=hanlder" in typo[0]
    assert "field=handler" in missing[0]


def test_check_reports_the_line_of_invalid_yaml(write_module: WriteModule) -> None:
    extra = write_module(
        "badyaml",
        {
            "__init__.py": "",
            "actions.yaml": "actions:\n  one:\n    handler: handlers:one\n   auth: [public\n",
        },
    )
    result = run("check", env={"MODULES_PATH": str(extra)})
    assert result.returncode == 1
    assert "badyaml/actions.yaml" in result.stderr
    assert re.search(r"line 4\b", result.stderr), result.stderr


def test_check_reports_a_handler_that_does_not_take_a_declared_param(
    write_module: WriteModule,
) -> None:
    extra = write_module(
        "sig",
        {
            "__init__.py": "",
            "actions.yaml": """\
                actions:
                  greet:
                    handler: handlers:greet
                    params:
                      name: {type: string, required: true}
            """,
            "handlers.py": "def greet(ctx):\n    return {}\n",
        },
    )
    result = run("check", env={"MODULES_PATH": str(extra)})
    assert result.returncode == 1
    assert "sig.greet" in result.stderr
    assert "params.name" in result.stderr


# --- actions --------------------------------------------------------------------------


def test_actions_lists_the_system_actions() -> None:
    result = run("actions")
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert names >= SYSTEM_ACTIONS
    echo = next(line for line in result.stdout.splitlines() if line.startswith("system.echo "))
    assert "public" in echo
    assert "Return the message it is given" in echo


def test_actions_json() -> None:
    listed = stdout_json(run("actions", "--json"))
    by_name = {entry["name"]: entry for entry in listed}
    assert set(by_name) >= SYSTEM_ACTIONS
    echo = by_name["system.echo"]
    assert echo["auth"] == "public"
    assert echo["params"]["required"] == ["message"]
    assert "message" in echo["params"]["properties"]


# --- call -----------------------------------------------------------------------------


def test_call_echo() -> None:
    body = stdout_json(run("call", "system.echo", "--json", '{"message":"hi"}'))
    assert body["data"] == {"message": "hi"}
    assert body["meta"]["action"] == "system.echo"
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", body["meta"]["request_id"])
    assert body["meta"]["duration_ms"] >= 0


def test_call_reads_params_from_stdin() -> None:
    result = run("call", "system.echo", "--json", "-", stdin='{"message": "from stdin"}')
    assert stdout_json(result)["data"] == {"message": "from stdin"}


def test_call_without_json_sends_empty_params() -> None:
    body = stdout_json(run("call", "system.ping"))
    assert body["data"] == {"pong": True}
    assert body["meta"]["action"] == "system.ping"


def test_call_unknown_action() -> None:
    result = run("call", "system.nope")
    assert result.returncode == 1
    assert result.stdout == ""
    problem = stderr_json(result)
    assert problem["type"] == "/problems/not-found"
    assert problem["status"] == 404
    assert "system.nope" in problem["detail"]


def test_call_with_invalid_json() -> None:
    result = run("call", "system.echo", "--json", "{bad")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr
    assert result.stdout == ""


def test_call_with_invalid_params() -> None:
    result = run("call", "system.echo", "--json", '{"message": 5}')
    assert result.returncode == 1
    problem = stderr_json(result)
    assert problem["type"] == "/problems/validation"
    assert problem["status"] == 422
    assert [e["path"] for e in problem["errors"]] == ["/message"]
    assert problem["request_id"]


def test_call_with_params_that_are_not_an_object() -> None:
    result = run("call", "system.echo", "--json", "[1, 2]")
    assert result.returncode == 1
    assert stderr_json(result)["type"] == "/problems/malformed-request"


def test_call_fails_on_a_broken_module_with_the_problem_list(write_module: WriteModule) -> None:
    extra = write_module(
        "broken", {"__init__.py": "", "actions.yaml": "actions:\n  one: {auth: public}\n"}
    )
    result = run("call", "system.ping", env={"MODULES_PATH": str(extra)})
    assert result.returncode == 1
    assert "broken.one" in result.stderr
    assert "Traceback" not in result.stderr


# --- new-module -----------------------------------------------------------------------


def test_new_module_creates_a_working_module(tmp_path: Path) -> None:
    created = run("new-module", "shop", "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "shop" / "actions.yaml").is_file()
    assert (tmp_path / "shop" / "handlers.py").is_file()
    env = {"MODULES_PATH": str(tmp_path)}

    project = OK_LINE.search(run("check").stdout)
    checked = run("check", env=env)
    assert checked.returncode == 0, checked.stderr
    match = OK_LINE.search(checked.stdout)
    assert project is not None
    assert match is not None, checked.stdout
    assert int(match[1]) == int(project[1]) + 1
    assert int(match[2]) == int(project[2]) + 1

    body = stdout_json(run("call", "shop.hello", "--json", '{"name":"ann"}', env=env))
    assert body["data"] == {"greeting": "hello, ann"}
    assert body["meta"]["action"] == "shop.hello"
    default = stdout_json(run("call", "shop.hello", env=env))
    assert default["data"] == {"greeting": "hello, world"}


def test_new_module_refuses_an_invalid_name(tmp_path: Path) -> None:
    result = run("new-module", "Bad-Name", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "Bad-Name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_module_refuses_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    result = run("new-module", "shop", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert list((tmp_path / "shop").iterdir()) == []
