"""The embedded runner: background jobs on a bounded pool in this process (what ``serve``
runs on the embedded defaults, what the harness and the CLI run on demand).

The runner is a transport: each job goes through the booted app's ``invoke`` with
``CallRequest.job`` set, as the caller that enqueued it, audited with transport
``worker``. ``Runner`` is what the task queue of a later part implements too.

A job's time limit interrupts it the way Dramatiq's ``TimeLimit`` does: an asynchronous
exception raised in its thread (``PyThreadState_SetAsyncExc``), which stops Python code at
its next instruction (a call blocked in C ends first), and ``ctx.cancelled`` turns true.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from core.base.errors import ActionError, Cancelled, DependencyUnavailable, Unauthorized
from core.base.request_ids import new_request_id
from core.base.store import KeyValueStore
from core.contracts.calls import CallRequest
from core.contracts.jobs import ExecutionRef
from core.pipeline.identity import KeyVerifier
from managers.executions.sealing import Sealer
from managers.executions.store import ExecutionStore, caller_of

if TYPE_CHECKING:
    from core.manager import Runtime

log = logging.getLogger("switchboard.executions")
_monotonic = time.monotonic
LEASE = 30.0  # a running record whose runner stops renewing is run again after this
RENEW_EVERY = 10.0
POLL_EVERY = 2.0  # queued records another process wrote (the CLI, a WSGI server) are seen
RETRY_UNAVAILABLE = 5.0  # the store was down when a job started: it is tried again


class Runner(Protocol):
    """Where queued executions go to be run."""

    def submit(self, execution_id: str) -> None: ...

    def cancel(self, execution_id: str) -> None:
        """A running job of this runner: ``ctx.cancelled`` turns true at once."""
        ...

    def close(self) -> None: ...


class TimeLimitExceeded(BaseException):
    """Raised inside a job's thread when its time limit passes (not an ``Exception``, so a
    handler's ``except Exception`` does not swallow it)."""


class JobShutdown(BaseException):
    """Raised inside a job's thread when the process stops and the job did not end within
    the grace period: the job is queued again for the next start."""


GRACE = 5.0  # seconds a stopping runner lets its jobs end (ctx.cancelled is true meanwhile)


def _interrupt(control: _Control, exception: type[BaseException]) -> None:
    """Raise ``exception`` in the job's thread, if its handler is still running."""
    with control.lock:
        if control.in_handler:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(control.thread_id), ctypes.py_object(exception)
            )


class _Control:
    """``ctx``'s view of one running job (``core.contracts.jobs.JobControl``)."""

    def __init__(
        self,
        store: ExecutionStore,
        ref: ExecutionRef,
        interval: float,
        on_progress: Callable[[str, Mapping[str, Any]], None],
    ) -> None:
        self._store, self._ref, self._interval = store, ref, interval
        self._on_progress = on_progress
        self.stop = threading.Event()  # cancel asked (here or, seen on a poll, elsewhere)
        self.timed_out = False
        self.shutdown = False  # the process is stopping: the job is queued again
        self.thread_id = threading.get_ident()
        # An interrupt (time limit, stop) is raised only while the handler runs: never in
        # the runner's own bookkeeping, nor in the next job of the same thread.
        self.lock = threading.Lock()
        self.in_handler = False
        # The first store of progress comes one interval in: a job shorter than that
        # writes its progress once, with its end.
        self._written = time.monotonic()
        self._polled = 0.0
        self._done: float | None = None
        self._message: str | None = None
        self._unwritten = False

    @property
    def ref(self) -> ExecutionRef:
        return self._ref

    @property
    def cancelled(self) -> bool:
        if self.stop.is_set():
            return True
        now = time.monotonic()
        if now - self._polled >= self._interval:  # a cancel asked through another process
            self._polled = now
            try:
                if self._store.cancel_requested(self._ref.id):
                    self.stop.set()
            except DependencyUnavailable:
                pass
        return self.stop.is_set()

    @property
    def last(self) -> dict[str, Any] | None:
        """The last progress reported, stored or not."""
        return None if self._done is None else {"done": self._done, "message": self._message}

    def progress(self, done: float, message: str | None = None) -> None:
        # A handler may call this in its innermost loop: two checks and a clock read.
        kind = done.__class__
        if (kind is not float and kind is not int) or not 0 <= done <= 1:
            raise ValueError(f"progress takes a number from 0 to 1, got {done!r}")
        if message is not None and message.__class__ is not str:
            raise ValueError("the progress message must be a string")
        self._done, self._message, self._unwritten = done, message, True
        now = _monotonic()
        if now - self._written >= self._interval:
            self._written = now
            self.flush()  # else kept: stored with a later one, or with the job's end

    def ended(self, message: str | None) -> None:
        """The job succeeded: its progress is 1 (stored with its end, not here)."""
        self._done, self._message, self._unwritten = 1.0, message, False

    def flush(self) -> None:
        """Store the last progress reported, unless it is stored already."""
        last = self.last
        if last is None or not self._unwritten:
            return
        self._unwritten = False
        try:
            self._store.progress(self._ref.id, self._ref.attempt, last["done"], last["message"])
        except DependencyUnavailable:
            log.warning("progress of execution %s not stored: the database is down", self._ref.id)
            return
        self._on_progress(self._ref.id, last)


class EmbeddedRunner:
    """Runs jobs on ``threads`` threads of this process, through ``runtime``."""

    def __init__(
        self,
        runtime: Runtime,
        store: ExecutionStore,
        sealer: Sealer,
        kv: KeyValueStore,
        *,
        threads: int,
        progress_interval: float,
        notify: Callable[[Mapping[str, Any]], None],
        background: bool = True,
        keys: KeyVerifier | None = None,
    ) -> None:
        self._runtime, self._store, self._sealer, self._kv = runtime, store, sealer, kv
        self._interval = progress_interval
        self._keys = keys
        self._notify = notify
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="job")
        self._running: dict[str, _Control] = {}
        self._waiting: set[str] = set()  # submitted to the pool, not started yet
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # background: a pool takes submitted jobs, and a thread renews leases and takes up
        # what other processes queued. Otherwise (the harness, the CLI) jobs run only when
        # ``run`` is called, in the caller's thread: nothing happens behind a test's back.
        self.background = background
        self._taking = threading.Event()  # set: submit() does nothing (foreground, closed)
        if not background:
            self._taking.set()
        threading.Thread(target=self._renew, name="job-lease", daemon=True).start()

    # --- Runner ---------------------------------------------------------------------

    def submit(self, execution_id: str) -> None:
        with self._lock:
            if self._taking.is_set() or execution_id in self._waiting:
                return
            if execution_id in self._running:
                return
            self._waiting.add(execution_id)
        self._pool.submit(self._start, execution_id)

    def _start(self, execution_id: str) -> None:
        with self._lock:
            self._waiting.discard(execution_id)
        self.run(execution_id)

    def cancel(self, execution_id: str) -> None:
        with self._lock:
            control = self._running.get(execution_id)
        if control is not None:
            control.stop.set()

    def close(self) -> None:
        """Stop taking jobs. Running ones see ``ctx.cancelled`` and get ``GRACE`` seconds
        to end; then they are interrupted. Either way they are queued again for the next
        start (not cancelled: nobody asked for that)."""
        self._closed.set()
        self._taking.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            controls = list(self._running.values())
        for control in controls:
            control.shutdown = True
            control.stop.set()
        deadline = time.monotonic() + GRACE
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            controls = list(self._running.values())
        for control in controls:
            _interrupt(control, JobShutdown)
        deadline = time.monotonic() + 1.0
        while self._busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._lock:
            left = [(c.ref.id, c.ref.attempt) for c in self._running.values()]
        for execution_id, attempt in left:  # stuck in C: queued again; dies with us
            # if the database is down its lease runs out, and the next start runs it again
            with contextlib.suppress(DependencyUnavailable):
                self._store.requeue(execution_id, attempt)

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._running)

    def resume(self) -> int:
        """Queue again what a stop left (running records nobody renews) and take up queued
        ones, as many as keep the pool busy; the rest on the next rounds."""
        found = self._store.pending(limit=self._threads * 2)
        for record in found:
            if record["status"] == "running" and not self._store.requeue_stale(record["_id"]):
                continue  # renewed meanwhile: its runner is alive
            self.submit(record["_id"])
        return len(found)

    # --- one job --------------------------------------------------------------------

    def run(
        self, execution_id: str, watch: Callable[[Mapping[str, Any]], None] | None = None
    ) -> dict[str, Any] | None:
        """Run the job of a queued record to its end; the finished record (None when it
        was not queued: cancelled, or taken by another runner)."""
        try:
            record = self._store.claim(execution_id, LEASE)
        except DependencyUnavailable:
            self._later(execution_id)
            return None
        if record is None:
            return None
        self._notify(record)
        ref = ExecutionRef(execution_id, int(record["attempts"]))

        def progressed(execution_id: str, progress: Mapping[str, Any]) -> None:
            self._progressed(execution_id, progress)
            if watch is not None:
                watch(progress)

        control = _Control(self._store, ref, self._interval, progressed)
        with self._lock:
            self._running[execution_id] = control
        try:
            status, result, error = self._outcome(record, control)
            if status == "later" or (control.shutdown and status != "succeeded"):
                with contextlib.suppress(DependencyUnavailable):
                    self._store.requeue(execution_id, ref.attempt)
                if status == "later":
                    self._later(execution_id)
                return None
        except JobShutdown:
            with contextlib.suppress(DependencyUnavailable):
                self._store.requeue(execution_id, ref.attempt)
            return None
        finally:
            with self._lock:
                self._running.pop(execution_id, None)
        message = (control.last or {}).get("message")
        progress = {"done": 1.0, "message": message}
        if status == "succeeded":
            control.ended(message)  # stored with the end, below
        else:
            control.flush()  # how far it got
        try:
            changes = self._store.finish(
                execution_id,
                ref.attempt,
                status,
                keep=float(record.get("keep") or 0),
                result=result,
                error=error,
                progress=progress if status == "succeeded" else None,
            )
        except DependencyUnavailable:
            log.error("execution %s ended %s but could not be recorded", execution_id, status)
            return None
        if changes is None:  # it had ended another way meanwhile
            return self._store.get(execution_id)
        finished = {**record, **changes}
        if "progress" not in changes:  # how far it got, as stored
            finished["progress"] = (self._store.get(execution_id) or finished).get("progress")
        self._notify(finished)
        if watch is not None and finished.get("progress"):
            watch(finished["progress"])
        return finished

    def _outcome(
        self, record: Mapping[str, Any], control: _Control
    ) -> tuple[str, Any, Mapping[str, Any] | None]:
        execution_id = str(record["_id"])
        request_id = new_request_id()
        try:
            self._recheck(record)
        except DependencyUnavailable:
            return "later", None, None  # the store is down as it starts: queued again
        except ActionError as error:
            return "failed", None, error.problem(request_id)
        try:
            params = dict(record["params"])
            if record.get("sealed"):
                params.update(self._sealer.open(str(record["sealed"]), execution_id))
            request = CallRequest(
                action=str(record["action"]),
                params=params,
                request_id=request_id,
                transport="worker",
                caller=caller_of(record),
                job=control,
            )
            timer = self._time_limit(record.get("timeout"), control)
            try:
                with control.lock:
                    control.in_handler = True
                try:
                    result = self._runtime.invoke(request)
                finally:
                    with control.lock:
                        control.in_handler = False
            finally:
                if timer is not None:
                    timer.cancel()
            if control.timed_out:  # it ended on its own just as the limit passed
                raise TimeLimitExceeded
            return "succeeded", result.value, None
        except TimeLimitExceeded:
            limit = record.get("timeout")
            problem = {
                "type": "/problems/timeout",
                "title": "Timed out",
                "status": 504,
                "detail": f"the job did not finish within its time limit of {limit:g}s",
                "request_id": request_id,
            }
            return "timed_out", None, problem
        except Cancelled as error:
            return "cancelled", None, error.problem(request_id)
        except ActionError as error:
            if control.stop.is_set() and not control.timed_out:
                return (
                    "cancelled",
                    None,
                    Cancelled("the execution was cancelled").problem(request_id),
                )
            return "failed", None, error.problem(request_id)

    def _recheck(self, record: Mapping[str, Any]) -> None:
        """The caller is identified again as the job starts: an account or key revoked
        since the call ends it ``unauthenticated``."""
        for key in record.get("revocations") or ():
            if self._kv.get(str(key)) is not None:
                raise Unauthorized(
                    "the credential this execution was enqueued with has been revoked",
                    reason="revoked",
                )
        who = record["caller"]
        if who.get("kind") == "api_key" and who.get("id") and self._keys is not None:
            self._keys.recheck(str(who["id"]))  # its marker lives a minute; the record stays

    def _time_limit(self, limit: Any, control: _Control) -> threading.Timer | None:
        if not isinstance(limit, int | float) or limit <= 0:
            return None

        def interrupt() -> None:
            with control.lock:
                if not control.in_handler:
                    return  # it ended just now
                control.timed_out = True
            control.stop.set()
            _interrupt(control, TimeLimitExceeded)

        timer = threading.Timer(float(limit), interrupt)
        timer.daemon = True
        timer.start()
        return timer

    def _progressed(self, execution_id: str, progress: Mapping[str, Any]) -> None:
        try:
            record = self._store.get(execution_id)
        except DependencyUnavailable:
            return  # a push is a courtesy
        if record is not None:
            self._notify(record)

    def _later(self, execution_id: str) -> None:
        def again() -> None:
            self.submit(execution_id)

        timer = threading.Timer(RETRY_UNAVAILABLE, again)
        timer.daemon = True
        timer.start()

    def _renew(self) -> None:
        """Renew the leases of this runner's jobs; in the background, take up what other
        processes queued. A lease another runner took over (this one lost the database for
        longer than it) stops the job here: the other runs it."""
        renewed = time.monotonic()
        while not self._closed.wait(POLL_EVERY):
            if time.monotonic() - renewed >= RENEW_EVERY:
                renewed = time.monotonic()
                with self._lock:
                    running = list(self._running.values())
                for control in running:
                    try:
                        held = self._store.renew(control.ref.id, control.ref.attempt, LEASE)
                    except DependencyUnavailable:
                        continue
                    if not held and not control.stop.is_set():
                        log.warning(
                            "execution %s: its lease was taken over; this attempt stops",
                            control.ref.id,
                        )
                        control.shutdown = True
                        control.stop.set()
            if self._taking.is_set():
                continue
            try:
                self.resume()
            except Exception:  # the next round tries again
                log.warning("executions: could not look for queued jobs", exc_info=True)
