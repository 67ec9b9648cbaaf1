"""The upper levels of the chain: secret files, Vault, references; production refusals;
secrets kept out of logs and out of ``python app.py config``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from app import ROOT
from core.base.errors import ConfigError
from core.base.logging import configure_logging, flush_logs
from core.runtime.config_manager import ConfigManager
from managers.vault.manager import read_reference
from tests.conftest import MakeApp, WriteModule
from tests.helpers import load_config


class FakeVault:
    """A SecretReader with fixed documents; records how it was connected."""

    def __init__(self, documents: Mapping[str, Mapping[str, Any]]) -> None:
        self.documents = documents
        self.settings: Mapping[str, Any] = {}

    def connect(self, settings: Mapping[str, Any], root: Path) -> FakeVault:
        self.settings = dict(settings)
        return self

    def read(self, path: str) -> Mapping[str, Any]:
        return self.documents[path]


def project(tmp_path: Path, default: str = "") -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "default.yaml").write_text(default)
    return tmp_path


def secret_dir(base: Path, name: str, **files: str) -> Path:
    directory = base / name
    directory.mkdir()
    for key, value in files.items():
        (directory / key.replace("__", ".")).write_text(value + "\n")
    return directory


def test_each_level_beats_the_ones_below(tmp_path: Path) -> None:
    root = project(tmp_path, "http: {port: 1001}\napp: {name: from-yaml}\n")
    mount = secret_dir(tmp_path, "mount", http__port="1004")
    local = secret_dir(tmp_path, "local", http__port="1005", logging__level="ERROR")
    vault = FakeVault(
        {
            "switchboard/config": {
                "http": {"port": "1003"},
                "app.name": "vaulted",
                "logging": {"level": "DEBUG"},
            }
        }
    )
    environ = {
        "SB_HTTP__PORT": "1002",
        "SB_APP__NAME": "from-env",
        "VAULT_ADDR": "http://v",
        "SB_SECRETS__MOUNTS": str(mount),
        "SECRETS_DIR": str(local),
    }
    config = load_config(root, environ, vault_connect=vault.connect)
    assert config["http.port"] == 1004  # secret file (the first directory wins)
    assert config.source("http.port") == f"secret file {mount / 'http.port'}"
    assert config["logging.level"] == "ERROR"  # secrets.dir: a secret file beats Vault
    assert config["app.name"] == "vaulted"  # Vault beats the environment
    assert config.source("app.name") == "vault switchboard/config"
    without_secrets = load_config(
        root,
        {**environ, "SB_SECRETS__MOUNTS": "", "SECRETS_DIR": str(tmp_path / "none")},
        vault_connect=vault.connect,
    )
    assert without_secrets["http.port"] == 1003  # then Vault
    without_vault = load_config(root, {"SB_HTTP__PORT": "1002", "SB_SECRETS__MOUNTS": ""})
    assert without_vault["http.port"] == 1002  # then the environment
    assert load_config(root, {"SB_SECRETS__MOUNTS": ""})["http.port"] == 1001  # then YAML


def test_vault_settings_come_from_the_other_levels(tmp_path: Path) -> None:
    root = project(tmp_path)
    mount = secret_dir(tmp_path, "mount", vault__token="s.from-a-secret-file")
    vault = FakeVault({"switchboard/config": {}})
    load_config(
        root,
        {"VAULT_ADDR": "http://vault:8200", "SB_SECRETS__MOUNTS": str(mount)},
        vault_connect=vault.connect,
    )
    assert vault.settings["vault.token"] == "s.from-a-secret-file"
    assert vault.settings["vault.addr"] == "http://vault:8200"


def test_vault_cannot_configure_itself_or_unknown_keys(tmp_path: Path) -> None:
    vault = FakeVault({"switchboard/config": {"vault.token": "x", "htp": {"port": 1}}})
    with pytest.raises(ConfigError) as caught:
        load_config(
            project(tmp_path),
            {"VAULT_ADDR": "http://v", "SB_SECRETS__MOUNTS": ""},
            vault_connect=vault.connect,
        )
    text = str(caught.value)
    assert "vault.token cannot be set in Vault itself" in text
    assert "unknown setting 'htp.port'" in text and "vault switchboard/config" in text


def test_references_to_files_and_vault(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "pepper.txt").write_text("a-pepper-of-forty-characters-0123456789\n")
    vault = FakeVault({"switchboard/config": {}, "apps/jwt": {"secret": "vaulted-hmac-secret"}})
    environ = {
        "SB_API_KEYS__PEPPER": "file://pepper.txt",
        "SB_JWT__SECRET": "vault://apps/jwt#secret",
        "VAULT_ADDR": "http://v",
        "SB_SECRETS__MOUNTS": "",
    }
    config = load_config(root, environ, vault_connect=vault.connect)
    assert config["api_keys.pepper"] == "a-pepper-of-forty-characters-0123456789"
    assert config["jwt.secret"] == "vaulted-hmac-secret"
    assert config.source("jwt.secret") == "env SB_JWT__SECRET (vault://apps/jwt#secret)"
    shown = {key: value for key, value, _ in config.describe()}
    assert shown["jwt.secret"] == "***" and shown["api_keys.pepper"] == "***"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("file://missing.txt", "cannot read file://missing.txt"),
        ("vault://apps/jwt#nope", "has no key 'nope'"),
        ("vault://apps/none#secret", "no secret at apps/none"),
        ("vault://apps/jwt", "vault://<path>#<key>"),
    ],
)
def test_broken_references_name_the_setting(tmp_path: Path, value: str, words: str) -> None:
    vault = FakeVault({"switchboard/config": {}, "apps/jwt": {"secret": "x"}})
    with pytest.raises(ConfigError) as caught:
        load_config(
            project(tmp_path),
            {"SB_JWT__SECRET": value, "VAULT_ADDR": "http://v", "SB_SECRETS__MOUNTS": ""},
            vault_connect=vault.connect,
        )
    problem = caught.value.problems[0]
    assert problem.field == "jwt.secret" and words in problem.message


def test_a_vault_reference_without_vault_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"vault\.addr is not set"):
        load_config(project(tmp_path), {"SB_JWT__SECRET": "vault://a#b", "SB_SECRETS__MOUNTS": ""})


PRODUCTION_OK = {
    "APP_ENV": "production",
    "SB_JWT__PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----",
    "SB_API_KEYS__PEPPER": "p" * 40,
    "SB_EXECUTIONS__SECRET_KEY": "e" * 40,
    "REDIS_URL": "redis://cache/0",
    "SB_SECRETS__MOUNTS": "",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"SB_JWT__ALGORITHM": "HS256"}, "jwt.algorithm"),
        ({"SB_JWT__PRIVATE_KEY": ""}, "jwt.private_key"),
        ({"SB_API_KEYS__PEPPER": ""}, "api_keys.pepper"),
        ({"SB_EXECUTIONS__SECRET_KEY": ""}, "executions.secret_key"),
        ({"REDIS_URL": "memory://", "SB_HTTP__WORKERS": "2"}, "redis.url"),
        ({"SB_APP__DEBUG": "true"}, "app.debug"),
        ({"SB_HTTP__CORS_ORIGINS": "https://a.example,*"}, "http.cors_origins"),
    ],
)
def test_production_refuses_unsafe_settings(
    tmp_path: Path, change: dict[str, str], field: str
) -> None:
    root = project(tmp_path)
    assert load_config(root, PRODUCTION_OK).is_production
    with pytest.raises(ConfigError) as caught:
        load_config(root, {**PRODUCTION_OK, **change})
    assert [p.field for p in caught.value.problems] == [field]
    assert len(caught.value.problems[0].message) > 40  # says how to fix it


def test_every_refusal_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            project(tmp_path),
            {"APP_ENV": "production", "SB_APP__DEBUG": "true", "SB_SECRETS__MOUNTS": ""},
        )
    assert {p.field for p in caught.value.problems} >= {
        "jwt.private_key",
        "api_keys.pepper",
        "executions.secret_key",
        "app.debug",
    }


def test_known_secrets_are_redacted_from_logs(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json", secrets=frozenset({"hunter2-database-password"}))
    try:
        logging.getLogger("switchboard.test").warning(
            "connecting with %s", "postgresql://app:hunter2-database-password@db/x"
        )
        try:
            raise RuntimeError("auth failed for hunter2-database-password")
        except RuntimeError:
            logging.getLogger("switchboard.test").exception("boom")
    finally:
        configure_logging("WARNING", "json")
    flush_logs()
    err = capfd.readouterr().err
    assert "hunter2-database-password" not in err
    assert "postgresql://app:***@db/x" in err and "auth failed for ***" in err


def test_secret_params_are_redacted_from_what_handlers_log(
    make_app: MakeApp, write_module: WriteModule, capfd: pytest.CaptureFixture[str]
) -> None:
    parent = write_module(
        "leaky",
        {
            "actions.yaml": """
            actions:
              enter:
                handler: handlers:enter
                auth: public
                params:
                  pin: {type: string, secret: true, required: true}
            """,
            "handlers.py": "def enter(ctx, *, pin):\n"
            "    ctx.logger.warning('checking pin %s', pin)\n"
            "    return {'ok': True}\n",
        },
    )
    app = make_app({"MODULES_PATH": str(parent)})
    flush_logs()
    capfd.readouterr()
    response = app.test_client().post("/api/v1/actions/leaky.enter", json={"pin": "zqxvkp"})
    assert response.status_code == 200
    flush_logs()
    err = capfd.readouterr().err
    assert "checking pin ***" in err and "zqxvkp" not in err


def test_cors_allows_only_the_configured_origins(make_app: MakeApp) -> None:
    client = make_app({"SB_HTTP__CORS_ORIGINS": "https://app.example"}).test_client()
    allowed = client.post("/api/v1/actions/system.ping", headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "RateLimit" in allowed.headers["Access-Control-Expose-Headers"]
    other = client.post("/api/v1/actions/system.ping", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options(
        "/api/v1/actions/system.ping",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_the_config_command_shows_sources_and_hides_secrets(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "APP_ENV": "test",
        "SB_JWT__SECRET": "cli-visible-secret-value",
        "DATABASE_URL": "postgresql://app:db-password-here@db/x",
        "SB_HTTP__PORT": "9123",
    }
    env.pop("MODULES_PATH", None)
    done = subprocess.run(
        [sys.executable, "app.py", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "9123" in lines["http.port"] and "(env SB_HTTP__PORT)" in lines["http.port"]
    assert '"***"' in lines["jwt.secret"] and '"***"' in lines["database.url"]
    assert "(config/default.yaml)" in lines["http.host"]
    assert "cli-visible-secret-value" not in done.stdout + done.stderr
    assert "db-password-here" not in done.stdout + done.stderr


def test_vault_end_to_end_config_document_and_ctx_secrets(
    make_app: MakeApp, write_module: WriteModule, capfd: pytest.CaptureFixture[str]
) -> None:
    """The real app: its config document and a module's ctx.secrets come from Vault (an
    HTTP double of its API, through hvac), limited to what module.yaml declares."""
    from tests.vault_double import VaultDouble

    double = VaultDouble().start()
    try:
        token = double.issue_token()
        double.put("switchboard/config", {"app": {"name": "from-vault"}})
        double.put("switchboard/modules/pay/gateway", {"token": "tok_live_0123456789"})
        double.put("switchboard/modules/other/thing", {"token": "not-for-pay"})
        parent = write_module(
            "pay",
            {
                "module.yaml": "secrets: [pay/*]\n",
                "actions.yaml": """
                actions:
                  peek:
                    handler: handlers:peek
                    auth: public
                    params:
                      name: {type: string, required: true}
                """,
                "handlers.py": "def peek(ctx, *, name):\n"
                "    value = ctx.secrets.get(name, 'token')\n"
                "    ctx.logger.warning('using %s', value)\n"
                "    return {'length': len(value)}\n",
            },
        )
        app = make_app(
            {
                "MODULES_PATH": str(parent),
                "VAULT_ADDR": double.url,
                "VAULT_TOKEN": token,
                "SB_SECRETS__MOUNTS": "",
            }
        )
        client = app.test_client()
        info = client.post("/api/v1/actions/system.info").get_json()["data"]
        assert info["name"] == "from-vault"
        ok = client.post("/api/v1/actions/pay.peek", json={"name": "pay/gateway"})
        assert ok.status_code == 200 and ok.get_json()["data"] == {"length": 19}
        denied = client.post("/api/v1/actions/pay.peek", json={"name": "other/thing"})
        assert denied.status_code == 403 and "not-for-pay" not in denied.get_data(as_text=True)
        ready = client.get("/health/ready").get_json()["checks"]["vault"]
        assert ready["status"] == "ok" and ready["auth"] == "token"
        flush_logs()
        err = capfd.readouterr().err
        assert "tok_live_0123456789" not in err and token not in err
    finally:
        double.stop()


def test_refresh_rereads_references_and_keeps_values_when_they_fail(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "name.txt").write_text("first\n")
    vault = FakeVault({"switchboard/config": {}, "apps/jwt": {"secret": "old-hmac-secret"}})
    config = load_config(
        root,
        {
            "SB_APP__NAME": "file://name.txt",
            "VAULT_ADDR": "http://v",
            "SB_JWT__SECRET": "vault://apps/jwt#secret",
            "SB_SECRETS__MOUNTS": "",
        },
        vault_connect=vault.connect,
    )
    resolvers = {"vault": lambda target: read_reference(vault, target)}
    assert config.refresh(resolvers) == []  # nothing moved
    (root / "name.txt").write_text("second\n")
    vault.documents = {"apps/jwt": {"secret": "rotated-hmac-secret"}}
    assert sorted(config.refresh(resolvers)) == [
        "app.name",
        "jwt.secret",
    ]
    assert config["app.name"] == "second" and config["jwt.secret"] == "rotated-hmac-secret"
    (root / "name.txt").unlink()
    vault.documents = {}
    assert config.refresh(resolvers) == []  # failures keep the last good values
    assert config["app.name"] == "second" and config["jwt.secret"] == "rotated-hmac-secret"


def test_the_running_app_sees_refreshed_settings(make_app: MakeApp, tmp_path: Path) -> None:
    (tmp_path / "name.txt").write_text("before\n")
    app = make_app({"SB_APP__NAME": f"file://{tmp_path}/name.txt"})
    client = app.test_client()
    assert client.post("/api/v1/actions/system.info").get_json()["data"]["name"] == "before"
    (tmp_path / "name.txt").write_text("after\n")
    from core.transports.http import extension

    assert extension(app).app_manager.get(ConfigManager).refresh() == ["app.name"]
    assert client.post("/api/v1/actions/system.info").get_json()["data"]["name"] == "after"
