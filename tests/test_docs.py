"""The README and the generated OpenAPI document stay true to the code."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from openapi_spec_validator import validate

from app import ROOT
from tests.helpers import load_config


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
