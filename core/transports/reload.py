"""``serve --reload`` (development only): serve, watch the module and config folders, and
restart the server when they change, but only once ``check`` passes on the change.

The server runs as a child process (``app.py serve`` with the same arguments, minus
``--reload``). On a change under ``modules/``, every ``modules.path`` folder, ``actions/``
or ``config/``, the supervisor runs ``app.py check`` in a fresh process: when it passes, the
server is stopped and started again on the new code; when it fails, its problems are
printed and the running server keeps serving the old code. Watching is watchfiles' (the
library uvicorn's own reloader uses): native file events, debounced.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from watchfiles import DefaultFilter, watch

_STOP_WAIT = 10.0  # seconds a stopping server gets before it is killed


def _say(message: str) -> None:
    print(f"reload: {message}", file=sys.stderr, flush=True)


class _Filter(DefaultFilter):
    """Source, YAML and JSON files; not caches, editors' swap files or the SQLite file."""

    def __call__(self, change: object, path: str) -> bool:
        return super().__call__(change, path) and path.endswith(  # type: ignore[arg-type]
            (".py", ".yaml", ".yml", ".json", ".txt", ".md")
        )


class Supervisor:
    """Runs ``command`` as the server and restarts it on a change that passes ``check``."""

    def __init__(self, command: Sequence[str], check: Sequence[str], folders: Sequence[Path]):
        self.command = list(command)
        self.check = list(check)
        self.folders = [f for f in folders if f.is_dir()]
        self.server: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start_server(self) -> None:
        self.server = subprocess.Popen(self.command)

    def stop_server(self) -> None:
        server, self.server = self.server, None
        if server is None or server.poll() is not None:
            return
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    def checks_out(self) -> bool:
        done = subprocess.run(self.check, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            for line in done.stderr.splitlines():
                if "warning:" in line:
                    print(line, file=sys.stderr, flush=True)
            return True
        _say("the change does not load; the running server keeps the previous code:")
        print(done.stderr.rstrip(), file=sys.stderr, flush=True)
        return False

    def run(self) -> int:
        shown = ", ".join(str(f) for f in self.folders)
        _say(f"watching {shown}")
        self.start_server()
        try:
            for changes in watch(
                *self.folders, watch_filter=_Filter(), stop_event=self._stopping, debounce=300
            ):
                names = sorted({Path(path).name for _, path in changes})
                _say(f"changed: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}")
                if self.checks_out():
                    _say("restarting the server")
                    self.stop_server()
                    self.start_server()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop_server()
        return 0

    def stop(self) -> None:
        self._stopping.set()


def supervise(argv: Sequence[str], folders: Sequence[Path], root: Path) -> int:
    """Serve ``argv`` (the serve command's arguments without ``--reload``) until stopped."""
    app_py = str(root / "app.py")
    supervisor = Supervisor(
        [sys.executable, app_py, "serve", *argv], [sys.executable, app_py, "check"], folders
    )

    def stop(_signum: int, _frame: object) -> None:
        supervisor.stop()

    signal.signal(signal.SIGTERM, stop)
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # no stale .pyc in the watched folders
    return supervisor.run()
