"""The read side through the `sims` command line: what `status`, `eval`, `export` and `resume`
read is checked against the manifest's sha256; a manifest naming files outside its run is refused;
a damaged manifest or shard entry file names itself and `sims repair` (or `sims resume`) rebuilds
it; a finished run is never silently rewritten; a garbage lock does not block a run.

Every test works on its own copy of one finished 2-iteration run of the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_args import SHORTEST
from task_runs import computed_since, executions
from test_cli_errors import files_under, refused

from flows.cli import main
from flows.self_improve import self_improve
from storage import ArtifactStore, Manifest

RUN = "done"


@pytest.fixture(scope="module")
def finished(prefect_harness, tiny_model_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("finished") / "runs"
    config = {
        "model": tiny_model_dir,
        "store": str(store),
        "iterations": 2,
        **SHORTEST,
        "alphas": [2.0],
        "controls": False,
    }
    self_improve(run_id=RUN, config=config)
    return store


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run: (store path, run directory)."""
    store = tmp_path / "runs"
    shutil.copytree(finished, store)
    return store, store / RUN


def manifest_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def set_manifest(run_dir: Path, data: dict) -> None:
    (run_dir / "manifest.json").write_text(json.dumps(data))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ modified artifacts
def test_a_modified_steering_file_is_refused_by_export_and_shown_by_status(capsys, run, tmp_path):
    store, run_dir = run
    steering = run_dir / "iter=2" / "steering.safetensors"
    flip_last_byte(steering)
    out = tmp_path / "exported"
    refused(
        capsys,
        ["export", RUN, "steering", "--out", str(out), "--store", str(store)],
        f"{steering} changed after iteration 2 'steering' of run '{RUN}' wrote it",
    )
    assert not out.exists()
    refused(capsys, ["export", RUN, "gguf", "--out", str(tmp_path / "cv.gguf"), "--store", str(store)], str(steering))
    assert main(["status", RUN, "--store", str(store)]) == 0
    out_text = capsys.readouterr().out
    assert f"modified: {steering} (iteration 2 'steering'); `sims resume {RUN}` recomputes it" in out_text
    assert main(["status", RUN, "--store", str(store), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["problems"] == [
        {"iteration": 2, "phase": "steering", "output": "steering", "uri": str(steering), "state": "modified"}
    ]
    states = {(p["iteration"], p["phase"]): p["outputs"] for p in data["phases"]}
    assert states[(2, "steering")] == "modified" and states[(2, "eval")] == "ok"


def test_a_modified_or_missing_eval_table_is_refused_by_eval(capsys, run):
    store, run_dir = run
    table = run_dir / "iter=2" / "eval.parquet"
    flip_last_byte(table)
    refused(capsys, ["eval", RUN, "--store", str(store)], f"{table} changed after iteration 2 'eval'")
    table.unlink()
    refused(capsys, ["eval", RUN, "--store", str(store)], f"{table} is missing")
    assert main(["eval", RUN, "--iteration", "1", "--store", str(store)]) == 0  # iteration 1 is intact


def test_a_corrupted_parquet_file_is_named_even_when_its_record_matches(capsys, run):
    """A writer that recorded a broken file (the hashes match, the bytes are not Parquet)."""
    store, run_dir = run
    table = run_dir / "iter=2" / "eval.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    artifact_store = ArtifactStore.open(store)
    data = manifest_json(run_dir)
    for entry in data["entries"]:
        if (entry["iteration"], entry["phase"]) == (2, "eval"):
            record = entry["outputs"]["eval"]
            record["sha256"] = artifact_store.content_hash(str(table))
            record["size"], record["fingerprint"] = table.stat().st_size, artifact_store.fingerprint(str(table))
    set_manifest(run_dir, data)
    refused(capsys, ["eval", RUN, "--store", str(store)], f"{table} is not a readable Parquet file")


def test_export_never_overwrites_a_file_unless_forced_and_then_atomically(capsys, run, tmp_path):
    store, _ = run
    out = tmp_path / "pairs.jsonl"
    out.write_text("my own notes\n")
    refused(
        capsys,
        ["export", RUN, "dpo", "--out", str(out), "--store", str(store)],
        f"--out '{out}' already exists; pass --force to replace it",
    )
    assert out.read_text() == "my own notes\n"
    assert main(["export", RUN, "dpo", "--out", str(out), "--store", str(store), "--force"]) == 0
    assert json.loads(out.read_text().splitlines()[0]).keys() == {"prompt", "chosen", "rejected"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "runs"]  # no temporary left
    steering = tmp_path / "s.safetensors"
    steering.write_bytes(b"x")
    refused(capsys, ["export", RUN, "steering", "--out", str(steering), "--store", str(store)], "already exists")
    refused(
        capsys, ["export", RUN, "dpo", "--out", str(tmp_path), "--store", str(store)], "must end in .parquet or .jsonl"
    )


# ------------------------------------------------------------------ manifests: foreign URIs, damage, repair
@pytest.mark.parametrize("foreign", ["/etc/passwd", "../other-run/iter=1/eval.parquet", "s3://elsewhere/x.parquet"])
def test_a_manifest_naming_files_outside_its_run_is_refused_and_repair_drops_the_entry(capsys, run, foreign):
    store, run_dir = run
    data = manifest_json(run_dir)
    for entry in data["entries"]:
        if (entry["iteration"], entry["phase"]) == (2, "eval"):
            entry["outputs"]["eval"]["uri"] = foreign
    set_manifest(run_dir, data)
    for argv in (["status", RUN], ["eval", RUN], ["export", RUN, "dpo", "--out", "x.jsonl"]):
        refused(
            capsys, [*argv, "--store", str(store)], f"{run_dir / 'manifest.json'} names {foreign!r}", "outside the run"
        )
    assert main(["repair", RUN, "--store", str(store)]) == 0
    captured = capsys.readouterr()
    assert f"dropped an entry of {run_dir / 'manifest.json'} (its phase is computed again)" in captured.err
    assert f"rebuilt the manifest of run {RUN}: 15 phase(s) kept" in captured.out
    assert main(["status", RUN, "--store", str(store)]) == 0
    capsys.readouterr()
    assert main(["eval", RUN, "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iteration"] == 1  # iteration 2's eval is gone


def test_a_truncated_manifest_names_itself_and_repair_makes_the_run_usable(capsys, run):
    store, run_dir = run
    manifest = run_dir / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    refused(
        capsys, ["status", RUN, "--store", str(store)], f"{manifest} is damaged (not valid JSON", f"`sims repair {RUN}`"
    )
    assert main(["repair", RUN, "--store", str(store)]) == 0
    assert "was not valid JSON" in capsys.readouterr().err
    assert (run_dir / "manifest.json.damaged").exists()
    assert main(["status", RUN, "--store", str(store)]) == 0
    capsys.readouterr()
    # The config was lost with the manifest: resume says how to go on instead of running defaults.
    refused(capsys, ["resume", RUN, "--store", str(store)], "has no recorded config", f"sims run --run-id {RUN}")


def test_a_damaged_shard_entry_file_names_itself_and_repair_sets_it_aside(capsys, run):
    store, run_dir = run
    entry = run_dir / "iter=1" / "generations_shard_000_of_002.entry.json"
    entry.write_text('{"iteration": 1, "phase": ')
    refused(capsys, ["status", RUN, "--store", str(store)], f"{entry} is damaged (not valid JSON")
    assert main(["repair", RUN, "--store", str(store)]) == 0
    assert f"{entry} was not valid JSON" in capsys.readouterr().err
    assert not entry.exists() and Path(f"{entry}.damaged").exists()
    assert main(["status", RUN, "--store", str(store)]) == 0
    assert "generations completed" in " ".join(capsys.readouterr().out.split())


def test_resume_repairs_a_tampered_manifest_and_recomputes_only_what_it_cannot_verify(capsys, run):
    store, run_dir = run
    data = manifest_json(run_dir)
    for entry in data["entries"]:
        if (entry["iteration"], entry["phase"]) == (2, "eval"):
            entry["outputs"]["eval"]["uri"] = "/etc/passwd"
    set_manifest(run_dir, data)
    before = executions(RUN)
    assert main(["resume", RUN, "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert "names '/etc/passwd', which lies outside the run folder" in err
    assert "dropped an entry of" in err
    ran = {key for key, count in computed_since(RUN, before).items() if count}
    assert ran == {(2, "eval")}
    assert Manifest.load(ArtifactStore.open(store), RUN).entry(2, "eval").status == "completed"


# ------------------------------------------------------------------ runs are not rewritten; locks
def test_resume_with_fewer_iterations_than_the_run_reached_is_refused(capsys, run):
    store, run_dir = run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused(
        capsys,
        ["resume", RUN, "--iterations", "1", "--store", str(store)],
        f"iterations=1 is below the 2 iteration(s) run '{RUN}' has already reached",
        f"`sims resume {RUN} --iterations 2`",
    )
    refused(capsys, ["run", "--run-id", RUN, "--store", str(store), "--set", "iterations=1"], "iterations=1 is below")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01 not a lock"])
def test_a_garbage_lock_is_stale_and_a_resume_goes_ahead_and_sweeps_leftovers(capsys, run, garbage):
    store, run_dir = run
    (run_dir / "run.lock").write_bytes(garbage)
    leftover = run_dir / "iter=2" / ".eval.parquet.tmp-0123456789ab"  # a writer killed mid-write
    leftover.write_bytes(b"half a file")
    assert main(["resume", RUN, "--store", str(store)]) == 0
    assert not (run_dir / "run.lock").exists() and not leftover.exists()
    assert not [name for name in files_under(run_dir) if ".tmp-" in name or "run.lock" in name]
