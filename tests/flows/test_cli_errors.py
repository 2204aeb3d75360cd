"""Bad input through the `sims` command line, as a user types it: one line on stderr naming the
input (`sims <command>: error: ...`), exit status 2, no traceback, nothing written; found before
any work starts (no Prefect server, no model weights, no generation).

One test per class of mistake of issue 12: oracle and judge options and callables, the model
(layers, GGUF, weights, device, dtype), prompts (too long, too few, advice that works), the store
(a file, not writable, an S3 endpoint that is down), the run lock, run ids and files outside
`sims run`, config types and the number of shards. In-process calls of `flows.cli.main` (fast);
`test_cli_process.py` runs the installed script for what needs a process (signals, the flow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_args import set_args

import storage.store as store_module
from flows.cli import main
from sims_core.config import SimsConfig


def refused(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI; assert exit 2 and exactly one line on stderr holding every fragment."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sims {argv[0]}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def run_args(tiny_model_dir, tmp_path):
    """`sims run` on the tiny model into a store that does not exist yet."""
    return [
        "run",
        "--run-id",
        "r1",
        "--store",
        str(tmp_path / "runs"),
        *set_args(model=tiny_model_dir, num_prompts=4, num_samples=2, max_new_tokens=4),
    ]


def prompt_file(tmp_path: Path, prompts: list[str], name: str = "prompts.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


# ------------------------------------------------------------------ oracles and judges
@pytest.fixture
def user_module(importable_module):
    """A module of the user's own scoring functions, importable as `sims_user_scores`."""
    return importable_module(
        "sims_user_scores",
        "def one_list(prompts, candidates):\n    return [[1.0, 0.0]]\n\n"
        "def words(prompt, answer):\n    return 'good'\n\n"
        "def fine(prompt, answer):\n    return float(len(answer))\n",
    )


@pytest.mark.parametrize(
    ("settings", "fragments"),
    [
        (
            ["oracle=callable", "oracle_options={function: 'no_such_module_for_sims:score'}"],
            ["no_such_module_for_sims"],
        ),
        (
            ["oracle=callable", "oracle_options={function: 'sims_user_scores:one_list', batched: true}"],
            ["returned 1 score lists for 2 prompts", "one list of numbers per prompt"],
        ),
        (
            ["oracle=callable", "oracle_options={function: 'sims_user_scores:words'}"],
            ["'sims_user_scores:words' returned 'good' (str)", "one number per (prompt, answer)"],
        ),
        (["oracle=callable", "oracle_options={function: 'math:sqrt'}"], ["'math:sqrt' failed on a probe answer"]),
        (["judge=consensus"], ["judge 'consensus' cannot judge a pair of answers"]),
        (["judge_options={colour: blue}"], ["judge_options {'colour': 'blue'} do not fit judge 'reference'"]),
        (["oracle=sum", "oracle_options={oracles: [{name: pmi}, {name: oracle_of_delphi}]}"], ["'oracle_of_delphi'"]),
    ],
)
def test_oracle_and_judge_mistakes_are_refused_before_any_work(
    capsys, run_args, tmp_path, user_module, settings, fragments
):
    refused(capsys, [*run_args, *sum((["--set", s] for s in settings), [])], *fragments)
    assert files_under(tmp_path / "runs") == []


def test_a_callable_that_works_passes(tiny_model_dir, tmp_path, user_module):
    from flows.preflight import preflight

    options = {"function": "sims_user_scores:fine"}
    config = SimsConfig(model=tiny_model_dir, max_new_tokens=4, oracle="callable", oracle_options=options)
    preflight(config.replace(store=str(tmp_path / "runs")))


# ------------------------------------------------------------------ the model, device and dtype
def test_layers_beyond_the_model_are_refused(capsys, run_args, tmp_path):
    refused(capsys, [*run_args, "--set", "layers=[2,9]"], "layers [9] are out of range: the model has layers 0..3")
    assert not (tmp_path / "runs").exists()


def test_a_gguf_that_is_not_one_is_refused(capsys, run_args, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    refused(capsys, [*run_args, "--set", f"model={fake}"], f"'{fake}' is not a GGUF file")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [("no_weights", "has config.json but no weights"), ("bad_weights", "model.safetensors is not a safetensors file")],
)
def test_a_model_directory_without_usable_weights_is_refused(
    capsys, run_args, tiny_model_dir, tmp_path, damage, fragment
):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    if damage == "no_weights":
        (copy / "model.safetensors").unlink()
    else:
        (copy / "model.safetensors").write_bytes(b"\0" * 64)
    refused(capsys, [*run_args, "--set", f"model={copy}"], f"model directory '{copy}'", fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        (
            "dtype=float8",
            "dtype must be one of ['auto', 'float32', 'fp32', 'bfloat16', 'bf16', 'float16', 'fp16'], got 'float8'",
        ),
        ("device=gpu", "device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got 'gpu'"),
        ("device=cuda:7", "device 'cuda:7' was asked for but"),
    ],
)
def test_a_device_or_dtype_this_machine_lacks_is_refused(capsys, run_args, tmp_path, setting, fragment):
    import torch

    if setting.startswith("device=cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    refused(capsys, [*run_args, "--set", setting], fragment)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ prompts
def test_a_prompt_longer_than_the_context_window_is_refused(capsys, run_args, tmp_path):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(40)]
    prompts[7] = "Explain, in detail, " + "why the sea is salty and the sky is blue " * 40
    source = prompt_file(tmp_path, prompts)
    refused(
        capsys,
        [*run_args, "--set", f"prompts={source}"],
        f"prompt 8 of '{source}' ('Explain, in detail, why the sea is salty",
        "exceeds the context window of 256 tokens",
        "max_new_tokens=4",
    )
    refused(capsys, [*run_args, "--set", "max_new_tokens=300"], "max_new_tokens=300 leaves no room for a prompt")
    assert not (tmp_path / "runs").exists()


def test_too_few_prompts_for_the_split_give_advice_that_works(capsys, run_args, tiny_model_dir, tmp_path):
    from flows.preflight import preflight

    source = prompt_file(tmp_path, ["What is 2+2?", "Name a colour.", "Write a haiku."])
    line = refused(
        capsys, [*run_args, "--set", f"prompts={source}"], "would be empty with 3 prompts", "set eval_fraction="
    )
    advice = dict(part.split("=") for part in line.split("set ", 1)[1].split(" (")[0].split(" and "))
    assert "=0 " not in line
    fractions = {name: float(value) for name, value in advice.items()}
    preflight(SimsConfig(model=tiny_model_dir, prompts=source, store=str(tmp_path / "ok"), **fractions))  # it works
    assert not (tmp_path / "runs").exists()


def test_sixty_copies_of_one_prompt_are_one_prompt(capsys, run_args, tmp_path):
    source = prompt_file(tmp_path, ["Tell me a joke."] * 60)
    refused(
        capsys,
        [*run_args, "--set", f"prompts={source}"],
        f"prompts '{source}' (kept 1 of 60 prompts; dropped 59 duplicates",
        "a run needs at least 3 distinct prompts",
    )


@pytest.mark.parametrize("where", ["config", "prompts"])
def test_a_file_that_is_not_utf8_names_the_file_and_the_byte(capsys, run_args, tmp_path, where):
    bad = tmp_path / ("config.yaml" if where == "config" else "prompts.jsonl")
    if where == "config":
        bad.write_bytes(b"iterations: 1\n# caf\xe9\n")
        refused(
            capsys, [*run_args, "--config", str(bad)], f"config file '{bad}' is not UTF-8 text (byte 0xe9 at offset 19)"
        )
    else:
        bad.write_bytes(b'{"prompt": "caf\xe9"}\n')
        refused(
            capsys, [*run_args, "--set", f"prompts={bad}"], f"prompt file '{bad}' is not UTF-8 text: byte 15 (0xe9)"
        )
    assert not (tmp_path / "runs").exists()


def test_a_config_that_is_a_directory_is_named(capsys, run_args, tmp_path):
    refused(capsys, [*run_args, "--config", str(tmp_path)], f"config file '{tmp_path}' is a directory")


# ------------------------------------------------------------------ config fields
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--set", "system_prompt=123"], "system_prompt must be a string, got 123"),
        (["--set", "iterations=two"], "iterations must be an integer, got 'two'"),
        (["--set", "eval_fraction=0"], "eval_fraction must be"),
        (["--shards", "100000"], "shards=100000 is more than the work can use"),
        (
            ["--set", "oracle=consensus", "--set", "num_samples=2"],
            "oracle 'consensus' needs num_samples >= 3: it scores each answer by its agreement",
        ),
    ],
)
def test_config_fields_are_type_checked_and_shards_bounded_by_the_work(capsys, run_args, tmp_path, args, fragment):
    refused(capsys, [*run_args, *args], fragment)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ the store
def test_a_store_that_is_a_file_is_refused(capsys, run_args, tmp_path):
    (tmp_path / "store.txt").write_text("x")
    args = [*run_args, "--store", str(tmp_path / "store.txt")]
    refused(capsys, args, f"store {tmp_path / 'store.txt'} cannot be used", "is a file, not a directory")


def test_a_store_that_cannot_be_written_is_refused(capsys, run_args, tmp_path, monkeypatch):
    store = tmp_path / "readonly"
    store.mkdir()
    store.chmod(0o500)

    class NoWrites:  # root writes anywhere: refuse the probe as the kernel would for anyone else
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def open(path, *args, **kwargs):
            if ".sims-check" in str(path):
                raise PermissionError(13, "Permission denied")
            return os.open(path, *args, **kwargs)

    monkeypatch.setattr(store_module, "os", NoWrites())
    refused(capsys, [*run_args, "--store", str(store)], f"store {store} is not writable (Permission denied)")
    assert files_under(store) == []


@pytest.fixture
def dead_s3(monkeypatch):
    """An S3 endpoint where nothing listens (credentials set, so only the network fails)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("command", ["run", "status", "resume", "eval", "export", "runs"])
def test_an_s3_store_that_is_down_is_one_sentence_within_seconds(capsys, run_args, dead_s3, command):
    argv = {
        "run": [*run_args, "--store", "s3://bucket/runs"],
        "status": ["status", "r1", "--store", "s3://bucket/runs"],
        "resume": ["resume", "r1", "--store", "s3://bucket/runs"],
        "eval": ["eval", "r1", "--store", "s3://bucket/runs"],
        "export": ["export", "r1", "dpo", "--out", "x.jsonl", "--store", "s3://bucket/runs"],
        "runs": ["runs", "--store", "s3://bucket/runs"],
    }[command]
    started = time.monotonic()
    refused(capsys, argv, f"store s3://bucket/runs did not answer: endpoint {dead_s3} is unreachable")
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------ run ids outside `sims run`
@pytest.mark.parametrize(
    "argv",
    [
        ["status", "../other"],
        ["resume", "bad id!"],
        ["eval", "a/b"],
        ["export", "../other", "steering", "--out", "s.safetensors"],
        ["unlock", "bad id!"],
        ["repair", "bad id!"],
        ["run", "--run-id", "bad id!"],
    ],
)
def test_an_invalid_run_id_is_one_sentence_everywhere(capsys, tmp_path, argv):
    run_id = argv[argv.index("--run-id") + 1] if "--run-id" in argv else argv[1]
    refused(capsys, [*argv, "--store", str(tmp_path / "runs")], f"run_id {run_id!r} is not valid")
    assert not (tmp_path / "runs").exists()


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    import flows.cli

    def broken(args):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(flows.cli, "cmd_status", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["status", "r1", "--store", str(tmp_path)])


# ------------------------------------------------------------------ the lock
def write_lock(store: Path, run_id: str, pid: int, hostname: str | None = None) -> Path:
    path = store / run_id / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "holder": "sims run (another terminal)",
                "hostname": hostname or socket.gethostname(),
                "pid": pid,
                "since": "2026-01-01T00:00:00.000+00:00",
                "token": "t" * 32,
            }
        )
    )
    return path


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_concurrent_run_is_refused_in_preflight_naming_the_holder(capsys, run_args, tmp_path, live_pid):
    lock = write_lock(tmp_path / "runs", "r1", live_pid)
    before = files_under(tmp_path / "runs")
    refused(
        capsys,
        run_args,
        "run 'r1' is locked by 'sims run (another terminal)'",
        f"pid {live_pid} on host {socket.gethostname()}",
        "`sims unlock r1`",
    )
    assert files_under(tmp_path / "runs") == before and lock.exists()


def test_unlock_removes_a_stale_lock_and_refuses_a_live_one_without_force(capsys, tmp_path, live_pid):
    store = str(tmp_path / "runs")
    lock = write_lock(tmp_path / "runs", "r1", live_pid)
    refused(capsys, ["unlock", "r1", "--store", store], f"pid {live_pid} is still running on this host", "--force")
    assert lock.exists()
    assert main(["unlock", "r1", "--store", store, "--force"]) == 0
    assert not lock.exists() and "removed the lock held by 'sims run (another terminal)'" in capsys.readouterr().out

    write_lock(tmp_path / "runs", "r1", live_pid, hostname="another-host")
    refused(capsys, ["unlock", "r1", "--store", store], "cannot tell from here whether pid", "host another-host")

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path / "runs", "r1", int(dead.stdout))  # its process has exited: stale
    assert main(["unlock", "r1", "--store", store]) == 0 and not lock.exists()
    capsys.readouterr()

    for garbage in (b"", b"{not json"):
        lock.write_bytes(garbage)
        assert main(["unlock", "r1", "--store", store]) == 0 and not lock.exists()
        assert "an empty or unreadable lock file" in capsys.readouterr().out


def test_unlock_of_a_run_that_is_not_there_lists_the_runs(capsys, tmp_path):
    (tmp_path / "runs").mkdir()
    refused(capsys, ["unlock", "nope", "--store", str(tmp_path / "runs")], "run 'nope' is not in", "runs there: none")
