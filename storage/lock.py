"""A run lock: one writer per run.

``{store}/{run_id}/run.lock`` is a small JSON file naming the holder, host, pid, start time
and a random token. Acquiring it is atomic:

- locally the lock content is written to a temporary file which is then hard-linked to the
  lock name (``link`` fails if the name exists, and the lock is never seen half-written);
  where hard links are not supported, an ``O_CREAT | O_EXCL`` create is used;
- on S3 a conditional put (``If-None-Match: *``, s3fs ``pipe_file(mode="create")``) creates the
  object only if it does not exist; the lock is then read back and its token compared, which
  also catches a server that ignores the condition.

A second writer gets `RunLockedError` naming the holder. A lock left by a process that died on
*this* host (its pid is gone), and an empty or garbage lock file (a writer killed mid-write, a
bad copy), are taken over with a warning. To break any other stale lock, delete the lock file
named in the error (`break_lock`) or open the lock with ``force=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from sims_core.errors import UserError
from sims_core.processes import pid_alive

from .layout import validate_run_id
from .manifest import utc_now
from .store import TEMP_MARKER, ArtifactStore

__all__ = ["LockInfo", "RunLock", "RunLockedError", "break_lock", "check_unlocked", "is_stale", "read_lock"]


@dataclass(frozen=True)
class LockInfo:
    """Who holds a run lock."""

    holder: str
    hostname: str
    pid: int
    since: str
    token: str

    @property
    def readable(self) -> bool:
        """False for an empty or garbage lock file (read as a placeholder with no token)."""
        return bool(self.token)

    def describe(self) -> str:
        return f"{self.holder!r} (pid {self.pid} on host {self.hostname}, since {self.since})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> LockInfo:
        try:
            d = json.loads(raw)
            return cls(
                holder=str(d["holder"]),
                hostname=str(d["hostname"]),
                pid=int(d["pid"]),
                since=str(d["since"]),
                token=str(d["token"]),
            )
        except (ValueError, KeyError, TypeError):
            return cls(holder="<unreadable lock file>", hostname="?", pid=-1, since="?", token="")


class RunLockedError(UserError):
    """The run is locked by another writer."""

    def __init__(self, run_id: str, lock_uri: str, info: LockInfo) -> None:
        self.run_id = run_id
        self.lock_uri = lock_uri
        self.info = info
        super().__init__(
            f"run {run_id!r} is locked by {info.describe()}; if no process is working on this run any more, "
            f"break the lock with `sims unlock {run_id}` (storage.lock.break_lock: it deletes {lock_uri}) or "
            "take it over with RunLock(..., force=True)"
        )


def is_stale(info: LockInfo | None) -> bool:
    """Whether a lock can be taken over without asking: there is none, the file is empty or
    garbage, or its process died on this host. (A lock held on another host is never stale
    here: its pid cannot be checked.)"""
    if info is None or not info.readable:
        return True
    return info.hostname == socket.gethostname() and info.pid != os.getpid() and not pid_alive(info.pid)


def check_unlocked(store: ArtifactStore | str | None, run_id: str) -> LockInfo | None:
    """Raise `RunLockedError` naming the holder when another live writer holds the run's lock,
    without taking it (a preflight check: nothing is written). Returns a stale lock's holder
    (which `RunLock` will take over with a warning), else None."""
    store = ArtifactStore.open(store)
    info = read_lock(store, run_id)
    if info is not None and info.readable and info.hostname == socket.gethostname() and info.pid == os.getpid():
        return None  # this process holds it (the CLI took it before starting the flow)
    if info is None or is_stale(info):
        return info
    raise RunLockedError(run_id, store.lock_uri(run_id), info)


def read_lock(store: ArtifactStore | str | None, run_id: str) -> LockInfo | None:
    """The current holder of the run's lock, or None when the run is not locked."""
    store = ArtifactStore.open(store)
    try:
        raw = store.read_bytes(store.lock_uri(run_id))
    except FileNotFoundError:
        return None
    return LockInfo.from_bytes(raw)


def break_lock(store: ArtifactStore | str | None, run_id: str) -> LockInfo | None:
    """Delete the run's lock whoever holds it; returns who held it (None if nobody)."""
    store = ArtifactStore.open(store)
    info = read_lock(store, run_id)
    store.delete(store.lock_uri(run_id))
    return info


class RunLock:
    """Context manager holding the lock of ``run_id`` in ``store``.

    ``holder`` is a free label shown to whoever is refused (e.g. ``"sims run (flow abc)"``);
    host, pid and time are added. ``force=True`` takes the lock whoever holds it (with a
    warning).
    """

    def __init__(self, store: ArtifactStore | str | None, run_id: str, holder: str, *, force: bool = False) -> None:
        self.store = ArtifactStore.open(store)
        self.run_id = validate_run_id(run_id)
        self.holder = holder
        self.force = force
        self.uri = self.store.lock_uri(run_id)
        self.info: LockInfo | None = None

    @property
    def held(self) -> bool:
        return self.info is not None

    # ------------------------------------------------------------ acquire/release
    def acquire(self) -> LockInfo:
        if self.info is not None:
            raise RuntimeError(f"lock {self.uri} is already held by this RunLock")
        info = LockInfo(
            holder=self.holder,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            since=utc_now(),
            token=uuid.uuid4().hex,
        )
        for _ in range(3):
            if self._try_create(info):
                self.info = info
                return info
            current = read_lock(self.store, self.run_id)
            if current is None:  # released between our attempt and the read: try again
                continue
            if not current.readable:  # nobody can own an empty or garbage lock file
                time.sleep(0.2)  # (one created without hard links is empty for a moment: look again)
                if read_lock(self.store, self.run_id) == current:
                    warnings.warn(
                        f"taking over the lock of run {self.run_id!r}: {self.uri} is empty or not a lock file "
                        "(left by a writer killed while writing it?)",
                        stacklevel=2,
                    )
                    self._remove_if(current)
                continue
            if self.force:
                warnings.warn(
                    f"taking over the lock of run {self.run_id!r} held by {current.describe()} (force=True)",
                    stacklevel=2,
                )
                self.store.write_bytes(self.uri, info.to_json())
                self.info = info
                return info
            if is_stale(current):
                warnings.warn(
                    f"taking over the stale lock of run {self.run_id!r} left by {current.describe()}: "
                    "that process is no longer running",
                    stacklevel=2,
                )
                self._remove_if(current)  # if someone else removed/replaced it first, look again
                continue
            raise RunLockedError(self.run_id, self.uri, current)
        current = read_lock(self.store, self.run_id)
        raise RunLockedError(
            self.run_id,
            self.uri,
            current or LockInfo("<changing>", "?", -1, "?", ""),
        )

    def release(self) -> None:
        """Delete the lock if it is still ours (a forced takeover by another is left alone)."""
        if self.info is None:
            return
        mine, self.info = self.info, None
        current = read_lock(self.store, self.run_id)
        if current is None:
            return
        if current.token != mine.token:
            warnings.warn(
                f"lock of run {self.run_id!r} was taken over by {current.describe()}; leaving it",
                stacklevel=2,
            )
            return
        self._remove_if(current)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------ backends
    def _try_create(self, info: LockInfo) -> bool:
        data = info.to_json().encode()
        fs = self.store.fs
        path = self.store.path(self.uri)
        if self.store.is_local:
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{os.path.basename(path)}{TEMP_MARKER}{info.token[:12]}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        fs.invalidate_cache(path)
        back = read_lock(self.store, self.run_id)
        return back is not None and back.token == info.token

    def _remove_if(self, expected: LockInfo) -> bool:
        """Remove the lock only if it is still ``expected``; True if removed."""
        path = self.store.path(self.uri)
        if self.store.is_local:
            aside = f"{path}.stale-{uuid.uuid4().hex[:12]}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return False
            with open(aside, "rb") as f:
                moved = LockInfo.from_bytes(f.read())
            if moved.token != expected.token:  # we moved someone else's fresh lock: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
            os.unlink(aside)
            return moved.token == expected.token
        current = read_lock(self.store, self.run_id)
        if current is None or current.token != expected.token:
            return False
        self.store.delete(self.uri)
        return True
