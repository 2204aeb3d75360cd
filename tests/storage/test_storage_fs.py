"""Store URLs: local default, file://, s3:// through the AWS environment or storage_options."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from storage import ArtifactStore, Manifest, UnsupportedStoreError


def test_default_store_is_runs_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ArtifactStore.open()
    assert store.protocol == "file"
    assert store.root == str(tmp_path / "runs")
    assert store.uri("r1", 2, "buffer") == str(tmp_path / "runs" / "r1" / "iter=2" / "buffer.parquet")


def test_file_url_is_a_local_store(tmp_path):
    store = ArtifactStore.open(f"file://{tmp_path}/store")
    assert store.protocol == "file"
    assert store.root == f"{tmp_path}/store"


def test_unsupported_scheme_names_the_url_and_the_supported_ones():
    with pytest.raises(UnsupportedStoreError) as err:
        ArtifactStore.open("gcs://bucket/runs")
    msg = str(err.value)
    assert "gcs://bucket/runs" in msg
    assert "s3://" in msg and "local directory" in msg


def test_storage_options_are_refused_for_a_local_store(tmp_path):
    with pytest.raises(ValueError, match="only apply to s3"):
        ArtifactStore.open(tmp_path, {"anon": True})


def test_s3_store_takes_the_endpoint_from_aws_endpoint_url(s3_bucket, aws_env):
    store = ArtifactStore.open(f"s3://{s3_bucket}/runs")
    assert store.protocol == "s3"
    assert store.root == f"{s3_bucket}/runs"
    assert store.storage_options["endpoint_url"] == aws_env
    uri = store.run_uri("r1", "note.txt")
    assert uri == f"s3://{s3_bucket}/runs/r1/note.txt"
    store.write_bytes(uri, b"hello")
    assert store.read_bytes(uri) == b"hello"


def test_s3_store_with_explicit_storage_options_and_no_endpoint_variable(s3_bucket, aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    opts = {"endpoint_url": aws_env, "key": "testing", "secret": "testing"}
    store = ArtifactStore.open(f"s3://{s3_bucket}/x", storage_options=opts)
    uri = store.run_uri("r1", "a.bin")
    store.write_bytes(uri, b"\x00\x01")
    assert store.read_bytes(uri) == b"\x00\x01"


def test_a_stored_table_is_readable_with_pandas_alone(store):
    uri = store.uri("r1", 1, "prompts")
    df = pd.DataFrame({"prompt_id": ["a"], "prompt": ["hi"], "split": ["train"]})
    store.write_table(uri, df, "prompts")
    back = pd.read_parquet(uri, storage_options=store.storage_options or None)
    assert back["prompt"].tolist() == ["hi"]


def test_layout_of_run_artifacts(store):
    base = store.url
    assert store.uri("run-1", 3, "generations") == f"{base}/run-1/iter=3/generations.parquet"
    assert store.uri("run-1", 3, "steering") == f"{base}/run-1/iter=3/steering.safetensors"
    assert store.uri("run-1", 0, "eval", ext="png") == f"{base}/run-1/iter=0/eval.png"
    assert store.report_uri("run-1") == f"{base}/run-1/report.md"
    assert store.manifest_uri("run-1") == f"{base}/run-1/manifest.json"
    assert store.lock_uri("run-1") == f"{base}/run-1/run.lock"
    rel = store.relative_to_run("run-1", store.uri("run-1", 3, "buffer"))
    assert rel == "iter=3/buffer.parquet"
    assert store.resolve("run-1", rel) == store.uri("run-1", 3, "buffer")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "iter=1", ".hidden", "x" * 200])
def test_unsafe_run_ids_are_refused(tmp_path, bad):
    store = ArtifactStore.open(tmp_path)
    with pytest.raises(ValueError, match="run_id"):
        store.uri(bad, 1, "prompts")


def test_negative_iteration_and_bad_phase_are_refused(tmp_path):
    store = ArtifactStore.open(tmp_path)
    with pytest.raises(ValueError, match="iteration"):
        store.uri("r", -1, "prompts")
    with pytest.raises(ValueError, match="phase"):
        store.uri("r", 1, "Prompts/../x")


def test_list_runs_lists_only_directories_with_a_manifest(store):
    Manifest.load_or_create(store, "run-b", config={"x": 1})
    Manifest.load_or_create(store, "run-a", config={"x": 2})
    store.write_bytes(store.run_uri("no-manifest", "junk.txt"), b"x")
    assert store.list_runs() == ["run-a", "run-b"]


def test_list_runs_of_an_empty_store_is_empty(tmp_path):
    assert ArtifactStore.open(os.path.join(tmp_path, "nothing")).list_runs() == []


def test_a_bare_s3_uri_is_opened_from_the_aws_environment(s3_bucket, aws_env):
    store = ArtifactStore.open(f"s3://{s3_bucket}")
    uri = f"s3://{s3_bucket}/loose/file.bin"
    written = store.write_bytes(uri, b"payload")
    assert store.read_bytes(uri) == b"payload"
    assert store.content_hash(uri) == written.sha256


def test_any_installed_fsspec_protocol_is_a_store():
    store = ArtifactStore.open("memory://sims-test-store/runs")
    assert store.protocol == "memory" and store.url == "memory:///sims-test-store/runs"
    uri = store.uri("r1", 1, "prompts")
    assert uri == "memory:///sims-test-store/runs/r1/iter=1/prompts.parquet"
    store.write_table(uri, [{"prompt_id": "a", "prompt": "Hi?", "split": "train"}], "prompts")
    assert store.read_frame(uri, "prompts")["prompt"].tolist() == ["Hi?"]
    Manifest.load_or_create(store, "r1")
    assert store.list_runs() == ["r1"]


def test_unknown_and_uninstalled_protocols_name_the_url():
    with pytest.raises(UnsupportedStoreError) as err:
        ArtifactStore.open("nosuch://bucket/runs")
    assert str(err.value) == (
        "store URL 'nosuch://bucket/runs': protocol 'nosuch' is unknown; supported: a local directory path, "
        "file://path, s3://bucket/prefix, or another fsspec protocol whose package is installed (gs:// with "
        "gcsfs, az:// with adlfs)"
    )
    with pytest.raises(UnsupportedStoreError, match="^store URL 'gcs://bucket/runs': protocol 'gcs' needs a package"):
        ArtifactStore.open("gcs://bucket/runs")
    with pytest.raises(UnsupportedStoreError, match="names no bucket; expected s3://bucket"):
        ArtifactStore.open("s3://")


def test_s3_listings_are_never_cached_and_the_endpoint_option_wins(s3_bucket, aws_env):
    store = ArtifactStore.open(f"s3a://{s3_bucket}/x", storage_options={"endpoint_url": aws_env})
    assert store.protocol == "s3" and store.url == f"s3://{s3_bucket}/x"
    assert store.storage_options == {"endpoint_url": aws_env, "use_listings_cache": False}
