"""The read side verifies what it reads: manifest URIs stay inside their run, recorded outputs are
checked against their sha256, damaged files are errors that name them and a damaged manifest can be
rebuilt, leftovers of killed writers are swept, a garbage lock is stale, and store checks are fast."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time

import pytest

import storage.store as store_module
from sims_core.errors import NotFoundError, TransientError, UserError
from storage import (
    ActivationReader,
    ArtifactCorruptError,
    ArtifactMissingError,
    ArtifactModifiedError,
    ArtifactStore,
    Manifest,
    ManifestDamagedError,
    StoreAccessError,
    StoreUnavailableError,
    UnsafeURIError,
    shard_phase,
)
from storage.lock import RunLock, read_lock

CFG = "c" * 64


def prompt_rows(n: int, tag: str = "q") -> list[dict]:
    return [{"prompt_id": f"p{i}", "prompt": f"{tag}{i}", "split": "train"} for i in range(n)]


def completed(store, phase="prompts", run="r1", iteration=1, n=3, tag="q"):
    m = Manifest.load_or_create(store, run, config={"seed": 7}, sims_version="0.1.0")
    m.start(iteration, phase, config_hash=CFG)
    out = store.write_table(store.uri(run, iteration, phase), prompt_rows(n, tag), "prompts")
    m.complete(iteration, phase, {phase: out})
    return m, out


def edit_json(store, uri, change) -> None:
    d = json.loads(store.read_bytes(uri))
    change(d)
    store.write_bytes(uri, json.dumps(d))


# ------------------------------------------------------------------ 1. URIs stay inside the run
def outside_uris(store) -> list[str]:
    other_bucket = "s3://other-bucket/prefix/r1/iter=1/prompts.parquet" if not store.is_local else "s3://b/x"
    return [
        "/etc/passwd",
        "../r2/iter=1/prompts.parquet",
        "iter=1/../../r2/iter=1/prompts.parquet",
        store.uri("r2", 1, "prompts"),  # absolute, but another run's
        other_bucket,
        "gcs://bucket/r1/iter=1/prompts.parquet",
    ]


def test_a_manifest_naming_a_file_outside_its_run_is_refused(store):
    completed(store, run="r2", tag="secret")
    completed(store)
    good = store.read_bytes(store.manifest_uri("r1"))
    for bad in outside_uris(store):
        store.write_bytes(store.manifest_uri("r1"), good)
        edit_json(store, store.manifest_uri("r1"), lambda d: d["entries"][0]["outputs"]["prompts"].update(uri=bad))
        with pytest.raises(UnsafeURIError) as err:
            Manifest.load(store, "r1")
        assert str(err.value) == (
            f"{store.manifest_uri('r1')} names {bad!r}, which lies outside the run folder {store.run_uri('r1')}; a "
            "run's records may only name files inside it (was the file edited?)"
        )
        assert err.value.user_error


def test_an_absolute_uri_inside_the_run_is_accepted_as_relative(store):
    _, out = completed(store)
    edit_json(store, store.manifest_uri("r1"), lambda d: d["entries"][0]["outputs"]["prompts"].update(uri=out.uri))
    m = Manifest.load(store, "r1")
    assert m.entry(1, "prompts").outputs["prompts"].uri == "iter=1/prompts.parquet"
    assert m.output_uri(1, "prompts") == out.uri and m.is_fresh(1, "prompts", CFG)[0]


def test_a_shard_entry_file_naming_a_file_outside_its_run_is_refused(store):
    m = Manifest.load_or_create(store, "r1")
    phase = shard_phase("generations", 1, 2)
    m.complete(1, phase, {"generations": store.write_bytes(store.uri("r1", 1, phase, "txt"), "x")})
    entry_uri = store.run_uri("r1", "iter=1", f"{phase}.entry.json")
    edit_json(store, entry_uri, lambda d: d["outputs"]["generations"].update(uri="/etc/passwd"))
    with pytest.raises(UnsafeURIError, match=f"^{entry_uri} names '/etc/passwd', which lies outside the run folder"):
        Manifest.load(store, "r1")


def test_recording_an_output_outside_the_run_is_refused(store):
    _, other = completed(store, run="r2")
    m = Manifest.load_or_create(store, "r1")
    with pytest.raises(UnsafeURIError, match=f"^the outputs of iteration 1 'prompts' names '{other.uri}'"):
        m.complete(1, "prompts", {"prompts": other})


# ------------------------------------------------------------------ 2. reads check their hashes
def test_verified_reads_return_intact_outputs_at_the_cost_of_a_stat(store, monkeypatch):
    m, out = completed(store)
    store_module._memo.clear()  # as in a new process: only the manifest's record vouches for the file
    real_open = store.fs.open
    opened: list[str] = []
    monkeypatch.setattr(store.fs, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    assert m.verified_uri(1, "prompts") == out.uri
    assert opened == []
    assert Manifest.load(store, "r1").read_frame(1, "prompts", "prompts")["prompt"].tolist() == ["q0", "q1", "q2"]
    assert m.read_bytes(1, "prompts") == store.read_bytes(out.uri)


def test_a_modified_output_is_refused_naming_the_file(store):
    m, out = completed(store)
    store.write_table(out.uri, prompt_rows(5, "forged"), "prompts")
    now = store.content_hash(out.uri)
    expected = (
        f"{out.uri} changed after iteration 1 'prompts' of run 'r1' wrote it (sha256 {out.sha256[:12]} recorded, "
        f"{now[:12]} now); resume the run to compute it again"
    )
    with pytest.raises(ArtifactModifiedError) as err:
        m.read_frame(1, "prompts", "prompts")
    assert str(err.value) == expected and err.value.user_error
    with pytest.raises(ArtifactModifiedError, match="changed after iteration 1"):
        m.read_bytes(1, "prompts")
    store.delete(out.uri)
    with pytest.raises(ArtifactMissingError) as err:
        m.verified_uri(1, "prompts")
    assert (
        str(err.value)
        == f"{out.uri} is missing: iteration 1 'prompts' of run 'r1' recorded it; resume the run to compute it again"
    )
    assert isinstance(err.value, FileNotFoundError)


def test_verify_outputs_lists_what_is_modified_or_missing(store):
    completed(store, "prompts")
    _, gone = completed(store, "generations")
    m, changed = completed(store, "rankings")
    m.start(1, "buffer", config_hash=CFG)  # running: nothing recorded to check
    assert Manifest.load(store, "r1").verify_outputs() == []
    store.delete(gone.uri)
    store.write_bytes(changed.uri, b"not the same bytes")
    problems = Manifest.load(store, "r1").verify_outputs()
    assert [(c.phase, c.name, c.state, c.uri) for c in problems] == [
        ("generations", "generations", "missing", gone.uri),
        ("rankings", "rankings", "modified", changed.uri),
    ]
    assert problems[1].recorded == changed.sha256 and problems[1].sha256 == store.content_hash(changed.uri)


# ------------------------------------------------------------------ 3. damaged Parquet files
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_parquet_file_is_an_error_naming_it(store, damage):
    uri = store.uri("r1", 1, "prompts")
    data = store.read_bytes(store.write_table(uri, prompt_rows(50), "prompts").uri)
    store.write_bytes(uri, data[: len(data) // 2] if damage == "truncated" else b"hello, not parquet")
    with pytest.raises(ArtifactCorruptError) as err:
        store.read_frame(uri, "prompts")
    msg = str(err.value)
    assert msg.startswith(f"{uri} is not a readable Parquet file (") and "Parquet magic bytes not found" in msg
    assert msg.endswith("it was truncated or overwritten: delete it so that its phase is computed again")
    with pytest.raises(ArtifactCorruptError, match="is not a readable Parquet file"):
        ActivationReader(store, uri)
    with pytest.raises(NotFoundError, match="no such file"):
        store.read_frame(store.uri("r1", 2, "prompts"), "prompts")


def test_a_damaged_row_group_of_activations_is_an_error_naming_the_file(tmp_path):
    store = ArtifactStore.open(tmp_path)
    uri = store.uri("r1", 1, "activations")
    with store.activation_writer(uri, hidden=64, row_group_rows=8, compression="zstd") as w:
        for layer in (1, 2):
            w.write(layer, [[float(i % 7)] * 64 for i in range(16)], [f"p{i}" for i in range(16)], "chosen", 1)
    data = bytearray(store.read_bytes(uri))
    for i in range(8, len(data) // 3):  # the first row groups' pages; the footer stays readable
        data[i] ^= 0x5A
    store.write_bytes(uri, bytes(data))
    with ActivationReader(store, uri) as reader:
        with pytest.raises(ArtifactCorruptError, match=f"^{uri} is not a readable Parquet file"):
            reader.load_layer(1)


# ------------------------------------------------------------------ 4. damaged manifests and rebuild
def shard_run(store):
    m, prompts = completed(store, "prompts")
    for i in range(2):
        phase = shard_phase("generations", i, 2)
        m.start(1, phase, config_hash=CFG)
        m.complete(1, phase, {"generations": store.write_bytes(store.uri("r1", 1, phase, "txt"), f"shard {i}")})
    _, buffer = completed(store, "buffer")
    return prompts, buffer


@pytest.mark.parametrize("content", [b"", b'{"format": 1, "entries": [', b"\xff\xfe", b"[1, 2]"])
def test_an_unreadable_manifest_names_the_file_and_rebuild_keeps_what_it_can_verify(store, content):
    shard_run(store)
    store.write_bytes(store.manifest_uri("r1"), content)
    with pytest.raises(ManifestDamagedError) as err:
        Manifest.load(store, "r1")
    msg = str(err.value)
    assert msg.startswith(f"{store.manifest_uri('r1')} is damaged (")
    assert msg.endswith(
        "rebuild the manifest of run 'r1' from its artifacts with `sims repair r1` (storage.Manifest.rebuild; "
        "phases whose outputs cannot be verified are computed again)"
    )
    with pytest.raises(ManifestDamagedError):
        Manifest.load_or_create(store, "r1")
    rebuilt, notes = Manifest.rebuild(store, "r1")
    shards = [shard_phase("generations", i, 2) for i in range(2)]
    assert [e.phase for e in rebuilt.entries] == shards  # only the shards' own entry files survived
    assert rebuilt.config == {}
    again = Manifest.load(store, "r1")
    assert [again.is_fresh(1, p, CFG)[0] for p in shards] == [True, True]
    assert again.is_fresh(1, "prompts", CFG) == (False, "no previous output")
    if content == b"[1, 2]":
        assert notes == [
            f"{store.manifest_uri('r1')} was not valid JSON (a JSON list, not an object); kept as "
            f"{store.manifest_uri('r1')}.damaged"
        ]
    assert len(notes) == 1 and store.read_bytes(store.manifest_uri("r1") + ".damaged") == content


def test_rebuild_keeps_the_config_and_drops_entries_whose_outputs_changed(store):
    prompts, buffer = shard_run(store)
    edit_json(store, store.manifest_uri("r1"), lambda d: d["entries"].append({"iteration": "one"}))
    with pytest.raises(
        ManifestDamagedError, match="is damaged \\(an entry is not valid: PhaseEntry.__init__\\(\\) missing 2"
    ):
        Manifest.load(store, "r1")
    store.write_bytes(buffer.uri, b"edited by hand")
    rebuilt, notes = Manifest.rebuild(store, "r1")
    assert rebuilt.config == {"seed": 7} and rebuilt.sims_version == "0.1.0"
    assert [e.phase for e in Manifest.load(store, "r1").entries] == [
        "prompts",
        "generations_shard_000_of_002",
        "generations_shard_001_of_002",
    ]
    assert notes[1].startswith(f"dropped an entry of {store.manifest_uri('r1')} (its phase is computed again): ")
    assert notes[0] == (
        f"dropped iteration 1 'buffer' (its phase is computed again): output 'buffer' is modified: {buffer.uri}"
    )
    assert Manifest.load(store, "r1").is_fresh(1, "prompts", CFG)[0]


def test_rebuild_drops_entries_naming_files_outside_the_run(store):
    completed(store)
    edit_json(
        store, store.manifest_uri("r1"), lambda d: d["entries"][0]["outputs"]["prompts"].update(uri="/etc/passwd")
    )
    rebuilt, notes = Manifest.rebuild(store, "r1")
    assert rebuilt.entries == [] and len(notes) == 1
    assert notes[0].startswith("dropped an entry of") and "'/etc/passwd', which lies outside the run folder" in notes[0]


def test_a_damaged_shard_entry_file_names_it_and_rebuild_sets_it_aside(store):
    shard_run(store)
    entry_uri = store.run_uri("r1", "iter=1", "generations_shard_001_of_002.entry.json")
    store.write_bytes(entry_uri, '{"iteration": 1, "phase": ')
    with pytest.raises(ManifestDamagedError, match=f"^{entry_uri} is damaged \\(not valid JSON: "):
        Manifest.load(store, "r1")
    _, notes = Manifest.rebuild(store, "r1")
    assert notes == [
        f"{entry_uri} was not valid JSON (Expecting value: line 1 column 27 (char 26)); kept as {entry_uri}.damaged"
    ]
    m = Manifest.load(store, "r1")
    assert m.entry(1, "generations_shard_001_of_002") is None and m.config == {"seed": 7}
    assert m.is_fresh(1, "generations_shard_000_of_002", CFG)[0] and not store.exists(entry_uri)


# ------------------------------------------------------------------ 5. leftovers of killed writers
def test_sweep_deletes_what_killed_writers_left_and_nothing_else(store, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    _, out = completed(store)
    leftovers = [
        store.run_uri("r1", "iter=1", ".prompts.parquet.tmp-0123456789ab"),
        store.run_uri("r1", "iter=2", ".steering.safetensors.tmp-ba9876543210"),
        store.run_uri("r1", ".run.lock.tmp-abc"),
        store.run_uri("r1", "run.lock.stale-0123456789ab"),
    ]
    for uri in leftovers:
        store.fs.makedirs(store.path(uri).rsplit("/", 1)[0], exist_ok=True)
        store.fs.pipe_file(store.path(uri), b"half")
    old_part, new_part = spool / "sims-upload-old.part", spool / "sims-upload-new.part"
    old_part.write_bytes(b"x")
    new_part.write_bytes(b"y")
    os.utime(old_part, (time.time() - 7200, time.time() - 7200))
    assert sorted(store.sweep("r1")) == sorted([*leftovers, str(old_part)])
    assert [store.exists(u) for u in leftovers] == [False] * 4
    assert store.exists(out.uri) and store.exists(store.manifest_uri("r1")) and new_part.exists()
    assert store.sweep("r1") == [] and store.sweep("never-ran") == []


# ------------------------------------------------------------------ 6. a garbage lock is stale
@pytest.mark.parametrize("content", [b"", b"\x00\x00garbage", b'{"holder": "half a lock'])
def test_an_empty_or_garbage_lock_is_taken_over_with_a_warning(store, content):
    store.write_bytes(store.lock_uri("r1"), content)
    with pytest.warns(UserWarning, match="is empty or not a lock file") as record:
        lock = RunLock(store, "r1", holder="resumed")
        lock.acquire()
    assert store.lock_uri("r1") in str(record[0].message)
    assert read_lock(store, "r1").holder == "resumed"
    lock.release()
    assert read_lock(store, "r1") is None


# ------------------------------------------------------------------ 7. preflight store checks
def test_a_local_store_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for url in (tmp_path / "file.txt", tmp_path / "file.txt" / "runs"):
        with pytest.raises(StoreAccessError) as err:
            ArtifactStore.open(url).check()
        assert str(err.value) == f"store {url} cannot be used: {tmp_path / 'file.txt'} is a file, not a directory"
        assert err.value.user_error


def test_a_local_store_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    store = ArtifactStore.open(tmp_path / "ro" / "runs")
    store.check(writable=True)  # creates the directory, leaves no probe behind
    assert os.listdir(tmp_path / "ro" / "runs") == []
    (tmp_path / "ro" / "runs").chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: refuse the probe as the kernel would for anyone else
        monkeypatch.setattr(
            store_module.os, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
        )
    with pytest.raises(StoreAccessError) as err:
        store.check(writable=True)
    assert str(err.value) == f"store {store.url} is not writable (Permission denied)"
    store.check()  # readable is enough without writable


def test_an_s3_store_is_checked_against_a_real_endpoint(s3_bucket, aws_env):
    store = ArtifactStore.open(f"s3://{s3_bucket}/runs")
    store.check(writable=True)
    assert store.fs.find(f"{s3_bucket}") == []  # the probe object is gone
    missing = ArtifactStore.open("s3://no-such-bucket-for-sims/runs")
    for writable in (False, True):
        with pytest.raises(StoreAccessError) as err:
            missing.check(writable=writable)
        assert (
            str(err.value)
            == "store s3://no-such-bucket-for-sims/runs cannot be used: bucket 'no-such-bucket-for-sims' does not exist"
        )


def test_an_unreachable_s3_endpoint_fails_fast_in_one_sentence(aws_env, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    store = ArtifactStore.open("s3://bucket/runs")
    for writable in (False, True):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as err:
            store.check(writable=writable)
        assert time.monotonic() - started < 5
        assert str(err.value) == (
            f"store s3://bucket/runs did not answer: endpoint {endpoint} is unreachable or timed out "
            "(EndpointConnectionError, one attempt with a 2 s connect timeout)"
        )
        assert isinstance(err.value, TransientError) and err.value.retryable and not isinstance(err.value, UserError)
        assert err.value.__cause__ is None and err.value.__suppress_context__
    assert store.fs.retries == type(store.fs).retries  # the store's own client keeps its retries


def test_a_memory_store_checks_without_a_network():
    ArtifactStore.open("memory://sims-check/runs").check(writable=True)


def test_resolve_refuses_what_lies_outside_the_run(store):
    assert store.resolve("r1", "iter=1/prompts.parquet") == store.uri("r1", 1, "prompts")
    for bad in ("", "iter=1/", "./x", "a\\b", *outside_uris(store)):
        assert store.relative_to_run("r1", bad) is None
    with pytest.raises(UnsafeURIError, match="^run.json names '/etc/passwd'"):
        store.resolve("r1", "/etc/passwd", source="run.json")
