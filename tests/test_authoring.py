"""What module authors use besides the loader: the CLI's callers, the words of 403s and
500s, the users and keys commands, and the core.transports.testing harness."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from app import create_app
from core.base.errors import BootError
from core.transports.testing import SYSTEM, Harness, api_key, user
from tests.conftest import MakeApp, WriteModule
from tests.test_cli import run, stderr_json, stdout_json

SHELF = {
    "module.yaml": """\
        events: [shelved]
        rooms:
          shelves: {join: user}
        config:
          page_size: 20
        """,
    "actions.yaml": """\
        actions:
          shelve:
            handler: handlers:shelve
            roles: [librarian]
            rate_limit: [2/minute]
            params: {title: {type: string, required: true}}
          export:
            handler: handlers:export
            auth: any
            scopes: [books:export]
          remember:
            handler: handlers:remember
            auth: public
            params: {title: {type: string, required: true}}
          boom:
            handler: handlers:boom
            auth: public
        """,
    "handlers.py": """\
        def shelve(ctx, *, title):
            book = ctx.db.collection("books").insert_one({"title": title, "by": ctx.caller.id})
            ctx.hooks.emit("bookshelf.shelved", {"id": book})
            ctx.realtime.emit("shelved", {"title": title}, room="bookshelf.shelves")
            return {"id": book}


        def export(ctx):
            return {"count": ctx.db.collection("books").count()}


        def remember(ctx, *, title):
            ctx.cache.set_json("last", title, ttl=60)
            return {"ok": True}


        def boom(ctx):
            raise KeyError("the-missing-key")
        """,
}


def test_the_harness_calls_as_any_caller_and_reads_what_the_module_did(
    write_module: WriteModule, tmp_path: Path
) -> None:
    folder = write_module("bookshelf", SHELF) / "bookshelf"
    with Harness.boot(create_app, str(folder), tmp_path=tmp_path, frozen=True) as harness:
        assert harness.call("bookshelf.shelve", {"title": "Dune"}).status == 401
        refused = harness.call("bookshelf.shelve", {"title": "Dune"}, as_=user("u1"))
        assert refused.problem == "forbidden" and "needs role librarian" in refused.body["detail"]
        librarian = user("u1", "librarian")
        shelved = harness.call("bookshelf.shelve", {"title": "Dune"}, as_=librarian).data
        stored = harness.db.collection("books").find_one({"_id": shelved["id"]})
        assert stored is not None and stored["by"] == "u1"
        assert [e.data for e in harness.events("bookshelf.shelved")] == [{"id": shelved["id"]}]
        assert harness.pushes == [("shelved", {"title": "Dune"}, "bookshelf.shelves")]

        # Frozen time: the limit of 2 a minute holds until the clock is moved on.
        harness.call("bookshelf.shelve", {"title": "Emma"}, as_=librarian)
        assert harness.call("bookshelf.shelve", {"title": "X"}, as_=librarian).status == 429
        harness.advance(61)
        assert harness.call("bookshelf.shelve", {"title": "X"}, as_=librarian).ok

        missing = harness.call("bookshelf.export", as_=api_key("books:read"))
        assert missing.status == 403 and "needs scope books:export" in missing.body["detail"]
        assert harness.call("bookshelf.export", as_=api_key("books:export")).data == {"count": 3}
        assert harness.call("bookshelf.export", as_=SYSTEM).ok

        # TTLs on memory:// follow the frozen clock too.
        assert harness.call("bookshelf.remember", {"title": "Dune"}).ok
        assert harness.cache.get_json("last") == "Dune"
        harness.advance(61)
        assert harness.cache.get_json("last") is None


def test_a_500_says_what_went_wrong_outside_production_only(
    make_app: MakeApp, write_module: WriteModule, tmp_path: Path
) -> None:
    parent = write_module("bookshelf", SHELF)
    body = (
        make_app({"MODULES_PATH": str(parent)}).test_client().post("/api/v1/actions/bookshelf.boom")
    )
    assert body.status_code == 500
    assert "KeyError: 'the-missing-key'" in body.get_json()["detail"]

    from tests.served import production_secrets

    production = make_app(
        {"MODULES_PATH": str(parent), "SB_HTTP__WORKERS": "1", **production_secrets(tmp_path)}
    )
    hidden = production.test_client().post("/api/v1/actions/bookshelf.boom")
    assert hidden.status_code == 500 and "the-missing-key" not in hidden.get_data(as_text=True)
    assert "KeyError" not in hidden.get_data(as_text=True)


def test_call_as_a_user_an_api_key_or_scopes() -> None:
    database = f"sqlite:///{tempfile.mkdtemp(prefix='sbtest')}/app.db"
    env = {"DATABASE_URL": database}
    credentials = '{"email": "ann@example.com", "password": "correct horse battery"}'
    assert run("call", "auth.register", "--json", credentials, env=env).returncode == 0

    denied = run(
        "call",
        "auth.users.show",
        "--as",
        "ann@example.com",
        "--json",
        '{"email": "ann@example.com"}',
        env=env,
    )
    assert (
        denied.returncode == 1
        and stderr_json(denied)["detail"] == "auth.users.show needs role admin"
    )

    promoted = run("users", "promote", "ann@example.com", "librarain", env=env)
    assert (
        promoted.returncode == 0
        and "no action or room asks for role 'librarain'" in promoted.stderr
    )
    assert run("users", "promote", "ann@example.com", "admin", env=env).returncode == 0
    shown = stdout_json(
        run(
            "call",
            "auth.users.show",
            "--as",
            "ann@example.com",
            "--json",
            '{"email": "ann@example.com"}',
            env=env,
        )
    )
    assert shown["data"]["roles"] == ["admin", "librarain"]
    demoted = run("users", "demote", "ann@example.com", "librarain", env=env)
    assert demoted.returncode == 0 and "now has roles: admin" in demoted.stdout
    assert run("users", "disable", "ann@example.com", env=env).returncode == 0
    disabled = run("call", "system.ping", "--as", "ann@example.com", env=env)
    assert disabled.returncode == 1 and "is disabled" in stderr_json(disabled)["detail"]
    nobody = run("call", "system.ping", "--as", "nobody@example.com", env=env)
    assert nobody.returncode == 1 and stderr_json(nobody)["status"] == 404

    scoped = run("call", "auth.keys.list", "--scopes", "credits:read", env=env)
    assert scoped.returncode == 1 and "auth.keys.list" in stderr_json(scoped)["detail"]

    created = run(
        "keys", "create", "--name", "ci", "--scopes", "credits:reed", "--expires", "30d", env=env
    )
    assert (
        created.returncode == 0
        and "no action or room asks for scope 'credits:reed'" in created.stderr
    )
    assert re.search(
        r"^expires: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", created.stdout, re.MULTILINE
    )
    key = re.search(r"^key: +(\S+)$", created.stdout, re.MULTILINE)
    assert key is not None
    with_key = run("call", "system.ping", "--api-key", key.group(1), env=env)
    assert with_key.returncode == 0, with_key.stderr
    bad_key = run("call", "auth.me", "--api-key", "sb_not_a_key", env=env)
    assert bad_key.returncode == 1 and stderr_json(bad_key)["status"] == 401


def test_secrets_come_from_files_in_development_without_vault(
    make_app: MakeApp, write_module: WriteModule, tmp_path: Path
) -> None:
    parent = write_module(
        "pay",
        {
            "module.yaml": "secrets: [pay/*]\n",
            "actions.yaml": """\
                actions:
                  peek:
                    handler: handlers:peek
                    auth: public
                    params: {name: {type: string, required: true}}
                """,
            "handlers.py": """\
                def peek(ctx, *, name):
                    return {"length": len(ctx.secrets.get(name, "token"))}
                """,
        },
    )
    secrets = tmp_path / "local-secrets"
    (secrets / "pay").mkdir(parents=True)
    (secrets / "pay" / "gateway.json").write_text('{"token": "tok_dev_0123"}')
    (secrets / "other.json").write_text('{"token": "not-for-pay"}')
    client = make_app({"MODULES_PATH": str(parent), "SECRETS_DIR": str(secrets)}).test_client()

    def peek(name: str) -> tuple[int, dict[str, object]]:
        answer = client.post("/api/v1/actions/pay.peek", json={"name": name})
        return answer.status_code, answer.get_json()

    assert peek("pay/gateway")[1]["data"] == {"length": 12}
    status, body = peek("pay/missing")
    assert status == 404 and "pay/missing.json" in str(body["detail"])
    assert peek("other")[0] == 403  # outside the module's globs, file or not
    assert peek("pay/../other")[0] == 403


def test_a_development_500_masks_secrets_and_production_hides_a_steps_failure(
    make_app: MakeApp,
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = write_module(
        "vault",
        {
            "actions.yaml": """\
                actions:
                  open:
                    handler: handlers:open_it
                    auth: public
                    params: {pin: {type: string, secret: true, required: true}}
                """,
            "handlers.py": """\
                def open_it(ctx, *, pin):
                    return {"code": int(pin)}
                """,
        },
    )
    client = make_app({"MODULES_PATH": str(parent)}).test_client()
    answer = client.post("/api/v1/actions/vault.open", json={"pin": "12ab-SECRETPIN"})
    assert answer.status_code == 500
    detail = answer.get_json()["detail"]
    assert "ValueError" in detail and "SECRETPIN" not in detail and "***" in detail

    import core.pipeline.authorize

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("redis://:hunter2@10.0.0.5 refused")

    monkeypatch.setattr(core.pipeline.authorize, "refusal", broken)
    env = {"MODULES_PATH": str(parent), "SB_HTTP__WORKERS": "1"}
    from tests.served import production_secrets

    production = make_app({**env, **production_secrets(tmp_path)}).test_client()
    hidden = production.post("/api/v1/actions/vault.open", json={"pin": "1"})
    assert hidden.status_code == 500
    assert "hunter2" not in hidden.get_data(as_text=True)
    assert "RuntimeError" not in hidden.get_data(as_text=True)


def test_lifecycle_and_room_failures_are_problems_with_their_place(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    init = """\
        from core.contracts.module import BaseModule


        class Shop(BaseModule):
            def register_routes(self):
                raise RuntimeError("no routes today")
        """
    parent = write_module("shop", {"__init__.py": init, "actions.yaml": "actions: {}\n"})
    with pytest.raises(BootError) as failed:
        make_app({"MODULES_PATH": str(parent)})
    [problem] = failed.value.problems
    assert "register_routes failed: RuntimeError: no routes today" in problem.message
    assert problem.file is not None and problem.file.endswith("shop/__init__.py")
    assert problem.line == 6

    rooms = """\
        rooms:
          one: {join: {handler: "handlers:may_join"}}
          two: {join: {handler: "handlers:may_join"}}
        hooks:
          chat.said.loud: handlers:heard
        events: [said.loud]
        """
    parent = write_module("chat", {"module.yaml": rooms, "handlers.py": "1 / 0\n"}, parent="other")
    with pytest.raises(BootError) as failed:
        make_app({"MODULES_PATH": str(parent)})
    [problem] = failed.value.problems  # once, however many places name the file
    assert problem.line == 1 and "ZeroDivisionError" in problem.message
    assert problem.file is not None and problem.file.endswith("chat/handlers.py")


def test_the_harness_records_what_was_emitted_only(
    write_module: WriteModule, tmp_path: Path
) -> None:
    folder = write_module("bookshelf", SHELF) / "bookshelf"
    with Harness.boot(create_app, folder, tmp_path=tmp_path) as harness:
        assert harness.call("bookshelf.boom").status == 500
        failed = harness.events("action.failed")
        assert [e.data["action"] for e in failed] == ["bookshelf.boom"]
        assert harness.events("bookshelf.shelved") == []
