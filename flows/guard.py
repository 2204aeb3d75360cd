"""What keeps a `sims` process tidy when it runs a flow: Ctrl-C and SIGTERM, Prefect's ephemeral
server, and user errors without tracebacks on the terminal.

- `ephemeral_server`: when no ``PREFECT_API_URL`` is set, Prefect starts a temporary API server
  in a subprocess (``SubprocessASGIServer``) the first time a client needs one. Started by
  Prefect, it shares the terminal's process group, so Ctrl-C kills it together with the flow,
  which then spends minutes retrying the dead server before it can record the crash; and a
  SIGTERM to the CLI alone leaves it running forever, adopted by PID 1. Here the CLI starts it
  first, in a session of its own (a terminal's Ctrl-C no longer reaches it) with a parent-death
  signal (it ends if the CLI is killed outright), registered where Prefect looks for it, and
  stops it when the command ends, after Prefect's log and event queues are drained into it.
- `ProcessGuard`: SIGINT and SIGTERM stop the run. The first one asks the models to stop at
  their next forward pass (`tasks.runtime.runtime().request_stop`) and raises `KeyboardInterrupt` (or
  `Terminated`, one for SIGTERM) in the main thread, so the flow records the crash and releases
  the run lock on its way out; the CLI then exits 130 (SIGINT) or 143 (SIGTERM). If the command
  has not ended `grace_s` seconds later (something ignores the interrupt), or a second signal
  comes, it releases the run locks it holds, stops the server and exits at once.
- `quiet_user_errors`: Prefect logs a failed flow or task with its traceback; on the terminal the
  traceback of a user error (or of an interruption) is left out: the CLI prints the error as one
  sentence, and the flow run's log in Prefect keeps the traceback.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sims_core.errors import is_user_error

__all__ = ["EXIT_CODES", "ProcessGuard", "Terminated", "ephemeral_server", "quiet_user_errors"]

EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (so everything that
    cleans up on an interrupt cleans up on a termination too)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


def interrupt_signal(exc: BaseException) -> int | None:
    """The signal an exception stands for: SIGTERM for `Terminated` and Prefect's
    TerminationSignal, SIGINT for any other KeyboardInterrupt, None otherwise."""
    if isinstance(exc, Terminated):
        return exc.signum
    if type(exc).__name__ == "TerminationSignal":
        return int(getattr(exc, "signal", signal.SIGTERM))
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    return None


# ------------------------------------------------------------------ the ephemeral server
def _die_with_parent() -> None:  # runs in the server's process between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@functools.cache
def _isolated_server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class IsolatedServer(SubprocessASGIServer):
        """Prefect's subprocess API server, started in its own session with a parent-death signal."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            real = subprocess.Popen

            def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                kwargs.setdefault("start_new_session", True)
                if sys.platform.startswith("linux"):
                    kwargs.setdefault("preexec_fn", _die_with_parent)
                return real(*args, **kwargs)

            subprocess.Popen = popen  # type: ignore[misc, assignment]  # only for this one call, in the main thread
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = real  # type: ignore[misc]

    return IsolatedServer


def _drain_prefect(timeout: float) -> None:
    """Send Prefect's queued logs and events to the server before it stops (bounded in time)."""

    def drain() -> None:  # in a thread without an event loop, both block until their queues are sent
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        with contextlib.suppress(Exception):
            APILogWorker.instance().drain()
        with contextlib.suppress(Exception):
            EventsWorker.drain_all()

    worker = threading.Thread(target=drain, name="sims-drain-prefect", daemon=True)
    worker.start()
    worker.join(timeout)


def stop_server_now() -> None:
    """Kill the ephemeral server this process started (the forced-exit path; no draining): the one
    of our class in Prefect's own registry of subprocess servers."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    if not isinstance(server, _isolated_server_class()):
        return
    process = getattr(server, "server_process", None)
    if process is not None and process.poll() is None:
        with contextlib.suppress(Exception):
            process.terminate()
            process.wait(timeout=3)
        with contextlib.suppress(Exception):
            process.kill()


@contextlib.contextmanager
def ephemeral_server() -> Iterator[Any]:
    """Start Prefect's ephemeral API server for this command (see the module docstring) unless
    ``PREFECT_API_URL`` names a server or one is already running; stop it on the way out."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    existing = SubprocessASGIServer._instances.get(None)
    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value() or existing is not None:
        yield existing
        return
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    server = _isolated_server_class()()
    # A first start creates Prefect's database: on a busy 2-core machine that takes longer than
    # Prefect's default 20 s, which would end the command with a timeout before any work.
    server.start(timeout=max(int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()), 90))
    try:
        yield server
    finally:
        _drain_prefect(timeout=10.0)
        with contextlib.suppress(Exception):
            server.stop()
        stop_server_now()


# ------------------------------------------------------------------ signals
class ProcessGuard:
    """SIGINT / SIGTERM handling for one CLI command (see the module docstring). ``on_force``
    runs before a forced exit (it releases the run locks)."""

    def __init__(self, describe: Callable[[int], str], on_force: Callable[[], None], grace_s: float = 20.0) -> None:
        self.describe, self.on_force, self.grace_s = describe, on_force, grace_s
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()

    def __enter__(self) -> ProcessGuard:
        # imported here, not in the handler: importing sims (torch) inside a signal handler takes
        # seconds on a loaded machine, time the grace period is meant for
        from tasks.runtime import runtime

        self._request_stop = runtime().request_stop
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()  # the command has ended: the watchdog stands down
        for signum, previous in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self._request_stop()
        if self.signum is not None:  # a second signal: stop now
            self.force_exit(signum)
        self.signum = signum
        threading.Thread(target=self._watchdog, args=(signum,), name="sims-exit-watchdog", daemon=True).start()
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    def _watchdog(self, signum: int) -> None:
        if not self._done.wait(self.grace_s):
            self.force_exit(signum)

    def force_exit(self, signum: int) -> None:
        """Release the locks, stop the server, say so and exit with the signal's status, now."""
        with contextlib.suppress(Exception):
            self.on_force()
        stop_server_now()
        with contextlib.suppress(Exception):
            print(self.describe(signum), file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(EXIT_CODES.get(signum, 130))


# ------------------------------------------------------------------ one line on the terminal
class _NoUserErrorTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (
            is_user_error(exc) or interrupt_signal(exc) is not None or type(exc).__name__ == "RunInterrupted"
        ):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def quiet_user_errors() -> Iterator[None]:
    """Leave the tracebacks of user errors and interruptions out of Prefect's console log (its
    API log, the flow run's log, keeps them)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    quiet = _NoUserErrorTracebacks()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
