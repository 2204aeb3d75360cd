"""Atomic writes: a reader sees the old artifact or the whole new one, never a part of it;
a failed write leaves nothing behind. Also bytes helpers and content hashes."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading

import pandas as pd
import pyarrow.parquet as pq
import pytest

import storage.store as store_module
from storage import ArtifactStore


def prompts(n: int, tag: str = "v1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "prompt": [f"{tag} question {i} " + "x" * 50 for i in range(n)],
            "split": ["train"] * n,
        }
    )


def all_files(store) -> list[str]:
    """Every file under the store root, temporaries included."""
    if store.is_local:
        out = []
        for d, _, files in os.walk(store.root):
            out += [os.path.join(d, f) for f in files]
        return sorted(out)
    return sorted(store.fs.find(store.root))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Route the spool files of S3 uploads to a folder the test can inspect."""
    d = tmp_path / "spool"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_a_write_failing_midway_leaves_no_file_and_no_temporary(store, monkeypatch, private_tmp):
    uri = store.uri("r1", 1, "prompts")
    real = pq.write_table

    def half_then_fail(table, where, **kw):
        buf = io.BytesIO()
        real(table, buf, **kw)
        where.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("disk on fire")

    monkeypatch.setattr(store_module.pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk on fire"):
        store.write_table(uri, prompts(100), "prompts")
    assert not store.exists(uri)
    assert all_files(store) == []
    assert os.listdir(private_tmp) == []


def test_a_failed_overwrite_keeps_the_previous_version(store, monkeypatch):
    uri = store.uri("r1", 1, "prompts")
    store.write_table(uri, prompts(10, "v1"), "prompts")

    def fail(*a, **kw):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(store_module.pq, "write_table", fail)
    with pytest.raises(RuntimeError):
        store.write_table(uri, prompts(20, "v2"), "prompts")
    back = store.read_frame(uri, "prompts")
    assert len(back) == 10 and back["prompt"].str.startswith("v1").all()
    assert all_files(store) == [store.path(uri)]


def test_a_failed_publish_step_leaves_no_temporary(store, monkeypatch, private_tmp):
    uri = store.run_uri("r1", "report.md")
    if store.is_local:
        monkeypatch.setattr(store_module.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    else:
        monkeypatch.setattr(store.fs, "put_file", lambda *a, **k: (_ for _ in ()).throw(OSError("upload failed")))
    with pytest.raises(OSError, match="failed"):
        store.write_bytes(uri, "# report\n")
    assert all_files(store) == []
    assert os.listdir(private_tmp) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_a_concurrent_reader_never_sees_a_partial_table(store, monkeypatch, existing):
    uri = store.uri("r1", 1, "prompts")
    if existing:
        store.write_table(uri, prompts(10, "v1"), "prompts")
    half_written = threading.Event()
    go_on = threading.Event()
    real = pq.write_table

    def slow_write(table, where, **kw):
        buf = io.BytesIO()
        real(table, buf, **kw)
        data = buf.getvalue()
        where.write(data[: len(data) // 2])
        half_written.set()
        assert go_on.wait(10)
        where.write(data[len(data) // 2 :])

    monkeypatch.setattr(store_module.pq, "write_table", slow_write)
    errors: list[BaseException] = []

    def writer():
        try:
            store.write_table(uri, prompts(500, "v2"), "prompts")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert half_written.wait(10)
        # Mid-write: the final URI holds either nothing or the complete old version.
        if existing:
            old = store.read_frame(uri, "prompts")
            assert len(old) == 10 and old["prompt"].str.startswith("v1").all()
        else:
            assert not store.exists(uri)
            with pytest.raises(FileNotFoundError, match="no such file"):
                store.read_frame(uri, "prompts")
    finally:
        go_on.set()
        t.join(10)
    assert not errors
    new = store.read_frame(uri, "prompts")
    assert len(new) == 500 and new["prompt"].str.startswith("v2").all()
    assert all_files(store) == [store.path(uri)]


def test_bytes_round_trip_and_text(store):
    blob = bytes(range(256)) * 100
    uri = store.uri("r1", 2, "steering")
    written = store.write_bytes(uri, blob)
    assert store.read_bytes(uri) == blob
    assert written.sha256 == hashlib.sha256(blob).hexdigest()
    assert written.size == len(blob)
    report = store.report_uri("r1")
    store.write_bytes(report, "# Run r1\n\nwin rate: 0.6 ✓\n")
    assert store.read_bytes(report).decode() == "# Run r1\n\nwin rate: 0.6 ✓\n"


def test_read_of_a_missing_file_names_it(store):
    uri = store.run_uri("r1", "nothing.bin")
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        store.read_bytes(uri)
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        store.content_hash(uri)


def test_content_hash_is_sha256_of_the_stored_bytes_and_memoised(store, monkeypatch):
    uri = store.uri("r1", 1, "prompts")
    written = store.write_table(uri, prompts(30), "prompts")
    stored = store.read_bytes(uri)
    assert written.sha256 == hashlib.sha256(stored).hexdigest()
    assert store.content_hash(uri) == written.sha256

    # Unchanged file: answered from the memo, the bytes are not read again.
    real_open = store.fs.open
    opened: list[str] = []
    monkeypatch.setattr(store.fs, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    assert store.content_hash(uri) == written.sha256
    assert opened == []

    # Changed out of band (not through storage): the fingerprint changes, the hash is recomputed.
    other = b"not parquet any more"
    store.fs.pipe_file(store.path(uri), other)
    opened.clear()
    assert store.content_hash(uri) == hashlib.sha256(other).hexdigest()
    assert len(opened) == 1


def test_content_hash_of_a_file_written_by_another_process_is_computed(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert ArtifactStore.open(tmp_path).content_hash(str(path)) == hashlib.sha256(b"abc").hexdigest()
