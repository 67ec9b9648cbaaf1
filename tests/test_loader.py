"""Module and action discovery: drop-in folders load; every mistake is a boot error naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from core.base.errors import BootError, DeclarationError, ModuleError, Problem, RegistryFrozen
from core.transports.http import extension
from managers.action_discovery_manager import ActionDiscoveryManager
from managers.modules.manager import ModuleManager
from tests.conftest import MakeApp, WriteModule
from tests.helpers import module_object

HELLO_ACTIONS = """
actions:
  hello:
    summary: Greet
    handler: handlers:hello
    auth: public
    params:
      name: {type: string, minLength: 1, default: world}
"""
HELLO_HANDLERS = """
def hello(ctx, *, name="world"):
    return {"greeting": f"hello, {name}", "module": ctx.module, "caller": ctx.caller.kind}
"""


def boot_error(
    make_app: MakeApp, parent: Path, kind: type[BootError] = BootError, **env: str
) -> list[Problem]:
    with pytest.raises(kind) as caught:
        make_app({"MODULES_PATH": str(parent), **env})
    return list(caught.value.problems)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def call(
    app: Flask, name: str, params: dict[str, object] | None = None
) -> tuple[int, dict[str, Any]]:
    response = app.test_client().post(f"/api/v1/actions/{name}", json=params or {})
    return response.status_code, response.get_json()


# --- modules that load --------------------------------------------------------------------


def test_a_module_on_modules_path_is_listed_and_callable(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    parent = write_module("greeter", {"actions.yaml": HELLO_ACTIONS, "handlers.py": HELLO_HANDLERS})
    app = make_app({"MODULES_PATH": str(parent)})
    names = [a["name"] for a in app.test_client().get("/api/v1/actions").get_json()["data"]]
    assert "greeter.hello" in names
    status, body = call(app, "greeter.hello", {"name": "ann"})
    assert status == 200
    assert body["data"] == {"greeting": "hello, ann", "module": "greeter", "caller": "anonymous"}
    assert call(app, "greeter.hello")[1]["data"]["greeting"] == "hello, world"  # default


def test_modules_path_takes_several_folders(
    make_app: MakeApp, write_module: WriteModule, tmp_path: Path
) -> None:
    first = write_module(
        "one", {"actions.yaml": HELLO_ACTIONS, "handlers.py": HELLO_HANDLERS}, parent="a"
    )
    second = write_module(
        "two", {"actions.yaml": HELLO_ACTIONS, "handlers.py": HELLO_HANDLERS}, parent="b"
    )
    app = make_app({"MODULES_PATH": f"{first}:{second}"})
    assert call(app, "one.hello")[0] == 200
    assert call(app, "two.hello")[0] == 200


def test_a_folder_copied_into_modules_of_a_project_loads(make_app: MakeApp, tmp_path: Path) -> None:
    folder = tmp_path / "project" / "modules" / "shop"
    folder.mkdir(parents=True)
    (folder / "actions.yaml").write_text(HELLO_ACTIONS)
    (folder / "handlers.py").write_text(HELLO_HANDLERS)
    app = make_app(root=tmp_path / "project")
    assert extension(app).app_manager.get(ModuleManager).names() == ["shop"]
    assert call(app, "shop.hello", {"name": "bo"})[1]["data"]["greeting"] == "hello, bo"


def test_the_seed_format_loads_unchanged(make_app: MakeApp, write_module: WriteModule) -> None:
    parent = write_module(
        "legacy",
        {
            "__init__.py": """
            from core.contracts.module import BaseModule

            class LegacyModule(BaseModule):
                def initialize(self, app_manager):
                    self.app_manager = app_manager
                    self.seen = []

                def _create_item(self, args):
                    self.seen.append(args)
                    return {"created": args["title"], "count": args.get("count", 1)}
            """,
            "actions.yaml": """
            config:
              default_timeout: 30
              max_retries: 3
              cache_enabled: false
            actions:
              create_item:
                type: function
                function: create_item
                description: Create an item
                required_params: [title]
                optional_params: [count, extra]
                parameter_types: {title: str, count: int}
                examples: [{title: a}]
                url_pattern: /items
                auth: public
            """,
        },
    )
    app = make_app({"MODULES_PATH": str(parent)})
    listed = {a["name"]: a for a in app.test_client().get("/api/v1/actions").get_json()["data"]}
    spec = listed["legacy.create_item"]
    assert spec["summary"] == "Create an item"
    assert spec["timeout"] == 30.0
    assert spec["params"]["properties"] == {
        "title": {"type": "string"},
        "count": {"type": "integer"},
        "extra": {},
    }
    assert spec["params"]["required"] == ["title"]
    status, body = call(app, "legacy.create_item", {"title": "lamp", "extra": [1, {"a": None}]})
    assert status == 200 and body["data"] == {"created": "lamp", "count": 1}
    module = module_object(app, "legacy")
    assert module.seen == [{"title": "lamp", "extra": [1, {"a": None}]}]
    status, body = call(app, "legacy.create_item", {"title": "lamp", "count": "two"})
    assert status == 422 and body["errors"][0]["path"] == "/count"


def test_operator_actions_folder_binds_to_a_module(make_app: MakeApp, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "modules" / "shop").mkdir(parents=True)
    (project / "modules" / "shop" / "handlers.py").write_text(HELLO_HANDLERS)
    (project / "actions").mkdir()
    (project / "actions" / "extras.yaml").write_text("module: shop\n" + HELLO_ACTIONS)
    app = make_app(root=project)
    assert call(app, "shop.hello")[1]["data"]["module"] == "shop"


def test_module_lifecycle_runs_in_dependency_order_and_disposes_in_reverse(
    make_app: MakeApp, write_module: WriteModule, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.txt"
    lifecycle = f"""
        from core.contracts.module import BaseModule

        def note(text):
            with open({str(journal)!r}, "a") as f:
                f.write(text + "\\n")

        class Mod(BaseModule):
            def initialize(self, app_manager):
                note("init " + self.module_name)
            def configure(self):
                note("configure " + self.module_name + " " + repr(dict(self.settings)))
            def dispose(self):
                note("dispose " + self.module_name)
        """
    write_module("zeta", {"__init__.py": lifecycle, "module.yaml": "config: {size: 1}\n"})
    parent = write_module(
        "alpha", {"__init__.py": lifecycle, "module.yaml": "depends_on: [zeta]\nversion: 2.0.0\n"}
    )
    app = make_app({"MODULES_PATH": str(parent)})
    info = call(app, "system.info")[1]["data"]
    assert {"name": "alpha", "version": "2.0.0", "status": "ok"} in info["modules"]
    from core.transports.flask_app import shutdown_app

    shutdown_app(app)
    lines = journal.read_text().splitlines()
    assert lines == [
        "init zeta",
        "configure zeta {'size': 1}",
        "init alpha",
        "configure alpha {}",
        "dispose alpha",
        "dispose zeta",
    ]


def test_operator_settings_override_module_config(
    make_app: MakeApp, write_module: WriteModule, tmp_path: Path
) -> None:
    parent = write_module(
        "tuned",
        {
            "module.yaml": "config: {size: 1, color: red}\n",
            "__init__.py": "from core.contracts.module import BaseModule\n"
            "class Tuned(BaseModule):\n    pass\n",
        },
    )
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "config" / "default.yaml").write_text(
        "modules:\n  settings:\n    tuned: {size: 5}\n"
    )
    app = make_app({"MODULES_PATH": str(parent)}, root=project)
    module = module_object(app, "tuned")
    assert module.settings == {"size": 5, "color": "red"}


def test_a_module_may_add_routes(make_app: MakeApp, write_module: WriteModule) -> None:
    parent = write_module(
        "web",
        {
            "__init__.py": """
        from core.contracts.module import BaseModule

        class Web(BaseModule):
            def register_routes(self):
                self.app_manager.flask.add_url_rule("/web/hi", "web_hi", lambda: "hi")
        """
        },
    )
    app = make_app({"MODULES_PATH": str(parent)})
    assert app.test_client().get("/web/hi").get_data(as_text=True) == "hi"


def test_registering_an_action_after_boot_raises(app: Flask) -> None:
    actions = extension(app).app_manager.get(ActionDiscoveryManager)
    with pytest.raises(RegistryFrozen):
        actions.register(actions.actions()[0])


# --- modules that fail --------------------------------------------------------------------


def test_initialize_failure_fails_the_boot_by_default(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    parent = write_module(
        "fragile",
        {
            "__init__.py": "from core.contracts.module import BaseModule\n"
            "class Fragile(BaseModule):\n"
            "    def initialize(self, app_manager):\n"
            "        raise ConnectionError('no upstream')\n",
            "actions.yaml": HELLO_ACTIONS,
            "handlers.py": HELLO_HANDLERS,
        },
    )
    problem = only(boot_error(make_app, parent, ModuleError))
    assert problem.module == "fragile"
    assert "ConnectionError: no upstream" in problem.message


def test_non_strict_reports_the_failed_module_and_its_actions_answer_503(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    write_module(
        "fragile",
        {
            "__init__.py": "from core.contracts.module import BaseModule\n"
            "class Fragile(BaseModule):\n"
            "    def initialize(self, app_manager):\n"
            "        raise ConnectionError('no upstream')\n",
            "actions.yaml": HELLO_ACTIONS,
            "handlers.py": HELLO_HANDLERS,
        },
    )
    parent = write_module(
        "leaning",
        {
            "module.yaml": "depends_on: [fragile]\n",
            "actions.yaml": HELLO_ACTIONS,
            "handlers.py": HELLO_HANDLERS,
        },
    )
    app = make_app({"MODULES_PATH": str(parent), "MODULES_STRICT": "false"})
    status, body = call(app, "fragile.hello")
    assert status == 503 and body["type"] == "/problems/dependency-unavailable"
    assert "fragile" in body["detail"]
    assert call(app, "leaning.hello")[0] == 503  # depends on the failed module
    assert call(app, "system.ping")[0] == 200
    ready = app.test_client().get("/health/ready")
    assert ready.status_code == 200  # the operator chose to serve what works
    modules = ready.get_json()["checks"]["modules"]
    assert modules["status"] == "degraded"
    assert modules["modules"]["fragile"]["status"] == "failed"
    assert modules["modules"]["leaning"]["error"] == "depends on failed fragile"


def test_a_dependency_cycle_names_the_modules(make_app: MakeApp, write_module: WriteModule) -> None:
    write_module("aaa", {"module.yaml": "depends_on: [bbb]\n"})
    parent = write_module("bbb", {"module.yaml": "depends_on: [aaa]\n"})
    problem = only(boot_error(make_app, parent, ModuleError))
    assert "cycle" in problem.message
    assert "aaa" in problem.message and "bbb" in problem.message


def test_a_missing_dependency_names_both_modules(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    parent = write_module("needy", {"module.yaml": "depends_on: [ghost]\n"})
    problem = only(boot_error(make_app, parent, ModuleError))
    assert problem.module == "needy" and "'ghost'" in problem.message
    assert problem.field == "depends_on"


def test_the_same_module_name_twice_names_both_paths(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    parent = write_module("system", {"actions.yaml": "actions: {}\n"})
    problem = only(boot_error(make_app, parent, ModuleError))
    assert "modules/system" in problem.message and str(parent / "system") in problem.message


@pytest.mark.parametrize(
    ("manifest", "field", "words"),
    [
        ("colour: red\n", "colour", "unknown key"),
        ("name: Bad-Name\n", "name", "must match"),
        ("depends_on: other\n", "depends_on", "list of strings"),
        ("requires: [telepathy]\n", "requires", "manager 'telepathy'"),
        ("version: [1]\n", "version", "string"),
    ],
)
def test_manifest_mistakes_are_named(
    make_app: MakeApp, write_module: WriteModule, manifest: str, field: str, words: str
) -> None:
    parent = write_module("mani", {"module.yaml": manifest})
    problem = only(boot_error(make_app, parent, ModuleError))
    assert problem.field == field and words in problem.message
    assert problem.file is not None and "mani" in problem.file


def test_a_missing_modules_path_entry_is_an_error(make_app: MakeApp, tmp_path: Path) -> None:
    problem = only(boot_error(make_app, tmp_path / "nope", ModuleError))
    assert "not a directory" in problem.message and problem.field == "modules.path"


def test_an_import_error_in_a_module_is_named(make_app: MakeApp, write_module: WriteModule) -> None:
    parent = write_module("broken", {"__init__.py": "import not_a_real_package\n"})
    problem = only(boot_error(make_app, parent, ModuleError))
    assert problem.module == "broken" and "not_a_real_package" in problem.message


# --- declarations that fail ---------------------------------------------------------------


def declaration_problems(
    make_app: MakeApp, write_module: WriteModule, actions: str, handlers: str = HELLO_HANDLERS
) -> list[Problem]:
    parent = write_module("decl", {"actions.yaml": actions, "handlers.py": handlers})
    return boot_error(make_app, parent, DeclarationError)


def test_invalid_yaml_names_file_and_line(make_app: MakeApp, write_module: WriteModule) -> None:
    problem = only(
        declaration_problems(make_app, write_module, "actions:\n  hello:\n    handler: [unclosed\n")
    )
    assert problem.file is not None and problem.file.endswith("decl/actions.yaml")
    assert "invalid YAML" in problem.message and "line" in problem.message


@pytest.mark.parametrize(
    ("declaration", "field", "words"),
    [
        ("handler: handlers:hello\n    hanlder: x", "hanlder", "unknown key 'hanlder'"),
        ("handler: handlers:hello\n    auth: everyone", "auth", "is not one of"),
        ("handler: handlers:hello\n    params: {name: {type: text}}", "params.name.type", ""),
        (
            "handler: handlers:hello\n    params: {name: {type: string, minLen: 1}}",
            "params.name.minLen",
            "unknown key",
        ),
        ("handler: handlers:hello\n    params: {ctx: {type: string}}", "params", "'ctx'"),
        ("handler: handlers:hello\n    rate_limit: [ten per minute]", "rate_limit.0", ""),
        ("handler: handlers:hello\n    rate_limit: [10/ms]", "rate_limit.0", ""),
        (
            "handler: handlers:hello\n    rate_limit: [5/minute, 10/400day]",
            "rate_limit.1",
            "'10/400day'",
        ),
        ("handler: handlers:hello\n    timeout: soon", "timeout", ""),
        ("summary: no handler", "handler", "'handler' is a required property"),
        ("handler: handlers:nothing", "handler", "no function 'nothing'"),
        ("handler: missing:hello", "handler", "missing.py not found"),
        (
            "handler: handlers:hello\n    params: {name: {type: string}, age: {type: integer}}",
            "params.age",
            "does not accept declared param 'age'",
        ),
        (
            "handler: handlers:hello\n    params: {name: {type: string, required: true, "
            "default: x}}",
            "params.name.default",
            "required param cannot have a default",
        ),
        (
            "handler: handlers:hello\n    params: {name: {type: string, default: 5}}",
            "params.name.default",
            "does not satisfy",
        ),
        (
            "handler: handlers:hello\n    params: {name: {type: string, pattern: '(['}}",
            "params.name",
            "invalid schema",
        ),
        ("type: database\n    collection: x", "operation", "'operation' is a required property"),
        (
            "type: http\n    service: s\n    method: GET\n    url: https://example.invalid",
            "url",
            "unknown key 'url'",
        ),
        (
            "type: database\n    operation: find\n    collection: sb_users",
            "collection",
            "runtime's own",
        ),
        ("type: datbase\n    collection: x", "type", "unknown type 'datbase'"),
    ],
)
def test_declaration_mistakes_name_file_module_action_and_field(
    make_app: MakeApp, write_module: WriteModule, declaration: str, field: str | None, words: str
) -> None:
    problem = only(
        declaration_problems(make_app, write_module, f"actions:\n  hello:\n    {declaration}\n")
    )
    assert problem.file is not None and problem.file.endswith("decl/actions.yaml")
    assert problem.module == "decl"
    assert problem.action == "decl.hello"
    assert problem.field == field
    assert words in problem.message


def test_a_handler_needing_an_undeclared_param_is_an_error(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    problems = declaration_problems(
        make_app,
        write_module,
        "actions:\n  hi:\n    handler: handlers:hi\n    params: {opt: {type: string}}\n",
        "def hi(ctx, *, must, opt):\n    return 1\n",
    )
    messages = sorted(p.message for p in problems)
    assert any("requires 'must'" in m for m in messages)
    assert any("'opt' is optional but handler" in m for m in messages)


def test_a_handler_without_ctx_is_an_error(make_app: MakeApp, write_module: WriteModule) -> None:
    problem = only(
        declaration_problems(
            make_app,
            write_module,
            "actions:\n  hi:\n    handler: handlers:hi\n",
            "def hi(*, name=None):\n    return 1\n",
        )
    )
    assert "ctx as its first" in problem.message


def test_seed_mistakes_are_named(make_app: MakeApp, write_module: WriteModule) -> None:
    parent = write_module(
        "legacy",
        {
            "__init__.py": "from core.contracts.module import BaseModule\n"
            "class Legacy(BaseModule):\n"
            "    def _two(self, a, b):\n        return 1\n",
            "actions.yaml": """
            actions:
              missing:
                type: function
                function: nowhere
              arity:
                type: function
                function: two
              typed:
                type: function
                function: two
                required_params: [a]
                optional_params: [a]
                parameter_types: {b: decimal}
            """,
        },
    )
    problems = boot_error(make_app, parent, DeclarationError)
    by_action: dict[str | None, list[str]] = {}
    for p in problems:
        by_action.setdefault(p.action, []).append(f"{p.field}: {p.message}")
    assert any("no method _nowhere" in m for m in by_action["legacy.missing"])
    assert any("one dict argument" in m for m in by_action["legacy.arity"])
    assert any(m.startswith("parameter_types.b") for m in by_action["legacy.typed"])


def test_every_problem_in_every_file_is_reported_together(
    make_app: MakeApp, write_module: WriteModule
) -> None:
    write_module(
        "first",
        {
            "actions.yaml": "actions:\n  a: {handler: handlers:nope}\n"
            "  b: {handler: handlers:nope, bogus: 1}\n"
        },
    )
    parent = write_module("second", {"actions.yaml": "actions:\n  c: {auth: public}\n"})
    problems = boot_error(make_app, parent, DeclarationError)
    assert {p.action for p in problems} == {"first.a", "first.b", "second.c"}


def test_duplicate_action_names_name_both_files(make_app: MakeApp, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "modules" / "shop").mkdir(parents=True)
    (project / "modules" / "shop" / "actions.yaml").write_text(HELLO_ACTIONS)
    (project / "modules" / "shop" / "handlers.py").write_text(HELLO_HANDLERS)
    (project / "actions").mkdir()
    (project / "actions" / "shop.yaml").write_text(HELLO_ACTIONS)
    with pytest.raises(DeclarationError) as caught:
        make_app(root=project)
    problem = only(list(caught.value.problems))
    assert problem.action == "shop.hello"
    assert problem.file == "actions/shop.yaml"
    assert "modules/shop/actions.yaml" in problem.message


def test_operator_file_top_level_mistakes(make_app: MakeApp, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "actions").mkdir(parents=True)
    (project / "actions" / "Bad-Name.yaml").write_text("actions: {}\n")
    (project / "actions" / "extra.yaml").write_text("actoins: {}\n")
    with pytest.raises(DeclarationError) as caught:
        make_app(root=project)
    messages = sorted(str(p) for p in caught.value.problems)
    assert any("Bad-Name.yaml" in m and "set module:" in m for m in messages)
    assert any("extra.yaml" in m and "unknown top-level key 'actoins'" in m for m in messages)


# --- a code-free type of one's own ------------------------------------------------------


@pytest.fixture
def echo_type() -> Iterator[None]:
    """A code-free type registered as a file of core/actions/code_free/ registers one."""
    from core.actions.code_free import TYPES, Build, CodeFree, CodeFreeError, CodeFreeType, register
    from core.actions.declaration_schema import TYPED_PARAMS, code_free_schema

    def build(given: Build) -> CodeFree:
        prefix = given.decl["prefix"]
        if not prefix.strip():
            raise CodeFreeError("prefix: say something", "prefix")
        return CodeFree(
            lambda ctx, values: {"said": prefix + str(values.get("text", ""))},
            handler=f"echo:{prefix}",
            read_only=True,
            uses_caller=False,
        )

    schema = code_free_schema(
        ["prefix"],
        {"type": {"const": "echo"}, "prefix": {"type": "string"}, "params": TYPED_PARAMS},
    )
    register(CodeFreeType("echo", build, typed=schema))
    yield
    del TYPES["echo"]


def test_a_registered_code_free_type_loads_runs_and_names_its_mistakes(
    make_app: MakeApp, write_module: WriteModule, echo_type: None
) -> None:
    actions = """
actions:
  say:
    type: echo
    auth: public
    prefix: "you said: "
    params:
      text: {type: string, required: true}
"""
    app = make_app({"MODULES_PATH": str(write_module("talk", {"actions.yaml": actions}))})
    status, body = call(app, "talk.say", {"text": "hi"})
    assert status == 200 and body["data"] == {"said": "you said: hi"}
    assert call(app, "talk.say")[0] == 422  # its params are checked like any action's
    found = extension(app).pipeline.registry.lookup("talk.say")
    assert found is not None and found.spec.handler == "echo:you said: "

    wrong = """
actions:
  say:
    type: echo
    prefix: 3
  shout:
    type: echo
    prefix: "  "
  seed:
    type: echo
    prefix: ok
    required_params: [text]
"""
    problems = declaration_problems(make_app, write_module, wrong)
    by_action = {str(p.action).rsplit(".", 1)[-1]: p for p in problems}
    assert by_action["say"].field == "prefix" and "string" in by_action["say"].message
    assert by_action["shout"].field == "prefix" and "say something" in by_action["shout"].message
    assert by_action["seed"].field == "required_params"  # the typed form has no such key


def test_an_unknown_type_lists_the_registered_ones(
    make_app: MakeApp, write_module: WriteModule, echo_type: None
) -> None:
    problem = only(declaration_problems(make_app, write_module, "actions:\n  x:\n    type: ech\n"))
    assert "unknown type 'ech'" in problem.message
    assert "database, echo, external_api, http" in problem.message
