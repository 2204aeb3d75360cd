"""The installed `sims` script in its own process, as a terminal, systemd or Kubernetes runs it:
Ctrl-C (SIGINT to the process group) and SIGTERM stop a run within seconds with exit 130 / 143
and one line, release the run lock and leave no process behind (Prefect's ephemeral server
included); `sims resume` then finishes the run. A user error raised inside the flow reaches the
terminal as one sentence with exit 2, its traceback only in the flow run's log.

The subprocesses import this checkout (PYTHONPATH), not whatever `sims` is installed from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cli_args import set_args

ROOT = Path(__file__).resolve().parents[2]
SIMS = str(Path(sys.executable).with_name("sims"))


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """One Prefect home (database) for the module's processes: it is created once."""
    return tmp_path_factory.mktemp("prefect-home")


def sims_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # Prefect's ephemeral server
    env.update(
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        SIMS_PROGRESS="0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def run_args(tiny_model_dir: str, store: Path, run_id: str) -> list[str]:
    settings = {
        "model": tiny_model_dir,
        "iterations": 1,
        "num_prompts": 8,
        "num_samples": 2,
        "max_new_tokens": 40,  # long enough that the signal lands while answers are generated
        "batch_size": 4,
        "max_eval_prompts": 2,
        "max_val_prompts": 2,
        "eval_samples": 1,
        "controls": "false",
    }
    return [SIMS, "run", "--run-id", run_id, "--store", str(store), *set_args(**settings)]


def run_to_end(argv: list[str], cwd: Path, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd`` with `sims_env`, its output captured as text."""
    return subprocess.run(argv, cwd=cwd, env=sims_env(home), capture_output=True, text=True, timeout=timeout)


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"sims exited ({process.returncode}) before {text!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {text!r} within {timeout} s:\n{path.read_text()[-3000:]}")


@pytest.mark.parametrize(
    ("signum", "to_group", "code", "said"),
    [
        (signal.SIGINT, True, 130, "interrupted"),  # Ctrl-C: the terminal signals the whole group
        (signal.SIGTERM, False, 143, "stopped by SIGTERM"),  # systemd, Kubernetes, timeout: the process alone
    ],
)
def test_a_signal_stops_the_run_releases_the_lock_and_leaves_no_process(
    tiny_model_dir, tmp_path, prefect_home, signum, to_group, code, said
):
    store, run_id = tmp_path / "runs", f"sig-{signal.Signals(signum).name.lower()}"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            run_args(tiny_model_dir, store, run_id),
            cwd=tmp_path,
            env=sims_env(prefect_home),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, as a shell job has
        )
        try:
            wait_for(stderr_path, "iteration 1 generations: computing", process)
            time.sleep(1.0)
            children = psutil.Process(process.pid).children(recursive=True)
            assert any("uvicorn" in " ".join(c.cmdline()) for c in children), "the ephemeral server is a child"
            assert (store / run_id / "run.lock").exists()
            sent = time.monotonic()
            if to_group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            returncode = process.wait(timeout=60)
            elapsed = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
    err = stderr_path.read_text()
    assert returncode == code, err[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f} s to stop"
    assert err.strip().splitlines()[-1] == f"sims run: {said}; `sims resume {run_id}` continues"
    assert "Traceback" not in err
    time.sleep(0.5)
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [c.cmdline() for c in left]
    assert not (store / run_id / "run.lock").exists()

    if signum == signal.SIGTERM:  # the interrupted run resumes to its end
        done = run_to_end([SIMS, "resume", run_id, "--store", str(store)], tmp_path, prefect_home)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"run {run_id} finished" in done.stdout


def test_a_user_error_inside_the_flow_is_one_sentence_and_exit_2(tiny_model_dir, tmp_path, prefect_home):
    """min_margin too high for any pair: only the buffer phase can tell, after generation."""
    argv = [*run_args(tiny_model_dir, tmp_path / "runs", "margin"), "--set", "max_new_tokens=4"]
    done = run_to_end([*argv, "--set", "min_margin=1000000"], tmp_path, prefect_home)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("sims run: error: ")]
    assert errors == [done.stderr.strip().splitlines()[-1]]
    assert "iteration 1: no preference pairs survived" in errors[0] and "min_margin=1000000.0 is too high" in errors[0]
    assert not (tmp_path / "runs" / "margin" / "run.lock").exists()


def test_a_user_mistake_in_the_installed_script_is_one_line(tmp_path, prefect_home):
    done = run_to_end(
        [SIMS, "run", "--store", str(tmp_path / "runs"), "--set", "dtype=float8"], tmp_path, prefect_home, 300
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "sims run: error: dtype must be one of ['auto', 'float32', 'fp32', 'bfloat16', 'bf16', 'float16', 'fp16'], "
        "got 'float8'"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even the store folder


GUARDED = """
import sys, time
from flows.guard import ProcessGuard
guard = ProcessGuard(lambda signum: f"forced out by {signum}", lambda: print("locks released", flush=True), grace_s=GRACE)
with guard:
    ready = False
    while True:
        try:  # "ready" is printed inside the try: a signal sent on reading it cannot land outside
            if not ready:
                ready = True
                print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:  # code that swallows the interrupt and keeps going
            print("interrupt swallowed", flush=True)
"""


@pytest.mark.parametrize(("grace", "signals"), [(1.0, 1), (600.0, 2)])
def test_a_run_that_does_not_stop_is_forced_out_by_the_watchdog_or_a_second_signal(prefect_home, grace, signals):
    process = subprocess.Popen(
        [sys.executable, "-c", GUARDED.replace("GRACE", str(grace))],
        env=sims_env(prefect_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    # the first signal was handled (two pending SIGINTs would merge into one on a loaded machine)
    line = process.stdout.readline()
    assert line.strip() == "interrupt swallowed", line or process.stderr.read()
    if signals == 2:
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert out.splitlines() == ["locks released"]
    assert err.strip() == f"forced out by {int(signal.SIGINT)}"
