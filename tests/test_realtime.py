"""Realtime over Socket.IO: real server processes, the real python-socketio client.

A module of the tests' own (``tests/realtime_modules/chat``) declares a room of every join
policy, pushes to rooms and users, and forwards an event and a state machine to rooms.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests
import socketio

from app import ROOT
from tests.served import Server, cli, running
from tests.servers import RedisServer

PASSWORD = "correct horse battery staple"
MODULES = str(ROOT / "tests" / "realtime_modules")
WAIT = 10.0


@dataclass
class Sock:
    """A connected python-socketio client that records every event it receives."""

    client: socketio.Client
    received: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ended: threading.Event = field(default_factory=threading.Event)

    def ask(self, event: str, payload: Any) -> Any:
        return self.client.call(event, payload, timeout=WAIT)

    def call(self, action: str, params: Any = None, **extra: Any) -> Any:
        return self.ask("call", {"action": action, "params": params or {}, **extra})

    def got(self, event: str, match: Callable[[Any], bool] = lambda _: True) -> list[Any]:
        with self.lock:
            return [data for name, data in self.received if name == event and match(data)]

    def wait_for(self, event: str, match: Callable[[Any], bool] = lambda _: True) -> Any:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = self.got(event, match)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} matching within {WAIT}s; got {self.received}")


def connect(base: str, auth: dict[str, str] | None) -> Sock:
    client = socketio.Client(reconnection=False)
    sock = Sock(client)

    def any_event(event: str, data: Any = None) -> None:
        with sock.lock:
            sock.received.append((event, data))

    client.on("*", any_event)
    client.on("disconnect", lambda *_: sock.ended.set())

    client.connect(base, auth=auth, transports=["websocket"], wait_timeout=WAIT)
    return sock


def refused(base: str, auth: Any) -> dict[str, Any]:
    """The problem a refused connect carries (connect_error data)."""
    client = socketio.Client(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(base, auth=auth, transports=["websocket"], wait_timeout=WAIT)
    assert errors, "no connect_error"
    problem: dict[str, Any] = errors[0]
    return problem


@dataclass
class World:
    server: Server
    tokens: dict[str, str] = field(default_factory=dict)  # email -> access token
    ids: dict[str, str] = field(default_factory=dict)  # email -> user id
    sockets: list[Sock] = field(default_factory=list)

    def user(self, email: str) -> str:
        account = {"email": email, "password": PASSWORD}
        made = requests.post(self.action("auth.register"), json=account, timeout=WAIT)
        assert made.status_code == 200, made.text
        self.ids[email] = made.json()["data"]["id"]
        return self.login(email)

    def login(self, email: str) -> str:
        account = {"email": email, "password": PASSWORD}
        login = requests.post(self.action("auth.login"), json=account, timeout=WAIT)
        assert login.status_code == 200, login.text
        self.tokens[email] = login.json()["data"]["access_token"]
        return self.tokens[email]

    def action(self, name: str) -> str:
        return f"{self.server.base}/api/v1/actions/{name}"

    def post(self, name: str, params: dict[str, Any], token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.post(self.action(name), json=params, headers=headers, timeout=WAIT)

    def sock(self, email: str | None = None, **auth: str) -> Sock:
        if email is not None:
            auth["token"] = self.tokens[email]
        sock = connect(self.server.base, auth or None)
        self.sockets.append(sock)
        return sock

    def api_key(self, *scopes: str) -> str:
        args = ["keys", "create", "--name", "rt"]
        if scopes:
            args += ["--scopes", ",".join(scopes)]
        made = cli(self.server, *args)
        assert made.returncode == 0, made.stderr
        return next(
            line.split()[-1] for line in made.stdout.splitlines() if line.startswith("key:")
        )


@contextlib.contextmanager
def world(tmp_path: Path, **env: str) -> Iterator[World]:
    full = {"MODULES_PATH": MODULES, "DATABASE_URL": f"sqlite:///{tmp_path}/app.db", **env}
    with running(tmp_path, "serve", env=full) as server:
        built = World(server)
        try:
            yield built
        finally:
            for sock in built.sockets:
                with contextlib.suppress(Exception):
                    sock.client.disconnect()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server for the tests that only add to it."""
    with world(tmp_path_factory.mktemp("realtime")) as built:
        yield built


# --- connecting -----------------------------------------------------------------------


def test_a_token_or_an_api_key_connects(shared: World) -> None:
    shared.user("ann@example.com")
    assert shared.sock("ann@example.com").client.connected
    assert shared.sock(api_key=shared.api_key()).client.connected


@pytest.mark.parametrize(
    "auth",
    [None, {}, {"token": "not-a-token"}, {"api_key": "sb_nope_nope"}, {"token": 5}],
    ids=["none", "empty", "bad token", "bad key", "not a string"],
)
def test_a_missing_or_bad_credential_is_refused_with_the_problem(shared: World, auth: Any) -> None:
    error = refused(shared.server.base, auth)
    problem = error["data"]
    assert problem["status"] == 401 and problem["type"] == "/problems/unauthenticated"
    assert problem["request_id"]
    assert error["message"] == problem["detail"]


def test_a_revoked_token_is_refused(shared: World) -> None:
    token = shared.user("gone@example.com")
    assert shared.post("auth.logout", {}, token).status_code == 200
    assert refused(shared.server.base, {"token": token})["data"]["status"] == 401


def test_anonymous_sockets_when_the_setting_allows_them(tmp_path: Path) -> None:
    with world(tmp_path, SB_REALTIME__ANONYMOUS="true") as built:
        sock = built.sock()
        assert sock.ask("join", {"room": "chat.open"}) == {"data": {"room": "chat.open"}}
        assert sock.ask("join", {"room": "chat.lobby"})["error"]["status"] == 403
        echoed = sock.call("system.echo", {"message": "hi"})
        assert echoed["data"] == {"message": "hi"}
        other = built.sock()  # each anonymous socket is a member of its own
        assert "data" in other.ask("join", {"room": "chat.open"})
        members = sock.ask("presence", {"room": "chat.open"})["data"]["members"]
        ids = {m["id"] for m in members}
        assert len(ids) == 2 and {m["kind"] for m in members} == {"anonymous"}
        assert not ids & {sock.client.get_sid(), other.client.get_sid()}  # not session ids
        other.client.disconnect()
        left = sock.wait_for("presence", lambda d: "left" in d)["left"]
        members = sock.ask("presence", {"room": "chat.open"})["data"]["members"]
        assert [m["id"] for m in members] == list(ids - {left["id"]})


def test_realtime_can_be_switched_off(tmp_path: Path) -> None:
    with world(tmp_path, SB_REALTIME__ENABLED="false") as built:
        info = requests.post(built.action("system.info"), json={}, timeout=WAIT).json()["data"]
        assert info["realtime_url"] is None
        polled = requests.get(f"{built.server.base}/socket.io/?EIO=4&transport=polling")
        assert polled.status_code == 404
        assert requests.post(built.action("system.ping"), json={}).status_code == 200


# --- calls ----------------------------------------------------------------------------


def test_a_call_gets_the_envelope_http_would_send(shared: World) -> None:
    shared.user("cal@example.com")
    sock = shared.sock("cal@example.com")
    answer = sock.call("system.echo", {"message": "hi"})
    assert answer["data"] == {"message": "hi"}
    assert answer["meta"]["action"] == "system.echo" and answer["meta"]["request_id"]
    me = sock.call("auth.me")
    assert me["data"]["email"] == "cal@example.com"  # the socket's identity, not a payload's


@pytest.mark.parametrize(
    ("payload", "status", "slug"),
    [
        ("not an object", 400, "malformed-request"),
        ({"params": {}}, 400, "malformed-request"),
        ({"action": "system.echo", "params": [1]}, 400, "malformed-request"),
        ({"action": "system.echo", "params": {"message": "x"}, "idempotency_key": 5}, 400, None),
        ({"action": "system.nope"}, 404, "not-found"),
        ({"action": "system.echo", "params": {"message": 5}}, 422, "validation"),
        ({"action": "system.echo", "params": {"message": float("nan")}}, 400, None),
        ({"action": "system.echo", "params": {"message": "\ud800"}}, 400, None),
        ({"action": "auth.keys.list"}, 403, "forbidden"),
        ({"action": "system.echo", "params": {"message": "x" * 3000}}, 413, "payload-too-large"),
    ],
    ids=[
        "not an object",
        "no action",
        "params not an object",
        "key not a string",
        "unknown action",
        "invalid params",
        "NaN",
        "lone surrogate",
        "not an admin",
        "over max_body_bytes",
    ],
)
def test_each_bad_call_gets_an_error_ack(
    small: World,
    payload: Any,
    status: int,
    slug: str | None,
) -> None:
    sock = small.sockets[0]
    answer = sock.ask("call", payload)
    assert answer["error"]["status"] == status, answer
    if slug is not None:
        assert answer["error"]["type"] == f"/problems/{slug}"
    assert sock.client.connected  # an error ack, never a dropped socket
    assert sock.call("system.echo", {"message": "still"})["data"] == {"message": "still"}


@pytest.mark.parametrize(
    ("event", "args", "status"),
    [
        ("join", (), 400),
        ("presence", (), 400),
        ("call", (), 400),
        ("join", ({"room": "chat.open"}, "extra"), 400),
        ("whatever", ({"room": "chat.open"},), 404),
    ],
    ids=[
        "join without payload",
        "presence without payload",
        "call without payload",
        "two payloads",
        "unknown event",
    ],
)
def test_odd_messages_get_an_error_ack(
    small: World, event: str, args: tuple[Any, ...], status: int
) -> None:
    sock = small.sockets[0]
    answered: list[Any] = []
    done = threading.Event()

    def acked(*ack: Any) -> None:
        answered.extend(ack)
        done.set()

    sock.client.emit(event, args, callback=acked)
    assert done.wait(WAIT), f"no ack to {event}{args}"
    assert answered[0]["error"]["status"] == status, answered
    assert answered[0]["error"]["request_id"]
    assert sock.call("system.echo", {"message": "still"})["data"] == {"message": "still"}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A server with a small body limit and one user socket (that many tests share)."""
    path = tmp_path_factory.mktemp("small")
    env = {"SB_HTTP__MAX_BODY_BYTES": "2000", "SB_REALTIME__LIMITS": "1000/second"}
    with world(path, **env) as built:
        built.user("small@example.com")
        built.sock("small@example.com")
        yield built


def test_an_idempotent_replay_says_so(shared: World) -> None:
    shared.user("idem@example.com")
    sock = shared.sock("idem@example.com")
    first = sock.call("chat.count", {"by": 5}, idempotency_key="k1")
    again = sock.call("chat.count", {"by": 5}, idempotency_key="k1")
    assert again["data"] == first["data"]
    assert again["meta"].get("replayed") is True and "replayed" not in first["meta"]
    other = sock.call("chat.count", {"by": 6}, idempotency_key="k1")
    assert other["error"]["type"] == "/problems/idempotency-mismatch"


# --- rooms ----------------------------------------------------------------------------


def test_room_policies(shared: World) -> None:
    shared.user("plain@example.com")
    shared.user("vip@example.com")
    user, vip = shared.sock("plain@example.com"), shared.sock("vip@example.com")
    key = shared.sock(api_key=shared.api_key())
    reader = shared.sock(api_key=shared.api_key("chat:read"))

    def status(sock: Sock, room: str) -> int:
        answer = sock.ask("join", {"room": room})
        return 200 if "data" in answer else int(answer["error"]["status"])

    assert [status(user, r) for r in ("chat.lobby", "chat.keys", "chat.anyone", "chat.open")] == [
        200,
        403,
        200,
        200,
    ]
    assert [status(key, r) for r in ("chat.lobby", "chat.keys", "chat.anyone")] == [403, 200, 200]
    assert status(user, "chat.mods") == 403  # no moderator role
    assert (status(key, "chat.readers"), status(reader, "chat.readers")) == (403, 200)
    assert (status(user, "chat.vip"), status(vip, "chat.vip")) == (403, 200)
    assert status(user, "chat.nope") == 404
    assert user.ask("join", {"room": 5})["error"]["status"] == 400
    assert user.ask("leave", {"room": "chat.lobby"}) == {"data": {"room": "chat.lobby"}}


def test_a_role_comes_with_a_new_connection(shared: World) -> None:
    shared.user("mod@example.com")
    before = shared.sock("mod@example.com")
    assert before.ask("join", {"room": "chat.mods"})["error"]["status"] == 403
    assert cli(shared.server, "users", "promote", "mod@example.com", "moderator").returncode == 0
    after = shared.sock(token=shared.login("mod@example.com"))
    assert after.ask("join", {"room": "chat.mods"}) == {"data": {"room": "chat.mods"}}


# --- pushes ---------------------------------------------------------------------------


def test_a_push_reaches_the_room_and_only_the_room(shared: World) -> None:
    token = shared.user("pusher@example.com")
    shared.user("inside@example.com")
    shared.user("outside@example.com")
    inside, outside = shared.sock("inside@example.com"), shared.sock("outside@example.com")
    assert "data" in inside.ask("join", {"room": "chat.lobby"})
    sent = shared.post("chat.say", {"room": "chat.lobby", "text": "over HTTP"}, token)
    assert sent.status_code == 200
    got = inside.wait_for("chat.message", lambda d: d["text"] == "over HTTP")
    assert got["from"] == shared.ids["pusher@example.com"]
    time.sleep(0.3)
    assert outside.got("chat.message") == []


def test_a_push_to_a_user_reaches_every_socket_of_theirs(shared: World) -> None:
    token = shared.user("sender@example.com")
    shared.user("bob@example.com")
    shared.user("carl@example.com")
    phone, laptop = shared.sock("bob@example.com"), shared.sock("bob@example.com")
    other = shared.sock("carl@example.com")
    user = shared.ids["bob@example.com"]
    assert shared.post("chat.whisper", {"user": user, "text": "psst"}, token).status_code == 200
    for sock in (phone, laptop):
        assert sock.wait_for("chat.whisper") == {"text": "psst"}
    time.sleep(0.3)
    assert other.got("chat.whisper") == []


def test_a_rolled_back_call_pushes_nothing(shared: World) -> None:
    shared.user("rb@example.com")
    sock = shared.sock("rb@example.com")
    assert "data" in sock.ask("join", {"room": "chat.anyone"})
    failed = sock.call("chat.say_then_fail", {"text": "never"})
    assert failed["error"]["status"] == 409
    assert sock.call("chat.say", {"room": "chat.anyone", "text": "after"})["data"]["sent"]
    sock.wait_for("chat.message", lambda d: d["text"] == "after")  # delivered in order
    assert sock.got("chat.message", lambda d: d["text"] == "never") == []


def test_forwarded_events_and_state_changes_reach_their_rooms(shared: World) -> None:
    shared.user("fw@example.com")
    sock = shared.sock("fw@example.com")
    for room in ("chat.news", "chat.tickets"):
        assert "data" in sock.ask("join", {"room": room})
    assert "data" in sock.call("chat.announce", {"text": "hello all"})
    assert sock.wait_for("chat.announced")["text"] == "hello all"
    assert "data" in sock.call("chat.ticket", {"id": "t1"})
    changed = sock.wait_for("state.changed", lambda d: d["to"] == "closed")
    assert changed["kind"] == "chat.ticket" and changed["id"] == "t1"


# --- presence -------------------------------------------------------------------------


def test_presence_lists_callers_once_and_announces_first_and_last(shared: World) -> None:
    shared.user("p1@example.com")
    shared.user("p2@example.com")
    watcher = shared.sock("p1@example.com")
    assert "data" in watcher.ask("join", {"room": "chat.open"})
    first, second = shared.sock("p2@example.com"), shared.sock("p2@example.com")
    p2 = {"id": shared.ids["p2@example.com"], "kind": "user"}
    assert "data" in first.ask("join", {"room": "chat.open"})
    assert watcher.wait_for("presence", lambda d: d.get("joined") == p2)["room"] == "chat.open"
    assert "data" in second.ask("join", {"room": "chat.open"})
    members = watcher.ask("presence", {"room": "chat.open"})["data"]["members"]
    mine = [m for m in members if m["id"] == p2["id"]]
    assert len(mine) == 1 and mine[0]["sockets"] == 2 and mine[0]["kind"] == "user"
    assert len(watcher.got("presence", lambda d: d.get("joined") == p2)) == 1
    first.client.disconnect()
    time.sleep(0.3)
    assert watcher.got("presence", lambda d: d.get("left") == p2) == []  # one socket is left
    second.ask("leave", {"room": "chat.open"})
    watcher.wait_for("presence", lambda d: d.get("left") == p2)
    members = watcher.ask("presence", {"room": "chat.open"})["data"]["members"]
    assert p2["id"] not in [m["id"] for m in members]
    assert watcher.ask("presence", {"room": "chat.mods"})["error"]["status"] == 403


# --- limits and rechecks --------------------------------------------------------------


def test_a_flooding_socket_gets_429_then_is_disconnected(tmp_path: Path) -> None:
    env = {"SB_REALTIME__LIMITS": "5/second", "SB_REALTIME__MAX_VIOLATIONS": "3"}
    with world(tmp_path, **env) as built:
        built.user("flood@example.com")
        sock = built.sock("flood@example.com")
        answers = []
        for _ in range(30):
            if not sock.client.connected:
                break
            with contextlib.suppress(socketio.exceptions.TimeoutError):
                answers.append(sock.ask("call", {"action": "system.ping"}))
        limited = [a for a in answers if "error" in a]
        assert limited and all(a["error"]["status"] == 429 for a in limited)
        assert limited[0]["error"]["retry_after"] >= 1
        assert sock.ended.wait(WAIT)


def test_a_revoked_session_is_ended_at_the_next_recheck(tmp_path: Path) -> None:
    with world(tmp_path, SB_REALTIME__RECHECK="1s") as built:
        token = built.user("leave@example.com")
        sock = built.sock("leave@example.com")
        assert built.post("auth.logout", {}, token).status_code == 200
        ended = sock.wait_for("session_ended")
        assert ended["status"] == 401 and ended["type"] == "/problems/unauthenticated"
        assert sock.ended.wait(WAIT)


def test_system_info_names_the_realtime_url(shared: World) -> None:
    info = requests.post(shared.action("system.info"), json={}, timeout=WAIT).json()["data"]
    assert info["realtime_url"] == shared.server.base
    client = socketio.Client(reconnection=False)
    client.connect(
        info["realtime_url"], auth={"api_key": shared.api_key()}, transports=["websocket"]
    )
    client.disconnect()


# --- several processes ----------------------------------------------------------------


def test_two_processes_share_pushes_and_presence_through_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "SB_REDIS__PREFIX": redis_prefix}
    database = f"sqlite:///{tmp_path}/shared.db"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        world(tmp_path / "a", **env, DATABASE_URL=database) as a,
        world(tmp_path / "b", **env, DATABASE_URL=database) as b,
    ):
        token = a.user("x@example.com")
        b.user("y@example.com")
        on_a, on_b = a.sock("x@example.com"), b.sock("y@example.com")
        for sock in (on_a, on_b):
            assert "data" in sock.ask("join", {"room": "chat.lobby"})
        members = on_a.ask("presence", {"room": "chat.lobby"})["data"]["members"]
        assert {m["id"] for m in members} == {a.ids["x@example.com"], b.ids["y@example.com"]}
        sent = a.post("chat.say", {"room": "chat.lobby", "text": "from A"}, token)
        assert sent.status_code == 200
        assert on_b.wait_for("chat.message")["text"] == "from A"  # held by process B
        on_b.client.disconnect()
        on_a.wait_for("presence", lambda d: d.get("left", {}).get("kind") == "user")


def test_readiness_says_degraded_until_the_redis_listener_has_resubscribed(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """python-socketio resubscribes with backoff after Redis is back: until it has,
    pushes of other processes are missed, and readiness says ``realtime: degraded``."""
    env = {"REDIS_URL": private_redis.url(), "SB_REDIS__SOCKET_TIMEOUT": "0.5s"}
    channel = "sb:socketio"  # redis.prefix, then the channel

    def realtime() -> str:
        checks = requests.get(f"{built.server.base}/health/ready", timeout=WAIT).json()["checks"]
        return str(checks["realtime"]["status"])

    def subscribers() -> int:
        client = redis.Redis.from_url(private_redis.url(), socket_timeout=2)
        try:
            counts = cast(list[tuple[bytes, int]], client.pubsub_numsub(channel))
            return int(dict(counts).get(channel.encode(), 0))
        finally:
            client.close()

    with world(tmp_path, **env) as built:
        built.user("l@example.com")
        built.sock("l@example.com")  # the first socket starts the listener
        deadline = time.monotonic() + WAIT
        while subscribers() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subscribers() == 1 and realtime() == "ok"
        private_redis.stop()
        time.sleep(3.5)  # the listener fails and backs off: 1 s, then 2 s, then 4 s
        private_redis.start()
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, listening = realtime(), subscribers()
            seen.append((status, listening))
            if status == "ok":
                break
            time.sleep(0.1)
        assert seen[0] == ("degraded", 0), seen[:3]
        # Readiness says ok only once the listener is subscribed again.
        assert seen[-1][0] == "ok" and seen[-1][1] == 1, seen[-3:]
        assert all(listening == 0 for status, listening in seen if status == "degraded")
