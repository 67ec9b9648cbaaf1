"""ExecutionsManager (``executions``, ``ctx.executions`` for the executions module): the
records of background actions and the runner that runs them.

The run step hands it each background call (``Executions.enqueue``): it writes the record,
seals the secret params, and gives the record to the runner. With ``serve`` the embedded
runner starts in every worker once the app has booted (the ``AsgiMount`` below hands it
the runtime) and first queues again what a stop left; without a runner in the process
(the CLI, the test harness, a WSGI server) records stay queued until one runs them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from core.base.errors import ConfigError, Conflict, Forbidden, NotFound, Problem, ValidationError
from core.base.hooks import HookBus
from core.base.store import KeyValueStore
from core.config.dev_secrets import dev_secret
from core.config.settings import Setting, duration, integer, positive_duration, text
from core.contracts.calls import WithMeta
from core.contracts.context import Caller
from core.contracts.executions import FINISHED, STATUSES, Enqueue, Executions
from core.contracts.facades import Documents, Realtime
from core.manager import AsgiMount, Command, Health, KeyVerifier, Manager
from managers.executions.runner import EmbeddedRunner
from managers.executions.sealing import MIN_KEY_BYTES, Sealer, generate_key
from managers.executions.store import ExecutionStore, check_limit, new_id, view

if TYPE_CHECKING:
    from core.config.config import Config
    from core.manager import App, Runtime

log = logging.getLogger("switchboard.executions")
_OWNER = "manager executions"
PRUNE_EVERY = 3600.0
MOUNT = "/_executions/"  # nothing is served there: the mount starts the runner


class ExecutionsManager(Manager, Executions):
    name = "executions"
    requires = ("config", "db", "redis", "realtime")
    provides: ClassVar[tuple[type, ...]] = (Executions,)
    facade = "executions"
    privileged = True
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting(
            "executions.threads",
            integer,
            4,
            "Background jobs run at once by the embedded runner of each serve worker",
            minimum=1,
            owner=_OWNER,
        ),
        Setting(
            "executions.keep",
            positive_duration,
            7 * 86400.0,
            "How long a finished execution's record and result are kept (an action's keep: "
            "overrides it)",
            owner=_OWNER,
        ),
        Setting(
            "executions.progress_interval",
            duration,
            0.5,
            "ctx.progress is stored at most this often (and always at the end)",
            owner=_OWNER,
        ),
        Setting(
            "executions.secret_key",
            text,
            None,
            "Key that seals background actions' secret params in their records; "
            "generated into var/dev-secrets/ outside production",
            secret=True,
            owner=_OWNER,
        ),
    )

    def __init__(self) -> None:
        self.store: ExecutionStore | None = None
        self.runner: EmbeddedRunner | None = None  # serve's: jobs run on its pool
        self._foreground: EmbeddedRunner | None = None  # run_now / run_queued
        self._sealer: Sealer | None = None
        self._realtime: Realtime | None = None
        self._keys: KeyVerifier | None = None
        self._stopping = threading.Event()

    @classmethod
    def commands(cls) -> Sequence[Command]:
        from managers.executions.commands import EXECUTIONS

        return (EXECUTIONS,)

    @classmethod
    def production_problems(cls, config: Config) -> list[Problem]:
        if config["executions.secret_key"]:
            return []
        return [
            Problem(
                "set executions.secret_key (32 random bytes or more, from a secret file or "
                "Vault): it seals background actions' secret params",
                field="executions.secret_key",
            )
        ]

    # --- lifecycle --------------------------------------------------------------------

    def start(self, app: App) -> None:
        config = app.config
        secret = dev_secret(config, "executions.secret_key", "executions_key", generate_key)
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(
                [
                    Problem(
                        f"executions.secret_key must be at least {MIN_KEY_BYTES} bytes of "
                        "random text, e.g. "
                        "python -c 'import secrets; print(secrets.token_hex(32))'",
                        field="executions.secret_key",
                    )
                ]
            )
        self._sealer = Sealer(secret)
        self.store = ExecutionStore(self.require(Documents))
        self.store.ensure_indexes()
        self._kv = self.require(KeyValueStore)
        self._realtime = app.capability(Realtime)
        self._keys = app.capability(KeyVerifier)
        self._hooks = app.capability(HookBus)
        self._threads = int(config["executions.threads"])
        self._keep = float(config["executions.keep"])
        self._interval = float(config["executions.progress_interval"])
        self._stopping.clear()

    def stop(self) -> None:
        self._stopping.set()
        for runner in (self.runner, self._foreground):
            if runner is not None:
                runner.close()
        self.runner = self._foreground = None

    def health(self) -> Health:
        return Health("ok", {"runner": "embedded" if self.runner is not None else "none"})

    def asgi_mounts(self) -> Sequence[AsgiMount]:
        return (AsgiMount(MOUNT, _nothing, self._serving, None),)

    async def _serving(self, runtime: Runtime, pool: ThreadPoolExecutor) -> None:
        """``serve``: this worker runs jobs, starting with what a stop left."""
        runner = self.start_runner(runtime)
        resumed = runner.resume()
        if resumed:
            log.info("executions: %d queued or interrupted job(s) queued again", resumed)
        threading.Thread(target=self._prune_loop, name="executions-prune", daemon=True).start()

    def start_runner(self, runtime: Runtime) -> EmbeddedRunner:
        """The embedded runner of this process (made once): every job queued from now on
        is run on its pool, and it takes up what other processes queue."""
        if self.runner is None:
            self.runner = self._runner(runtime, background=True)
        return self.runner

    def _runner(self, runtime: Runtime, *, background: bool) -> EmbeddedRunner:
        return EmbeddedRunner(
            runtime,
            self._ready_store(),
            self._ready_sealer(),
            self._kv,
            threads=self._threads,
            progress_interval=self._interval,
            notify=self._notify,
            background=background,
            keys=self._keys,
        )

    def _in_this_thread(self, runtime: Runtime) -> EmbeddedRunner:
        if self._foreground is None:
            self._foreground = self._runner(runtime, background=False)
        return self._foreground

    def _prune_loop(self) -> None:
        while not self._stopping.wait(PRUNE_EVERY):
            try:
                pruned = self._ready_store().prune()
            except Exception:  # the next round tries again
                log.exception("executions: pruning failed")
                continue
            if pruned:
                log.info("executions: %d record(s) past their keep pruned", pruned)

    # --- Executions -------------------------------------------------------------------

    def enqueue(self, job: Enqueue) -> Mapping[str, Any]:
        store = self._ready_store()
        execution_id = new_id(store.clock())
        secret = {k: v for k, v in job.params.items() if k in job.secret_params}
        sealed = self._ready_sealer().seal(secret, execution_id) if secret else None
        record = store.create(job, execution_id, sealed, job.keep or self._keep)
        log.info("execution %s of %s queued", execution_id, job.action)
        self._notify(record)
        if self.runner is not None:
            self.runner.submit(execution_id)
        return view(record)

    # --- what the executions module's actions call -------------------------------------

    def show(self, caller: Caller, execution_id: str) -> dict[str, Any]:
        return view(self._visible(caller, execution_id))

    def listing(
        self,
        caller: Caller,
        *,
        action: str | None = None,
        status: str | None = None,
        of: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> WithMeta:
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}")
        if of is not None and not _is_admin(caller):
            raise Forbidden("only admins list other callers' executions")
        records, after = self._ready_store().page(
            caller_key=of if _is_admin(caller) else caller.key,
            action=action,
            status=status,
            limit=check_limit(limit),
            cursor=cursor,
        )
        return WithMeta([view(r) for r in records], {"next_cursor": after})

    def cancel(self, caller: Caller, execution_id: str) -> dict[str, Any]:
        record = self._visible(caller, execution_id)
        store = self._ready_store()
        outcome = store.cancel(execution_id)
        if (outcome in FINISHED and outcome != "cancelled") or outcome == "gone":
            raise Conflict(f"execution {execution_id} has already ended ({outcome})")
        if outcome == "cancelled" and record["status"] != "queued":
            raise Conflict(f"execution {execution_id} has already ended (cancelled)")
        if outcome == "cancelling":
            for runner in (self.runner, self._foreground):
                if runner is not None:
                    runner.cancel(execution_id)
        found = store.get(execution_id)
        if found is not None and outcome == "cancelled":
            self._notify(found)
        return view(found or record)

    def run_now(
        self,
        runtime: Runtime,
        execution_id: str,
        watch: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        done = self._in_this_thread(runtime).run(execution_id, watch)
        return None if done is None else view(done)

    def run_queued(self, runtime: Runtime) -> list[dict[str, Any]]:
        """Run every queued job in this thread, oldest first (tests, the CLI); the
        finished records."""
        runner = self._in_this_thread(runtime)
        finished = []
        for record in self._ready_store().pending():
            if record["status"] == "queued":
                done = runner.run(record["_id"])
                if done is not None:
                    finished.append(view(done))
        return finished

    def _visible(self, caller: Caller, execution_id: Any) -> dict[str, Any]:
        """The record, if ``caller`` may see it: its own, or any for an admin. Another
        caller's is 404, never 403 (its existence is not theirs to learn)."""
        record = self._ready_store().get(execution_id)
        if record is None or not (_is_admin(caller) or record["caller_key"] == caller.key):
            raise NotFound(f"no execution {execution_id!r}")
        return record

    def _notify(self, record: Mapping[str, Any]) -> None:
        """Push ``execution`` {id, status, progress} to the enqueuing user's room."""
        who = record["caller"]
        if self._realtime is None or who.get("kind") != "user" or not who.get("id"):
            return
        event = {"id": record["_id"], "status": record["status"], "progress": record["progress"]}
        try:
            self._realtime.emit("execution", event, user=str(who["id"]))
        except Exception:  # a push is a courtesy: the record is what counts
            log.warning("execution %s: the realtime push failed", record["_id"], exc_info=True)

    def _ready_store(self) -> ExecutionStore:
        if self.store is None:
            raise self.not_started()
        return self.store

    def _ready_sealer(self) -> Sealer:
        if self._sealer is None:
            raise self.not_started()
        return self._sealer


def _is_admin(caller: Caller) -> bool:
    return caller.kind == "system" or "admin" in caller.roles


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    """The mount serves nothing: its path answers the 404 any unknown path gets."""
    if scope.get("type") != "http":
        return
    body = NotFound(f"no route for {scope.get('path', '')}").problem_json(None).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", b"%d" % len(body)),
    ]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})
