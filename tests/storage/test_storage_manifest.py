"""The run manifest: records, freshness reasons, status table, persistence."""

from __future__ import annotations

import json
import shutil
import threading

import pandas as pd
import pytest

from sims_core.hashing import canonical_hash as stable_hash
from storage import ArtifactStore, Manifest

CFG_A = "a" * 64
CFG_B = "b" * 64


def prompts_df(n: int = 3, tag: str = "q") -> pd.DataFrame:
    return pd.DataFrame(
        {"prompt_id": [f"p{i}" for i in range(n)], "prompt": [f"{tag}{i}" for i in range(n)], "split": ["train"] * n}
    )


def completed(store, run="r1", iteration=1, phase="prompts", inputs=None, n=3):
    m = Manifest.load_or_create(store, run, config={"seed": 1}, sims_version="0.1.0")
    m.start(iteration, phase, config_hash=CFG_A, input_hashes=inputs or {})
    out = store.write_table(store.uri(run, iteration, phase), prompts_df(n), "prompts")
    m.complete(iteration, phase, {phase: out})
    return m, out


def test_load_of_a_missing_run_names_it_and_the_runs_there(store):
    Manifest.load_or_create(store, "other-run")
    with pytest.raises(FileNotFoundError) as err:
        Manifest.load(store, "nope")
    assert "'nope'" in str(err.value) and "other-run" in str(err.value)


def test_run_metadata_persists_and_is_plain_json(store):
    cfg = {"iterations": 3, "oracle": {"kind": "reward_model"}, "layers": [10, 12]}
    m = Manifest.load_or_create(store, "r1", config=cfg, sims_version="0.1.0")
    again = Manifest.load(store, "r1")
    assert again.config == cfg
    assert again.sims_version == "0.1.0"
    assert again.created_at == m.created_at
    raw = json.loads(store.read_bytes(store.manifest_uri("r1")))
    assert raw["run_id"] == "r1" and raw["config"] == cfg and raw["entries"] == []
    # Reopening with a new version keeps created_at.
    third = Manifest.load_or_create(store, "r1", sims_version="0.2.0")
    assert third.created_at == m.created_at and third.sims_version == "0.2.0" and third.config == cfg


def test_completed_entry_records_hashes_rows_and_timing(store):
    m, out = completed(store, inputs={"config": "c" * 64})
    e = Manifest.load(store, "r1").entry(1, "prompts")
    assert e.status == "completed"
    assert e.config_hash == CFG_A
    assert e.input_hashes == {"config": "c" * 64}
    assert e.rows == 3
    assert e.outputs["prompts"].uri == "iter=1/prompts.parquet"  # relative to the run directory
    assert e.outputs["prompts"].sha256 == store.content_hash(out.uri) == out.sha256
    assert e.duration_s is not None and e.duration_s >= 0
    assert e.started_at <= e.finished_at
    assert e.attempts == 1 and e.error is None
    assert m.output_uri(1, "prompts") == store.uri("r1", 1, "prompts")
    assert m.output_hash(1, "prompts") == out.sha256


def test_fresh_when_nothing_changed(store):
    m, _ = completed(store, inputs={"buffer": "1" * 64})
    fresh, reason = Manifest.load(store, "r1").is_fresh(1, "prompts", CFG_A, {"buffer": "1" * 64})
    assert fresh is True
    assert reason.startswith("up to date")


def test_reason_no_previous_output(store):
    m = Manifest.load_or_create(store, "r1")
    assert m.is_fresh(1, "prompts", CFG_A, {}) == (False, "no previous output")


def test_reason_config_changed(store):
    m, _ = completed(store)
    assert m.is_fresh(1, "prompts", CFG_B, {}) == (False, "config changed (hash aaaaaaaaaaaa -> bbbbbbbbbbbb)")


def test_reasons_for_inputs(store):
    m, _ = completed(store, inputs={"buffer": "1" * 64, "prompts": "2" * 64})
    fresh, reason = m.is_fresh(1, "prompts", CFG_A, {"buffer": "3" * 64, "prompts": "2" * 64})
    assert (fresh, reason) == (False, "input 'buffer' changed (hash 111111111111 -> 333333333333)")
    _, reason = m.is_fresh(1, "prompts", CFG_A, {"buffer": "1" * 64, "prompts": "2" * 64, "steering": "4" * 64})
    assert reason == "input 'steering' is new"
    _, reason = m.is_fresh(1, "prompts", CFG_A, {"buffer": "1" * 64})
    assert reason == "input 'prompts' is no longer an input"


def test_reason_output_file_missing(store):
    m, out = completed(store)
    store.delete(out.uri)
    assert m.is_fresh(1, "prompts", CFG_A, {}) == (False, f"output file missing: {out.uri}")


def test_reason_output_modified_after_it_was_written(store):
    m, out = completed(store)
    store.write_table(out.uri, prompts_df(5, "other"), "prompts")
    fresh, reason = m.is_fresh(1, "prompts", CFG_A, {})
    assert not fresh
    assert reason.startswith("output 'prompts' changed since it was written (hash ")
    assert reason.endswith(out.uri)


def test_output_rewritten_with_identical_bytes_is_still_fresh(store):
    m, out = completed(store)
    data = store.read_bytes(out.uri)
    store.delete(out.uri)
    store.write_bytes(out.uri, data)  # new mtime/inode or ETag timestamp, same content
    assert m.is_fresh(1, "prompts", CFG_A, {})[0] is True


def test_reason_previous_attempt_failed(store):
    m = Manifest.load_or_create(store, "r1")
    m.start(2, "generations", config_hash=CFG_A)
    m.fail(2, "generations", ValueError("CUDA out of memory"))
    fresh, reason = Manifest.load(store, "r1").is_fresh(2, "generations", CFG_A, {})
    assert (fresh, reason) == (False, "previous attempt failed: ValueError: CUDA out of memory")
    e = Manifest.load(store, "r1").entry(2, "generations")
    assert e.status == "failed" and e.finished_at is not None


def test_reason_previous_attempt_did_not_finish(store):
    m = Manifest.load_or_create(store, "r1")
    e = m.start(1, "rankings", config_hash=CFG_A)
    fresh, reason = m.is_fresh(1, "rankings", CFG_A, {})
    assert not fresh and reason == f"previous attempt did not finish (status 'running' since {e.started_at})"


def test_a_retry_counts_attempts_and_clears_the_error(store):
    m = Manifest.load_or_create(store, "r1")
    m.start(1, "buffer", config_hash=CFG_A)
    m.fail(1, "buffer", "boom")
    m.start(1, "buffer", config_hash=CFG_A)
    out = store.write_bytes(store.run_uri("r1", "iter=1/buffer.bin"), b"x")
    e = m.complete(1, "buffer", {"buffer": out.uri}, rows=7)
    assert e.attempts == 2 and e.error is None and e.rows == 7 and e.status == "completed"
    assert e.outputs["buffer"].sha256 == out.sha256  # hashed from the plain URI


def test_recording_an_output_that_does_not_exist_is_refused(store):
    m = Manifest.load_or_create(store, "r1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m.complete(1, "prompts", {"prompts": store.uri("r1", 1, "prompts")})


def test_iterations_sort_numerically_and_status_table(store):
    m = Manifest.load_or_create(store, "r1")
    for it in (10, 2, 1):
        m.start(it, "prompts", config_hash=CFG_A)
        out = store.write_table(store.uri("r1", it, "prompts"), prompts_df(it), "prompts")
        m.complete(it, "prompts", {"prompts": out})
    m.start(2, "generations", config_hash=CFG_A)
    m.fail(2, "generations", "killed")
    assert m.iterations() == [1, 2, 10]
    df = Manifest.load(store, "r1").to_frame()
    assert list(df.columns) == ["iteration", "phase", "status", "rows", "seconds", "finished_at", "error"]
    assert df[["iteration", "phase", "status"]].values.tolist() == [
        [1, "prompts", "completed"],
        [2, "prompts", "completed"],
        [2, "generations", "failed"],
        [10, "prompts", "completed"],
    ]
    assert df["rows"].tolist() == [1, 2, pd.NA, 10]
    assert (df["seconds"] >= 0).all()
    assert df["error"].tolist()[2] == "killed"


def test_concurrent_records_from_threads_are_not_lost(store):
    Manifest.load_or_create(store, "r1")

    def work(i: int) -> None:
        Manifest.load(store, "r1").start(i, "prompts", config_hash=CFG_A)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Manifest.load(store, "r1").iterations() == list(range(6))


def test_a_local_run_copied_elsewhere_stays_fresh(tmp_path):
    store = ArtifactStore.open(tmp_path / "a")
    completed(store)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = Manifest.load(ArtifactStore.open(tmp_path / "b"), "r1")
    assert moved.is_fresh(1, "prompts", CFG_A, {})[0] is True
    assert moved.output_uri(1, "prompts") == str(tmp_path / "b" / "r1" / "iter=1" / "prompts.parquet")


def test_invalid_status_and_key_are_refused(store):
    m = Manifest.load_or_create(store, "r1")
    with pytest.raises(ValueError, match="status 'done'"):
        m.record(1, "prompts", "done")
    with pytest.raises(ValueError, match="iteration"):
        m.record(-1, "prompts", "running")


def test_stable_hash_ignores_key_order_and_sees_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash({})) == 64
