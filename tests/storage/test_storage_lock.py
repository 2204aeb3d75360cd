"""The run lock: one writer per run; the refusal names the holder and how to break it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from storage.lock import LockInfo, RunLock, RunLockedError, break_lock, read_lock


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def plant_lock(store, run_id: str, **fields) -> LockInfo:
    info = LockInfo(
        **{
            "holder": "old run",
            "hostname": socket.gethostname(),
            "pid": 1,
            "since": "2026-01-01T00:00:00+00:00",
            "token": "t0",
            **fields,
        }
    )
    store.write_bytes(store.lock_uri(run_id), info.to_json())
    return info


def test_a_second_writer_is_refused_with_the_holder_named(store):
    with RunLock(store, "r1", holder="sims run (flow 42)") as first:
        assert first.held and first.info is not None
        since = first.info.since
        # The lock is one complete file, no temporaries beside it.
        assert store.fs.ls(store.path(store.run_uri("r1")), detail=False) == [store.path(store.lock_uri("r1"))]
        with pytest.raises(RunLockedError) as err:
            RunLock(store, "r1", holder="sims run (flow 43)").acquire()
    msg = str(err.value)
    assert "'sims run (flow 42)'" in msg
    assert f"host {socket.gethostname()}" in msg
    assert f"pid {os.getpid()}" in msg
    assert f"since {since}" in msg
    assert store.lock_uri("r1") in msg and "force=True" in msg
    assert err.value.info.holder == "sims run (flow 42)"


def test_the_lock_is_released_on_exit_even_after_an_error(store):
    with pytest.raises(KeyError):
        with RunLock(store, "r1", holder="a"):
            assert read_lock(store, "r1").holder == "a"
            raise KeyError("boom")
    assert read_lock(store, "r1") is None
    with RunLock(store, "r1", holder="b"):
        assert read_lock(store, "r1").holder == "b"


def test_locks_of_different_runs_are_independent(store):
    with RunLock(store, "r1", holder="a"), RunLock(store, "r2", holder="b"):
        assert read_lock(store, "r1").holder == "a" and read_lock(store, "r2").holder == "b"


def test_force_takes_over_and_the_old_holder_leaves_it_alone(store):
    old = RunLock(store, "r1", holder="stuck")
    old.acquire()
    with pytest.warns(UserWarning, match="force=True"):
        new = RunLock(store, "r1", holder="rescuer", force=True)
        new.acquire()
    assert read_lock(store, "r1").holder == "rescuer"
    with pytest.warns(UserWarning, match="taken over by 'rescuer'"):
        old.release()
    assert read_lock(store, "r1").holder == "rescuer"
    new.release()
    assert read_lock(store, "r1") is None


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(store):
    plant_lock(store, "r1", pid=dead_pid())
    with pytest.warns(UserWarning, match="no longer running"):
        lock = RunLock(store, "r1", holder="resumed")
        lock.acquire()
    assert read_lock(store, "r1").holder == "resumed"
    lock.release()


def test_a_lock_from_another_host_is_not_taken_over(store):
    plant_lock(store, "r1", hostname="some-other-host", pid=dead_pid())
    with pytest.raises(RunLockedError, match="'old run' \\(pid \\d+ on host some-other-host"):
        RunLock(store, "r1", holder="me").acquire()
    assert break_lock(store, "r1").hostname == "some-other-host"
    with RunLock(store, "r1", holder="me"):
        pass


def test_a_live_process_lock_on_this_host_is_refused(store):
    plant_lock(store, "r1", pid=1)  # pid 1 is alive
    with pytest.raises(RunLockedError, match="'old run'"):
        RunLock(store, "r1", holder="me").acquire()


def test_only_one_of_many_simultaneous_writers_gets_the_lock(store):
    barrier = threading.Barrier(6)
    winners: list[str] = []
    refused: list[str] = []

    def contend(i: int) -> None:
        lock = RunLock(store, "r1", holder=f"w{i}")
        barrier.wait()
        try:
            lock.acquire()
            winners.append(lock.holder)
        except RunLockedError:
            refused.append(lock.holder)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 5
    assert read_lock(store, "r1").holder == winners[0]
