"""The configuration chain: built-in defaults -> default.yaml -> <APP_ENV>.yaml -> env -> CLI."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from app import ROOT
from core.base.errors import ConfigError, Problem
from core.config.config import Config
from tests.helpers import load_config


def write_config(root: Path, **files: str) -> Path:
    """Write ``root/config/<name>.yaml`` for each keyword (dedented); return ``root``."""
    folder = root / "config"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    return root


def config_error(root: Path, environ: dict[str, str] | None = None, **files: str) -> ConfigError:
    write_config(root, **files)
    with pytest.raises(ConfigError) as info:
        load_config(root, environ or {})
    return info.value


def problem_for(error: ConfigError, field: str) -> Problem:
    matches = [p for p in error.problems if p.field == field]
    assert matches, f"no problem about {field!r} in {[str(p) for p in error.problems]}"
    return matches[0]


# --- the chain ------------------------------------------------------------------------


def test_built_in_defaults_when_there_are_no_files(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})

    assert config["http.port"] == 8000
    assert config["http.host"] == "127.0.0.1"
    assert config["http.max_body_bytes"] == 1048576
    assert config["app.env"] == "development"
    assert config.env == "development"
    assert not config.is_production
    assert config["modules.path"] == ()
    assert config["modules.strict"] is True
    assert config["vault.addr"] is None
    for key in ("http.port", "http.host", "http.max_body_bytes", "app.env"):
        assert config.source(key) == "default"


def test_default_yaml_overrides_built_in_defaults(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        default="""
            http:
              port: 9001
            app:
              name: billing
        """,
    )
    config = load_config(tmp_path, {})

    assert config["http.port"] == 9001
    assert config.source("http.port") == "config/default.yaml"
    assert config["app.name"] == "billing"
    assert config["http.host"] == "127.0.0.1"
    assert config.source("http.host") == "default"


def test_environment_file_overrides_default_yaml(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        default="""
            app: {env: test}
            http: {port: 9001, host: 10.0.0.1}
        """,
        test="""
            http: {port: 9002}
        """,
        production="""
            http: {port: 9003}
        """,
    )
    config = load_config(tmp_path, {})

    assert config.env == "test"
    assert config["http.port"] == 9002
    assert config.source("http.port") == "config/test.yaml"
    assert config["http.host"] == "10.0.0.1"
    assert config.source("http.host") == "config/default.yaml"


# What production refuses to start without (see test_production_refusals).
PRODUCTION_SECRETS = {
    "SB_JWT__PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----test",
    "SB_API_KEYS__PEPPER": "p" * 40,
    "SB_EXECUTIONS__SECRET_KEY": "e" * 40,
}


@pytest.mark.parametrize("variable", ["APP_ENV", "SB_APP__ENV"])
def test_app_env_from_the_environment_selects_the_file(tmp_path: Path, variable: str) -> None:
    write_config(
        tmp_path,
        default="http: {port: 9001}\n",
        test="http: {port: 9002}\n",
        production="http: {port: 9003}\n",
    )
    config = load_config(tmp_path, {variable: "production", **PRODUCTION_SECRETS})

    assert config.env == "production"
    assert config.is_production
    assert config.source("app.env") == f"env {variable}"
    assert config["http.port"] == 9003
    assert config.source("http.port") == "config/production.yaml"


def test_env_variable_overrides_both_files_and_is_typed(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        default="http: {port: 9001}\n",
        test="http: {port: 9002}\n",
    )
    config = load_config(tmp_path, {"APP_ENV": "test", "SB_HTTP__PORT": "9100"})

    assert config["http.port"] == 9100
    assert isinstance(config["http.port"], int)
    assert config.source("http.port") == "env SB_HTTP__PORT"


def test_unprefixed_aliases_are_honoured(tmp_path: Path) -> None:
    environ = {
        "DATABASE_URL": "postgresql://db.example/app",
        "REDIS_URL": "redis://cache.example:6379/0",
        "PORT": "8123",
        "MODULES_PATH": os.pathsep.join(["/opt/one", "/opt/two"]),
        "MODULES_STRICT": "false",
    }
    config = load_config(tmp_path, environ)

    assert config["database.url"] == "postgresql://db.example/app"
    assert config.source("database.url") == "env DATABASE_URL"
    assert config["redis.url"] == "redis://cache.example:6379/0"
    assert config.source("redis.url") == "env REDIS_URL"
    assert config["http.port"] == 8123
    assert config.source("http.port") == "env PORT"
    assert config["modules.path"] == ("/opt/one", "/opt/two")
    assert config["modules.strict"] is False
    assert config.source("modules.strict") == "env MODULES_STRICT"


def test_prefixed_name_wins_over_its_alias(tmp_path: Path) -> None:
    config = load_config(
        tmp_path,
        {
            "PORT": "8001",
            "SB_HTTP__PORT": "8002",
            "DATABASE_URL": "a://",
            "SB_DATABASE__URL": "b://",
        },
    )

    assert config["http.port"] == 8002
    assert config.source("http.port") == "env SB_HTTP__PORT"
    assert config["database.url"] == "b://"
    assert config.source("database.url") == "env SB_DATABASE__URL"


def test_command_line_overrides_win_over_everything(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        default="http: {port: 9001, host: 10.0.0.1}\n",
        test="http: {port: 9002}\n",
    )
    config = load_config(
        tmp_path,
        {"APP_ENV": "test", "SB_HTTP__PORT": "9100", "PORT": "9200"},
        {"http.port": 9300, "http.host": "0.0.0.0", "http.workers": 3},
    )

    assert config["http.port"] == 9300
    assert config.source("http.port") == "command line"
    assert config["http.host"] == "0.0.0.0"
    assert config["http.workers"] == 3
    assert config.source("http.workers") == "command line"


def test_command_line_app_env_selects_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, production="http: {port: 9003}\n")
    config = load_config(
        tmp_path, {"APP_ENV": "test", **PRODUCTION_SECRETS}, {"app.env": "production"}
    )

    assert config.env == "production"
    assert config["http.port"] == 9003


def test_empty_yaml_file_is_allowed(tmp_path: Path) -> None:
    write_config(tmp_path, default="# nothing yet\n")
    config = load_config(tmp_path, {})

    assert config["http.port"] == 8000
    assert config.source("http.port") == "default"


# --- errors ---------------------------------------------------------------------------


def test_unknown_key_in_default_yaml_names_file_key_and_suggestion(tmp_path: Path) -> None:
    error = config_error(tmp_path, default="http: {prot: 1}\n")

    problem = problem_for(error, "http.prot")
    assert problem.file == "config/default.yaml"
    assert "unknown setting 'http.prot'" in problem.message
    assert "did you mean 'http.port'" in problem.message
    assert "config/default.yaml" in str(error)
    assert "http.prot" in str(error)


def test_unknown_key_in_environment_file_names_that_file(tmp_path: Path) -> None:
    error = config_error(tmp_path, {"APP_ENV": "test"}, test="logging: {levle: INFO}\n")

    problem = problem_for(error, "logging.levle")
    assert problem.file == "config/test.yaml"
    assert "did you mean 'logging.level'" in problem.message


def test_unknown_sb_variable_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {"SB_HTTP__PROT": "9000"})

    problem = problem_for(info.value, "http.prot")
    assert problem.file == "env SB_HTTP__PROT"
    assert "did you mean 'http.port'" in problem.message
    assert "SB_HTTP__PROT" in str(info.value)


def test_unprefixed_unknown_variables_are_ignored(tmp_path: Path) -> None:
    config = load_config(tmp_path, {"HOME": "/root", "HTTP_PORT": "1"})

    assert config["http.port"] == 8000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('http: {port: "abc"}\n', "expected an integer, got str"),
        ("http: {port: true}\n", "expected an integer, got bool"),
        ("http: {port: 80.5}\n", "expected an integer, got float"),
    ],
)
def test_wrong_type_in_yaml_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    error = config_error(tmp_path, default=text)

    problem = problem_for(error, "http.port")
    assert problem.file == "config/default.yaml"
    assert expected in problem.message


def test_yaml_string_is_not_a_boolean(tmp_path: Path) -> None:
    error = config_error(tmp_path, default='modules: {strict: "false"}\n')

    problem = problem_for(error, "modules.strict")
    assert problem.file == "config/default.yaml"
    assert "expected true or false" in problem.message


def test_wrong_env_text_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {"SB_HTTP__PORT": "abc"})

    problem = problem_for(info.value, "http.port")
    assert problem.file == "env SB_HTTP__PORT"
    assert "expected an integer, got 'abc'" in problem.message


def test_wrong_boolean_text_in_env_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {"MODULES_STRICT": "maybe"})

    problem = problem_for(info.value, "modules.strict")
    assert problem.file == "env MODULES_STRICT"
    assert "'maybe'" in problem.message


@pytest.mark.parametrize(
    ("environ", "source"),
    [({"SB_HTTP__PORT": "70000"}, "env SB_HTTP__PORT"), ({"PORT": "-1"}, "env PORT")],
)
def test_port_out_of_range_is_an_error(
    tmp_path: Path, environ: dict[str, str], source: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ)

    problem = problem_for(info.value, "http.port")
    assert problem.file == source
    assert "must be at" in problem.message


def test_port_out_of_range_in_yaml_is_an_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, default="http: {port: 70000}\n")

    problem = problem_for(error, "http.port")
    assert problem.file == "config/default.yaml"
    assert "must be at most 65535, got 70000" in problem.message


def test_invalid_app_env_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {"APP_ENV": "staging"})

    assert len(info.value.problems) == 1  # reported once, with its source
    problem = problem_for(info.value, "app.env")
    assert problem.file == "env APP_ENV"
    assert "'staging'" in problem.message
    assert "development" in problem.message
    assert "production" in problem.message


def test_invalid_yaml_reports_file_and_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, default="http:\n  port: 8000\n  host: [unclosed\n")

    files = [p for p in error.problems if p.file == "config/default.yaml"]
    assert len(files) == 1
    assert "invalid YAML" in files[0].message
    assert "line " in files[0].message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = config_error(tmp_path, default="- http\n- port\n")

    assert [p.file for p in error.problems] == ["config/default.yaml"]
    assert "mapping" in error.problems[0].message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        default="""
            http:
              prot: 1
              workers: many
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, {"SB_LOGGING__LEVL": "INFO", "SB_HTTP__PORT": "abc"})

    error = info.value
    assert len(error.problems) >= 2
    fields = {p.field for p in error.problems}
    assert {"http.prot", "http.workers", "logging.levl", "http.port"} <= fields
    text = str(error)
    for fragment in ("http.prot", "http.workers", "SB_LOGGING__LEVL", "SB_HTTP__PORT"):
        assert fragment in text


# --- the Config object ----------------------------------------------------------------


def test_describe_redacts_secret_settings_only(tmp_path: Path) -> None:
    config = load_config(
        tmp_path, {"DATABASE_URL": "postgresql://user:hunter2@db/app", "SB_APP__NAME": "billing"}
    )
    described = {key: (value, source) for key, value, source in config.describe()}

    assert described["database.url"] == ("***", "env DATABASE_URL")
    assert described["app.name"] == ("billing", "env SB_APP__NAME")
    assert described["http.port"] == (8000, "default")
    assert "hunter2" not in repr(list(config.describe()))
    # The real value is still there for the code that needs it.
    assert config["database.url"] == "postgresql://user:hunter2@db/app"
    keys = [key for key, _value, _source in config.describe()]
    assert keys == sorted(keys)


def test_config_is_read_only(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})

    assert not hasattr(config, "__setitem__")
    with pytest.raises(TypeError):
        config["http.port"] = 9000  # type: ignore[index]
    assert config["http.port"] == 8000


def test_unknown_key_lookup(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})

    with pytest.raises(KeyError, match=re.escape("unknown setting 'http.prot'")):
        config["http.prot"]
    assert config.get("http.prot", "fallback") == "fallback"
    assert config.get("http.port") == 8000


def test_path_resolves_relative_to_root(tmp_path: Path) -> None:
    config = load_config(tmp_path, {})

    assert config.path("var/x.db") == tmp_path / "var" / "x.db"
    assert config.path("/abs/x.db") == Path("/abs/x.db")


# --- the project's own files ----------------------------------------------------------


def test_project_production_config_loads() -> None:
    environ = {"APP_ENV": "production", "REDIS_URL": "redis://cache:6379/0", **PRODUCTION_SECRETS}
    config = load_config(ROOT, environ)

    assert isinstance(config, Config)
    assert config.is_production
    assert config["http.host"] == "0.0.0.0"
    assert config.source("http.host") == "config/production.yaml"
    assert config["http.workers"] == 4


def test_project_test_config_loads() -> None:
    config = load_config(ROOT, {"APP_ENV": "test"})

    assert config.env == "test"
    assert config["logging.level"] == "WARNING"
    assert config.source("logging.level") == "config/test.yaml"
    assert config["http.host"] == "127.0.0.1"
