"""The README and the generated OpenAPI document stay true to the code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from app import ROOT
from core.transports.http import extension
from tests.helpers import load_config
from tests.served import running
from tests.test_auth import make_admin


def test_readme_documents_every_setting_and_its_environment_names() -> None:
    # The kernel's, every manager's and the shipped modules' (auth.password_min_length).
    settings = load_config(ROOT, {"APP_ENV": "test"}).settings
    readme = (ROOT / "README.md").read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z_]+\.[a-z_.]+)` \| (`SB_[^|]+|YAML only) \|", readme, re.M)
    }
    assert set(rows) == set(settings)
    for key, setting in settings.items():
        if setting.is_mapping:
            continue  # YAML only
        assert f"`{setting.env_name}`" in rows[key], key
        if setting.alias:
            assert f"`{setting.alias}`" in rows[key], key


def test_readme_shows_the_two_commands_first() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.index("## Quick start")
    assert readme.index("make run") > quick_start
    assert readme.index("make test") > quick_start
    assert readme.index("make run") < readme.index("## Writing a module")


def test_openapi_document_is_valid_and_lists_every_action(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    echo = document["paths"]["/api/v1/actions/system.echo"]["post"]
    schema = echo["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["message"]
    assert schema["additionalProperties"] is False
    assert echo["security"] == []
    assert {"/api/v1/actions/system.ping", "/api/v1/actions/system.info"} <= set(document["paths"])


# --- the readable API: /docs ---------------------------------------------------------


def test_openapi_documents_every_action_whatever_the_caller(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    declared = {a.spec.name for a in extension(client.application).pipeline.registry.actions()}
    prefix = "/api/v1/actions/"
    assert {p[len(prefix) :] for p in document["paths"] if p.startswith(prefix)} == declared
    search = document["paths"]["/api/v1/actions/audit.search"]["post"]
    assert "**roles:** admin" in search["description"]
    assert {"401", "403", "422", "429"} <= set(search["responses"])
    assert search["x-switchboard"]["roles"] == ["admin"]
    example = search["requestBody"]["content"]["application/json"]["examples"]["example1"]
    assert example["value"]["action"] == "credits.transfer"
    transfer = document["paths"]["/api/v1/actions/credits.transfer"]["post"]
    assert transfer["parameters"][0]["name"] == "Idempotency-Key"
    assert {"409"} <= set(transfer["responses"])


def test_the_docs_listing_is_the_callers_own(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "/docs/assets/swagger-ui-bundle.js" in page.get_data(as_text=True)
    assert "cdn" not in page.get_data(as_text=True).lower()
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/index.html").status_code == 404
    anonymous = set(client.get("/docs/openapi.json").get_json()["paths"])
    assert "/api/v1/actions/system.echo" in anonymous
    assert "/api/v1/actions/audit.search" not in anonymous
    admin = make_admin(app, client, "docs@example.com")
    mine = client.get("/docs/openapi.json", headers={"Authorization": f"Bearer {admin}"})
    assert "/api/v1/actions/audit.search" in mine.get_json()["paths"]
    validate(mine.get_json())


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is missing (make test installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_a_browser_renders_the_actions(tmp_path: Path) -> None:
    browser = _chromium()
    with running(tmp_path, "serve") as server:
        flags = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--window-size=1280,2400",
        ]
        shot = tmp_path / "docs.png"
        dom = subprocess.run(
            [*flags, "--dump-dom", f"{server.base}/docs"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        subprocess.run(
            [*flags, f"--screenshot={shot}", f"{server.base}/docs"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    rendered = dom.stdout
    assert "opblock" in rendered, dom.stderr[-2000:]  # Swagger UI drew operations
    for action in ("system.echo", "system.ping", "auth.login"):
        assert f"/api/v1/actions/{action}" in rendered
    assert "/api/v1/actions/audit.search" not in rendered  # not the anonymous reader's
    assert shot.exists() and shot.stat().st_size > 20_000
