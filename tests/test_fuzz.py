"""The fuzz harness: every documented operation of a served process, asked what schemathesis
and hypothesis can think of. No answer may be a 5xx, none may leave the documented shapes.

In the suite it runs a small profile with a fixed seed (``FUZZ_EXAMPLES`` cases per
operation, 12 by default); ``make fuzz`` runs the nightly size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import socketio
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Err
from schemathesis.schemas import APIOperation

from app import ROOT
from tests.served import Server, promote, running

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("FUZZ_SEED", "7"))
PASSWORD = "correct horse battery staple"
# What would end the harness's own session or account: asked in their own tests.
SPARED = ("auth.logout", "auth.users.disable", "auth.users.delete")


@dataclass
class Target:
    server: Server
    headers: dict[str, str]  # an admin's credential: admin-only actions are reached too


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("fuzz")
    # Socket.IO's per-socket limits would end the fuzzing socket: raised out of the way.
    env = {"MODULES_PATH": str(ROOT / "tests" / "modules"), "SB_REALTIME__LIMITS": "1000/second"}
    with running(work, "serve", env=env) as server:
        account = json.dumps({"email": "fuzz@example.com", "password": PASSWORD}).encode()
        assert server.post("/api/v1/actions/auth.register", account).status == 200
        promote(server, "fuzz@example.com")
        login = server.post("/api/v1/actions/auth.login", account)
        token = login.json()["data"]["access_token"]
        yield Target(server, {"Authorization": f"Bearer {token}"})


def operations(server: Server) -> list[APIOperation[Any, Any, Any, Any]]:
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is wrong
            raise AssertionError(f"/openapi.json: {result.err()}")
        found.append(result.ok())
    return [op for op in found if op.definition.raw.get("operationId") not in SPARED]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_documented(target: Target, mode: GenerationMode) -> None:
    """schemathesis: cases drawn from each operation's schema (valid ones, then ones that
    break it), each answer held to the document: status, content type, body schema."""
    ops = operations(target.server)
    assert len(ops) > 20
    if mode is GenerationMode.NEGATIVE:  # only a body can break a schema here
        ops = [op for op in ops if op.method.upper() == "POST"]
    failures: list[str] = []
    for operation in ops:

        @hypothesis.seed(SEED)
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def ask(case: Case[Any]) -> None:
            # Valid params may still be refused (401, 404, 409, a handler's 422): that
            # check does not fit an API whose actions have business rules.
            case.call_and_validate(
                base_url=target.server.base,
                headers=target.headers,
                excluded_checks=[positive_data_acceptance],
                timeout=30,
            )

        try:
            ask()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


# --- bodies no schema describes -----------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=30),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "\u202e", "x" * 5000, "😀", "$where"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
RAW = st.one_of(
    st.sampled_from(
        [
            b'{"a": NaN}',
            b'{"a": 1e99999}',
            b'{"a": -Infinity}',
            b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}",
            b'{"a": ' + b"9" * 5000 + b"}",
            b'{"\\ud800": 1}',
            b'{"a": "\\u0000"}',
            b"\xff\xfe{}",
            b"",
            b"null",
            b"[]",
            b'{"a": 1,}',
        ]
    ),
    st.binary(max_size=64),
)


# The profile of the two hypothesis harnesses below: 20 cases per case of an operation.
BODIES = hypothesis.settings(
    max_examples=EXAMPLES * 20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def _actions(server: Server) -> list[str]:
    listing = requests.get(f"{server.base}/openapi.json", timeout=10).json()["paths"]
    prefix = "/api/v1/actions/"
    return sorted(p[len(prefix) :] for p in listing if p.startswith(prefix))


def check_answer(response: requests.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    assert response.headers["X-Request-ID"]
    if response.status_code == 200:
        assert response.headers["Content-Type"] == "application/json"
        assert set(response.json()) == {"data", "meta"}
    else:
        assert response.headers["Content-Type"] == "application/problem+json"
        problem: dict[str, Any] = response.json()
        assert problem["status"] == response.status_code
        assert problem["type"].startswith("/problems/")


def test_hostile_bodies_never_make_a_server_error(target: Target) -> None:
    actions = [a for a in _actions(target.server) if a not in SPARED]
    session = requests.Session()

    @hypothesis.seed(SEED)
    @BODIES
    @given(action=st.sampled_from(actions), body=st.one_of(JSON.map(_encode), RAW))
    def ask(action: str, body: bytes) -> None:
        response = session.post(
            f"{target.server.base}/api/v1/actions/{action}",
            data=body,
            headers={**target.headers, "Content-Type": "application/json"},
            timeout=30,
        )
        check_answer(response)

    ask()
    assert "Traceback" not in target.server.output()


def _encode(value: Any) -> bytes:
    """JSON text of ``value`` as a client would send it: lone surrogates escaped."""
    return json.dumps({"params": value} if not isinstance(value, dict) else value).encode()


def check_ack(event: str, answer: Any) -> None:
    """A Socket.IO acknowledgement: the data (a call's with its meta) or ``{"error": problem}``,
    never a 5xx."""
    assert isinstance(answer, dict), answer
    if "error" in answer:
        assert set(answer) == {"error"}, answer
        problem = answer["error"]
        assert 400 <= problem["status"] < 500, problem
        assert problem["type"].startswith("/problems/") and problem["request_id"]
    else:
        assert event in ("call", "join", "leave", "presence"), answer
        assert set(answer) == ({"data", "meta"} if event == "call" else {"data"}), answer


def test_hostile_socket_messages_never_make_a_server_error(target: Target) -> None:
    """The same hostile values over Socket.IO: calls, joins, leaves and presence queries."""
    actions = [a for a in _actions(target.server) if a not in SPARED]
    client = socketio.Client(reconnection=False)
    token = target.headers["Authorization"].split()[1]
    client.connect(target.server.base, auth={"token": token}, transports=["websocket"])
    call = st.one_of(
        st.builds(
            lambda action, params: {"action": action, "params": params},
            st.sampled_from(actions),
            JSON,
        ),
        st.fixed_dictionaries(
            {"action": st.one_of(st.sampled_from(actions), JSON)},
            optional={"params": JSON, "idempotency_key": JSON},
        ),
        JSON,
    )
    room = st.one_of(
        st.fixed_dictionaries(
            {
                "room": st.one_of(
                    st.sampled_from(["fuzzkit.open", "fuzzkit.staff", "fuzzkit.none"]), JSON
                )
            }
        ),
        JSON,
    )
    message = st.one_of(
        st.tuples(st.just("call"), call),
        st.tuples(st.sampled_from(["join", "leave", "presence"]), room),
        st.tuples(  # events no one declared, and several payloads in one message
            st.sampled_from(["call", "join", "message", "call.x", "ping"]),
            st.lists(JSON, min_size=2, max_size=3).map(tuple),
        ),
    )

    @hypothesis.seed(SEED)
    @BODIES
    @given(message=message)
    def ask(message: tuple[str, Any]) -> None:
        check_ack(message[0], client.call(*message, timeout=30))
        assert client.connected

    try:
        ask()
    finally:
        client.disconnect()
    assert "Traceback" not in target.server.output()


def test_the_fuzzed_server_wrote_no_traceback(target: Target) -> None:
    # After both harnesses above: nothing reached the unexpected-error handler.
    output = target.server.output()
    assert "Traceback" not in output and "failed unexpectedly" not in output
