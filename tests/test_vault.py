"""VaultClient and VaultManager, through hvac, against the HTTP double in tests/vault_double.py."""

from __future__ import annotations

import logging
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from core.base.errors import ConfigError, DependencyUnavailable, Forbidden, NotFound
from core.contracts.module import ModuleManifest
from core.runtime.app_manager import AppManager
from core.runtime.manager import App, Manager
from managers.hooks_manager import HooksManager
from managers.modules.manager import ModuleManager
from managers.vault.client import VaultClient
from managers.vault.manager import VaultManager
from tests.helpers import load_config
from tests.vault_double import VaultDouble

ROLE_ID = "role-4f1c"
SECRET_ID = "secret-id-9a7e1b2c"
K8S_ROLE = "switchboard"
K8S_JWT = "eyJhbGciOiJSUzI1NiJ9.k8s-service-account-payload.signature-3b1d"
SECRET_VALUE = "sk_live_4242_very_secret"
STRIPE = "switchboard/modules/credits/stripe"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class _Loaded:
    name: str
    manifest: ModuleManifest


class ModuleRegistry(Manager):
    """Stands in for the ``modules`` manager: publishes manifests that declare secrets, as
    the modules-loaded phase does."""

    name = "modules"
    phase = 1

    def __init__(self, secrets: Mapping[str, tuple[str, ...]]) -> None:
        self._loaded = [
            _Loaded(name, ModuleManifest(name, Path("."), secrets=globs))
            for name, globs in secrets.items()
        ]

    def start(self, app: App) -> None:
        app.publish_modules(cast(Any, self))

    def __iter__(self) -> Iterator[_Loaded]:
        return iter(self._loaded)


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    double = VaultDouble().start()
    double.approles[ROLE_ID] = SECRET_ID
    double.kubernetes[K8S_ROLE] = K8S_JWT
    double.put("switchboard/modules/credits/stripe", {"api_key": SECRET_VALUE, "mode": "live"})
    yield double
    double.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Boot = Callable[..., AppManager]


@pytest.fixture
def boot(tmp_path: Path, vault: VaultDouble, clock: FakeClock) -> Iterator[Boot]:
    """Boot an app running the vault manager (plus ``extra`` managers) on ``env``.

    The config loader reads its Vault level through ``VaultClient.connect`` as app.py does,
    so a boot logs in twice: once for the config document, once for the manager.
    """
    apps: list[AppManager] = []
    loader_clients: list[VaultClient] = []

    def connect(settings: Mapping[str, Any], root: Path) -> VaultClient:
        client = VaultClient.connect(settings, root, clock=clock)
        loader_clients.append(client)
        return client

    def make(
        env: Mapping[str, str] | None = None,
        *,
        extra: tuple[Manager, ...] = (),
        interval: float = 3600.0,
        addr: str | None = None,
    ) -> AppManager:
        environ = {"APP_ENV": "test", "VAULT_ADDR": vault.url if addr is None else addr}
        config = load_config(tmp_path, {**environ, **(env or {})}, vault_connect=connect)
        manager = VaultManager(maintain_interval=interval, clock=clock)
        app = AppManager(config, [manager, *extra]).boot()
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.shutdown()
    for client in loader_clients:
        client.close()


def approle_env(**overrides: str) -> dict[str, str]:
    return {
        "SB_VAULT__AUTH_METHOD": "approle",
        "SB_VAULT__ROLE_ID": ROLE_ID,
        "SB_VAULT__SECRET_ID": SECRET_ID,
        **overrides,
    }


def vault_of(app: App) -> VaultManager:
    return app.get("vault", VaultManager)


def client_of(app: App) -> VaultClient:
    client = vault_of(app).client
    assert client is not None
    return client


# --- login ----------------------------------------------------------------------------


def test_disabled_without_addr(boot: Boot) -> None:
    app = boot(addr="")
    manager = vault_of(app)
    assert manager.client is None
    assert manager.health().status == "disabled"
    secrets = manager.facade_for("credits")
    with pytest.raises(Forbidden):
        secrets.get("credits/stripe")


def test_token_login(boot: Boot, vault: VaultDouble) -> None:
    vault.token_ttl = 600
    app = boot({"VAULT_TOKEN": vault.issue_token()})
    health = vault_of(app).health()
    assert health.status == "ok"
    assert health.details == {"addr": vault.url.removeprefix("http://"), "auth": "token"}
    client = client_of(app)
    assert (client.token_ttl, client.token_renewable) == (600, True)
    assert client.read("switchboard/modules/credits/stripe")["mode"] == "live"


@pytest.mark.parametrize("from_file", [False, True], ids=["inline", "file"])
def test_approle_login(boot: Boot, vault: VaultDouble, tmp_path: Path, *, from_file: bool) -> None:
    env = approle_env()
    if from_file:
        (tmp_path / "secrets").mkdir()
        (tmp_path / "secrets" / "role_id").write_text(ROLE_ID + "\n")
        (tmp_path / "secrets" / "secret_id").write_text(SECRET_ID + "\n")
        env = approle_env(
            SB_VAULT__ROLE_ID="file://secrets/role_id",
            SB_VAULT__SECRET_ID=f"file://{tmp_path / 'secrets' / 'secret_id'}",
        )
    app = boot(env)
    assert vault.logins["approle"] >= 1
    assert vault_of(app).health().details["auth"] == "approle"
    assert client_of(app).read("switchboard/modules/credits/stripe")["api_key"] == SECRET_VALUE


def test_kubernetes_login(boot: Boot, vault: VaultDouble, tmp_path: Path) -> None:
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text(K8S_JWT)
    app = boot(
        {
            "SB_VAULT__AUTH_METHOD": "kubernetes",
            "SB_VAULT__KUBERNETES_ROLE": K8S_ROLE,
            "SB_VAULT__KUBERNETES_JWT_PATH": str(jwt_file),
        }
    )
    assert vault.logins["kubernetes"] >= 1
    assert client_of(app).read("switchboard/modules/credits/stripe")["mode"] == "live"


@pytest.mark.parametrize(
    ("env", "secret", "fields"),
    [
        ({"VAULT_TOKEN": "hvs.not-a-real-token-123"}, "hvs.not-a-real-token-123", ["vault.token"]),
        (
            approle_env(SB_VAULT__SECRET_ID="wrong-secret-id-777"),
            "wrong-secret-id-777",
            ["vault.role_id", "vault.secret_id"],
        ),
        (
            {
                "SB_VAULT__AUTH_METHOD": "kubernetes",
                "SB_VAULT__KUBERNETES_ROLE": K8S_ROLE,
                "SB_VAULT__KUBERNETES_JWT_PATH": "jwt",
            },
            "forged.jwt.value-555",
            ["vault.kubernetes_role", "vault.kubernetes_jwt_path"],
        ),
    ],
    ids=["token", "approle", "kubernetes"],
)
def test_wrong_credentials_fail_the_boot_without_echoing_them(
    boot: Boot, tmp_path: Path, env: dict[str, str], secret: str, fields: list[str]
) -> None:
    (tmp_path / "jwt").write_text("forged.jwt.value-555")
    with pytest.raises(ConfigError) as info:
        boot(env)
    message = str(info.value)
    method = env.get("SB_VAULT__AUTH_METHOD", "token")
    assert f"auth method {method}" in message
    assert [p.field for p in info.value.problems] == fields
    assert secret not in message


def test_missing_credential_names_the_setting(boot: Boot) -> None:
    with pytest.raises(ConfigError, match=r"vault\.secret_id is not set") as info:
        boot(approle_env(SB_VAULT__SECRET_ID=""))
    assert info.value.problems[0].field == "vault.secret_id"


def test_missing_credential_file_names_the_setting(boot: Boot) -> None:
    with pytest.raises(ConfigError, match=r"vault\.secret_id: cannot read .*nope"):
        boot(approle_env(SB_VAULT__SECRET_ID="file://nope"))


@pytest.mark.parametrize("outage", ["refused", "sealed"])
def test_vault_down_at_boot_fails_clearly(boot: Boot, vault: VaultDouble, outage: str) -> None:
    token = vault.issue_token()
    if outage == "refused":
        vault.stop()
    else:
        vault.sealed = True
    with pytest.raises(ConfigError, match=r"Vault at 127\.0\.0\.1:\d+ is unreachable"):
        boot({"VAULT_TOKEN": token})


def test_connect_for_the_config_loader(vault: VaultDouble, tmp_path: Path) -> None:
    vault.put("switchboard/config", {"http": {"port": 9001}})
    settings = {"vault.addr": vault.url, "vault.token": vault.issue_token()}
    client = VaultClient.connect(settings, tmp_path)
    try:
        assert client.read("switchboard/config") == {"http": {"port": 9001}}
    finally:
        client.close()
    config = load_config(
        tmp_path,
        {"APP_ENV": "test", "VAULT_ADDR": vault.url, "VAULT_TOKEN": settings["vault.token"]},
        vault_connect=VaultClient.connect,
    )
    assert config["http.port"] == 9001


def test_connect_reads_approle_credentials_from_files(vault: VaultDouble, tmp_path: Path) -> None:
    (tmp_path / "role_id").write_text(ROLE_ID + "\n")
    (tmp_path / "secret_id").write_text(SECRET_ID + "\n")
    settings = {
        "vault.addr": vault.url,
        "vault.auth_method": "approle",
        "vault.role_id": "file://role_id",  # relative to the root
        "vault.secret_id": f"file://{tmp_path / 'secret_id'}",
    }
    client = VaultClient.connect(settings, tmp_path)
    try:
        assert vault.logins["approle"] == 1
        assert client.read(STRIPE)["mode"] == "live"
    finally:
        client.close()


# --- reads, cache, outages ------------------------------------------------------------


def test_reads_are_cached_for_cache_ttl(boot: Boot, vault: VaultDouble, clock: FakeClock) -> None:
    client = client_of(boot({"VAULT_TOKEN": vault.issue_token(), "SB_VAULT__CACHE_TTL": "30s"}))
    first = client.read(STRIPE)
    first["mode"] = "mutated by a caller"
    clock.advance(29)
    assert client.read(STRIPE)["mode"] == "live"  # a copy: the cache is not mutated
    assert vault.reads(STRIPE) == 1
    clock.advance(2)
    vault.put(STRIPE, {"api_key": SECRET_VALUE, "mode": "rotated"})
    assert client.read(STRIPE)["mode"] == "rotated"
    assert vault.reads(STRIPE) == 2


def test_missing_and_denied_paths(boot: Boot, vault: VaultDouble) -> None:
    client = client_of(boot({"VAULT_TOKEN": vault.issue_token()}))
    with pytest.raises(KeyError):
        client.read("switchboard/modules/credits/nothing")
    vault.denied.add("switchboard/modules/admin/*")
    with pytest.raises(PermissionError):
        client.read("switchboard/modules/admin/root")


@pytest.mark.parametrize("outage", ["sealed", "refused"])
def test_outage_serves_last_known_good_then_recovers(
    boot: Boot, vault: VaultDouble, clock: FakeClock, outage: str
) -> None:
    app = boot({"VAULT_TOKEN": vault.issue_token(), "SB_VAULT__CACHE_TTL": "10s"})
    manager, client = vault_of(app), client_of(app)
    assert client.read(STRIPE)["api_key"] == SECRET_VALUE

    if outage == "sealed":
        vault.sealed = True
    else:
        vault.stop()
    clock.advance(60)  # the cached value is stale: the client asks Vault, which is down
    assert client.read(STRIPE)["api_key"] == SECRET_VALUE
    assert client.degraded
    health = manager.health()
    assert health.status == "degraded"
    assert health.details["auth"] == "token"
    with pytest.raises(DependencyUnavailable):
        client.read("switchboard/modules/credits/never-read")

    if outage == "sealed":
        vault.sealed = False
    else:
        vault.start()
    vault.put(STRIPE, {"api_key": SECRET_VALUE, "mode": "after"})
    assert client.read(STRIPE)["mode"] == "after"
    assert not client.degraded
    assert manager.health().status == "ok"


def test_maintain_notices_recovery_without_a_read(
    boot: Boot, vault: VaultDouble, clock: FakeClock
) -> None:
    app = boot({"VAULT_TOKEN": vault.issue_token(), "SB_VAULT__CACHE_TTL": "10s"})
    client = client_of(app)
    client.read(STRIPE)
    vault.sealed = True
    clock.advance(60)
    client.read(STRIPE)
    assert client.maintain() == "unavailable"
    assert vault_of(app).health().status == "degraded"
    vault.sealed = False
    assert client.maintain() == "skipped"
    assert vault_of(app).health().status == "ok"


def test_token_lost_during_an_outage_is_replaced_on_recovery(
    boot: Boot, vault: VaultDouble, clock: FakeClock
) -> None:
    vault.token_ttl = 3600
    client = client_of(boot(approle_env(SB_VAULT__CACHE_TTL="10s")))
    client.read(STRIPE)
    vault.sealed = True
    clock.advance(60)
    client.read(STRIPE)
    vault.sealed = False
    vault.expire()  # e.g. Vault was restored from a backup without our token
    assert client.maintain() == "relogged"
    assert not client.degraded
    clock.advance(60)
    assert client.read(STRIPE)["mode"] == "live"


# --- token lifecycle ------------------------------------------------------------------


def test_token_is_renewed_when_a_third_of_its_ttl_is_left(
    boot: Boot, vault: VaultDouble, clock: FakeClock
) -> None:
    vault.token_ttl = 300
    client = client_of(boot({"VAULT_TOKEN": vault.issue_token()}))
    clock.advance(150)  # 150 s left of 300: more than a third
    assert client.maintain() == "skipped"
    clock.advance(60)  # 90 s left: renew
    assert client.maintain() == "renewed"
    assert vault.requests["POST /v1/auth/token/renew-self"] == 1
    assert client.maintain() == "skipped"  # the TTL starts again from the renewal


def test_failed_renewal_logs_in_again(boot: Boot, vault: VaultDouble, clock: FakeClock) -> None:
    vault.token_ttl = 300
    client = client_of(boot(approle_env()))
    logins = vault.logins["approle"]
    vault.expire()  # the token lapsed (e.g. the process was suspended past its TTL)
    clock.advance(250)
    assert client.maintain() == "relogged"
    assert vault.logins["approle"] == logins + 1
    assert client.read(STRIPE)["mode"] == "live"


def test_non_renewable_token_logs_in_again(
    boot: Boot, vault: VaultDouble, clock: FakeClock
) -> None:
    vault.token_ttl, vault.renewable = 300, False
    client = client_of(boot(approle_env()))
    clock.advance(250)
    assert client.maintain() == "relogged"
    assert vault.requests["POST /v1/auth/token/renew-self"] == 0


def test_failed_relogin_reports_degraded(boot: Boot, vault: VaultDouble, clock: FakeClock) -> None:
    vault.token_ttl = 300
    app = boot({"VAULT_TOKEN": vault.issue_token()})
    vault.expire()
    clock.advance(250)
    assert client_of(app).maintain() == "failed"
    health = vault_of(app).health()
    assert health.status == "degraded"
    assert "login failed" in health.details["reason"]


def test_background_thread_renews_and_stop_joins_it(
    boot: Boot, vault: VaultDouble, clock: FakeClock
) -> None:
    vault.token_ttl = 300
    app = boot({"VAULT_TOKEN": vault.issue_token()}, interval=0.01)
    clock.advance(250)
    deadline = time.monotonic() + 5
    while vault.requests["POST /v1/auth/token/renew-self"] == 0:
        assert time.monotonic() < deadline, "the upkeep thread never renewed the token"
        time.sleep(0.01)
    app.shutdown()
    assert vault_of(app).client is None
    assert not any(t.name == "vault-token-upkeep" and t.is_alive() for t in _threads())


def _threads() -> list[Any]:
    import threading

    return threading.enumerate()


# --- ctx.secrets facade ---------------------------------------------------------------


@pytest.fixture
def credits_secrets(boot: Boot, vault: VaultDouble) -> Any:
    registry = ModuleRegistry({"credits": ("credits/*",)})
    app = boot({"VAULT_TOKEN": vault.issue_token()}, extra=(registry,))
    return vault_of(app).facade_for("credits")


def test_facade_reads_declared_secrets(credits_secrets: Any) -> None:
    assert credits_secrets.get("credits/stripe", "api_key") == SECRET_VALUE
    assert credits_secrets.get("credits/stripe") == {"api_key": SECRET_VALUE, "mode": "live"}


@pytest.mark.parametrize("name", ["billing/stripe", "credits/../billing/stripe", "credits"])
def test_facade_refuses_undeclared_secrets(
    credits_secrets: Any, vault: VaultDouble, name: str
) -> None:
    with pytest.raises(Forbidden) as info:
        credits_secrets.get(name)
    assert info.value.detail == (
        f"module 'credits' may not read secret {name!r}; declare it in module.yaml secrets"
    )
    assert info.value.status == 403
    assert not any("billing" in key for key in vault.requests)


def test_facade_missing_secret_or_field_is_not_found(credits_secrets: Any) -> None:
    with pytest.raises(NotFound):
        credits_secrets.get("credits/absent")
    with pytest.raises(NotFound, match="no field 'pin'"):
        credits_secrets.get("credits/stripe", "pin")


def test_facade_outage_without_cache_is_503(credits_secrets: Any, vault: VaultDouble) -> None:
    vault.sealed = True
    with pytest.raises(DependencyUnavailable) as info:
        credits_secrets.get("credits/stripe")
    assert info.value.status == 503


def test_module_without_manifest_may_read_nothing(boot: Boot, vault: VaultDouble) -> None:
    app = boot({"VAULT_TOKEN": vault.issue_token()}, extra=(ModuleRegistry({}),))
    with pytest.raises(Forbidden):
        vault_of(app).facade_for("credits").get("credits/stripe")


def test_facade_uses_the_real_module_manifest(
    boot: Boot, vault: VaultDouble, tmp_path: Path
) -> None:
    folder = tmp_path / "modules" / "vaultprobe"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "module.yaml").write_text(
        textwrap.dedent(
            """\
            secrets: ["vaultprobe/*"]
            """
        )
    )
    vault.put("switchboard/modules/vaultprobe/db", {"password": "pw-1"})
    app = boot({"VAULT_TOKEN": vault.issue_token()}, extra=(HooksManager(), ModuleManager()))
    secrets = vault_of(app).facade_for("vaultprobe")
    assert secrets.get("vaultprobe/db", "password") == "pw-1"
    with pytest.raises(Forbidden):
        secrets.get("credits/stripe")


# --- nothing secret in the logs -------------------------------------------------------


def test_no_secret_reaches_the_logs(
    boot: Boot,
    vault: VaultDouble,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    vault.token_ttl = 300
    static_token = vault.issue_token()
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(K8S_JWT)

    # logins (and refused ones)
    boot({"VAULT_TOKEN": static_token})
    k8s = client_of(
        boot(
            {
                "SB_VAULT__AUTH_METHOD": "kubernetes",
                "SB_VAULT__KUBERNETES_ROLE": K8S_ROLE,
                "SB_VAULT__KUBERNETES_JWT_PATH": str(jwt_file),
            }
        )
    )
    with pytest.raises(ConfigError) as refused:
        boot(approle_env(SB_VAULT__SECRET_ID=SECRET_ID + "-wrong"))
    app = boot(approle_env())
    client = client_of(app)

    # reads, renewal, re-login, outage with and without a cached value
    registry_app = boot({"VAULT_TOKEN": static_token}, extra=(ModuleRegistry({"credits": ("*",)}),))
    assert vault_of(registry_app).facade_for("credits").get("credits/stripe", "api_key")
    client.read(STRIPE)
    k8s.read(STRIPE)
    clock.advance(250)
    assert client.maintain() == "renewed"
    vault.expire()
    clock.advance(250)
    assert client.maintain() == "relogged"
    vault.sealed = True
    clock.advance(120)
    client.read(STRIPE)
    with pytest.raises(DependencyUnavailable):
        client.read("switchboard/modules/credits/other")
    assert client.maintain() == "unavailable"
    vault.sealed = False
    vault.expire()
    clock.advance(250)
    k8s.maintain()

    forbidden = [SECRET_ID, SECRET_ID + "-wrong", K8S_JWT, SECRET_VALUE, *vault.issued]
    assert len(vault.issued) >= 4
    assert caplog.records, "expected the Vault client to log"
    assert not [s for s in forbidden if s in str(refused.value)]
    for record in caplog.records:
        text = " ".join(
            [record.getMessage(), str(record.args), record.exc_text or "", str(record.__dict__)]
        )
        leaked = [s for s in forbidden if s in text]
        assert not leaked, f"{record.name}: {record.getMessage()!r} leaks a secret"
