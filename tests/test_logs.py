"""Log lines: the call's fields, and rotating files, one per process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.served import running


def test_lines_carry_the_request_id_action_and_caller(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="switchboard.audit"):
        response = client.post(
            "/api/v1/actions/system.echo", json={"message": "hi"}, headers={"X-Request-ID": "r-1"}
        )
    assert response.status_code == 200
    audit = [r for r in caplog.records if r.name == "switchboard.audit"]
    assert audit and audit[-1].request_id == "r-1"  # type: ignore[attr-defined]
    assert audit[-1].action == "system.echo"  # type: ignore[attr-defined]
    assert audit[-1].caller == "anonymous"  # type: ignore[attr-defined]


def test_each_process_writes_its_own_rotating_file(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    logs = tmp_path / "logs"
    env = {
        "REDIS_URL": redis_url,
        "SB_REDIS__PREFIX": redis_prefix,
        "SB_LOGGING__FILE": str(logs / "switchboard.log"),
        "SB_LOGGING__MAX_BYTES": "4096",
        "SB_LOGGING__BACKUPS": "2",
        "SB_LOGGING__LEVEL": "INFO",
    }
    body = json.dumps({"message": "hi"}).encode()
    with running(tmp_path, "serve", "--workers", "2", env=env) as server:
        for _ in range(150):
            assert server.post("/api/v1/actions/system.echo", body).status == 200
        assert server.stop() == 0
    current = sorted(logs.glob("switchboard.*.log"))
    pids = {path.name.split(".")[1] for path in logs.iterdir()}
    assert len(pids) >= 2, sorted(p.name for p in logs.iterdir())  # the workers, the supervisor
    for path in current:
        backups = sorted(logs.glob(path.name + ".*"))
        assert len(backups) <= 2
        for file in [path, *backups]:
            assert file.stat().st_size <= 4096 + 2048  # rotated before a line would cross it
    lines = [json.loads(line) for path in logs.iterdir() for line in path.read_text().splitlines()]
    audited = [line for line in lines if line["logger"] == "switchboard.audit"]
    assert audited, "no audit line in the files"
    assert all(line["action"] == "system.echo" for line in audited)
    assert all(line["request_id"] and line["caller"] == "anonymous" for line in audited)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert "audit" not in server.output()  # nothing went to stderr instead
