"""The deployment files (they cannot run here): parsed, and held to the app's config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import ROOT
from core.config.settings import Setting
from tests.helpers import load_config

KUBE = ROOT / "deploy" / "kubernetes"


def settings() -> dict[str, Setting]:
    return dict(load_config(ROOT, {"APP_ENV": "test"}).settings)


def env_names() -> set[str]:
    names = set()
    for setting in settings().values():
        names.add(setting.env_name)
        if setting.alias:
            names.add(setting.alias)
    return names


def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(KUBE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def of_kind(kind: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected"
    return found[0]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_image_is_multi_stage_slim_non_root_and_checks_its_health() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all(s.endswith("-slim") for s in stages)
    user = re.search(r"^USER (\d+)", text, re.M)
    assert user is not None and user.group(1) != "0"
    assert re.search(r"^HEALTHCHECK .*", text, re.M)
    assert "/health/live" in text
    port = re.search(r"SB_HTTP__PORT=(\d+)", text)
    assert port is not None and re.search(rf"^EXPOSE {port.group(1)}$", text, re.M)
    assert re.search(r'^CMD \["python", "app.py", "serve"\]', text, re.M)
    for folder in ("core", "managers", "modules", "actions", "config"):  # the fixed layout
        assert f"COPY {folder} ./{folder}" in text
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()  # never in the image


def test_every_environment_variable_of_the_files_is_a_setting() -> None:
    known = env_names() | {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PATH"}
    from_docker = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", dockerfile()))
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    from_compose = set(compose["services"]["app"]["environment"])
    config_map = set(of_kind("ConfigMap")["data"])
    container = of_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    from_pod = {e["name"] for e in container["env"]}
    for source, names in (
        ("Dockerfile", from_docker),
        ("compose.yaml", from_compose),
        ("ConfigMap", config_map),
        ("Deployment", from_pod),
    ):
        assert names <= known, f"{source}: {sorted(names - known)} are not settings"


def test_secret_files_are_named_after_secret_settings_and_mounted_where_read() -> None:
    table = settings()
    mounts = table["secrets.mounts"].default
    secret = of_kind("Secret")
    for key in secret["stringData"]:
        assert key in table, f"Secret key {key} is not a setting"
        assert table[key].secret or key in ("database.url", "redis.url"), key
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for entry in compose["services"]["app"]["secrets"]:
        assert entry["target"] in table  # compose mounts them at /run/secrets/<target>
    assert "/run/secrets" in mounts
    pod = of_kind("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounted = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounted["secrets"] in mounts
    assert volumes["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_probes_ports_user_and_limits_agree_with_the_app() -> None:
    deployment = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert ports["http"] == int(env["SB_HTTP__PORT"])
    assert re.search(rf"SB_HTTP__PORT={ports['http']}\b", dockerfile())
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    docker_user = re.search(r"^USER (\d+)", dockerfile(), re.M)
    assert docker_user is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(docker_user.group(1))
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    grace = pod["terminationGracePeriodSeconds"]
    configured = of_kind("ConfigMap")["data"]["SB_SHUTDOWN__GRACE"]
    assert grace > float(configured.rstrip("s"))  # calls drain and the audit flushes first
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # read-only root
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert of_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    assert of_kind("Service")["spec"]["selector"] == labels
    workers = int(of_kind("ConfigMap")["data"]["SB_HTTP__WORKERS"])
    assert workers == 1 or "redis.url" in of_kind("Secret")["stringData"]  # memory:// refused


@pytest.mark.parametrize(
    "path", ["compose.yaml", *(str(p.relative_to(ROOT)) for p in sorted(KUBE.glob("*.yaml")))]
)
def test_the_files_parse(path: str) -> None:
    assert list(yaml.safe_load_all(Path(ROOT / path).read_text()))
