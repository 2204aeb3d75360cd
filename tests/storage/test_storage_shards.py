"""Shard artifacts: names, merged reads in canonical order, and manifest entries written by
concurrent processes (each shard its own entry file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from storage import Manifest, shard_phase, split_shard_phase
from storage.layout import phase_sort_key


def test_shard_phase_names_round_trip_and_sort_after_their_phase():
    assert shard_phase("generations", 0, 1) == "generations"
    assert shard_phase("generations", 2, 4) == "generations_shard_002_of_004"
    assert split_shard_phase("generations_shard_002_of_004") == ("generations", 2, 4)
    assert split_shard_phase("buffer") == ("buffer", 0, 1)
    names = ["buffer", "rankings_shard_001_of_002", "generations_shard_001_of_002", "generations_shard_000_of_002"]
    assert sorted(names, key=phase_sort_key) == [
        "generations_shard_000_of_002",
        "generations_shard_001_of_002",
        "rankings_shard_001_of_002",
        "buffer",
    ]
    with pytest.raises(ValueError, match="shard 4 of 4 is not valid"):
        shard_phase("generations", 4, 4)


def _rankings(ids):
    return pd.DataFrame(
        {
            "prompt_id": ids,
            "sample_index": [0] * len(ids),
            "score": [0.5] * len(ids),
            "rank": [0] * len(ids),
            "oracle": ["x"] * len(ids),
        }
    )


def test_read_frames_merges_shards_in_key_order(store):
    a = store.write_table(store.uri("r", 1, "rankings_shard_000_of_002"), _rankings(["p3", "p1"]), "rankings").uri
    b = store.write_table(store.uri("r", 1, "rankings_shard_001_of_002"), _rankings(["p2"]), "rankings").uri
    merged = store.read_frames([a, b], "rankings", sort_by=["prompt_id", "sample_index"])
    assert merged["prompt_id"].tolist() == ["p1", "p2", "p3"] and list(merged.index) == [0, 1, 2]
    with pytest.raises(ValueError, match="no rankings artifacts to read"):
        store.read_frames([], "rankings")


def _activations(store, phase, ids, offset):
    with store.activation_writer(store.uri("r", 1, phase), hidden=3, dtype="float32") as writer:
        for role, sign in (("chosen", 1), ("rejected", -1)):
            values = np.array([[sign * (offset + i)] * 3 for i in range(len(ids))], dtype=np.float32)
            writer.write(2, values, ids, role, 1)
    return writer.result.uri


def test_activation_pairs_merge_in_pair_then_token_order(store):
    a = _activations(store, "activations_shard_000_of_003", ["b:10", "a:0"], 0)
    b = _activations(store, "activations_shard_001_of_003", ["b:2"], 10)
    empty = (
        store.activation_writer(store.uri("r", 1, "activations_shard_002_of_003"), hidden=3, dtype="float32")
        .close()
        .uri
    )
    assert store.activation_layers([a, b, empty]) == [2]
    chosen, rejected, ids = store.load_activation_pairs([a, b, empty], 2)
    assert ids == ["a:0", "b:2", "b:10"]  # numeric token order, not string order
    assert chosen[:, 0].tolist() == [1.0, 10.0, 0.0] and rejected[:, 0].tolist() == [-1.0, -10.0, -0.0]
    twice = _activations(store, "activations_shard_000_of_002", ["a:0"], 5)
    with pytest.raises(ValueError, match="pair 'a:0' appears in two activation shards"):
        store.load_activation_pairs([a, twice], 2)


COMPLETE_SHARD = """
import os, sys, time
from storage import ArtifactStore, Manifest, shard_phase
url, shard, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = ArtifactStore.open(url)
manifest = Manifest.load(store, "run")
phase = shard_phase("generations", shard, 4)
while not os.path.exists(go):
    time.sleep(0.005)
manifest.start(1, phase, config_hash="c")
out = store.write_bytes(store.uri("run", 1, phase, "txt"), f"shard {shard}")
manifest.complete(1, phase, {"generations": out})
"""


def test_shards_completing_at_once_in_four_processes_lose_no_entry(store, tmp_path):
    Manifest.load_or_create(store, "run", config={"a": 1})
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", COMPLETE_SHARD, store.url, str(i), str(go)],
            env=os.environ.copy(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(3)  # let the four processes import and wait at the start line
    go.write_text("go")
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], errors
    manifest = Manifest.load(store, "run")
    phases = [shard_phase("generations", i, 4) for i in range(4)]
    assert [manifest.entry(1, p).status for p in phases] == ["completed"] * 4
    assert [store.read_bytes(u).decode() for u in manifest.shard_uris(1, "generations")] == [
        f"shard {i}" for i in range(4)
    ]
    on_disk = json.loads(store.read_bytes(store.manifest_uri("run")))
    assert on_disk["entries"] == []  # shard entries live in their own files
    manifest.record(1, "buffer", "completed")  # a later whole-manifest write keeps them
    assert len(Manifest.load(store, "run").shard_uris(1, "generations")) == 4


def test_shard_uris_pick_the_complete_plan(store):
    manifest = Manifest.load_or_create(store, "run")
    for shard in range(2):
        phase = shard_phase("rankings", shard, 2)
        manifest.complete(1, phase, {"rankings": store.write_bytes(store.uri("run", 1, phase, "txt"), "x")})
    manifest.start(1, shard_phase("rankings", 0, 3), config_hash="c")  # a newer plan, unfinished
    assert [split_shard_phase(u.rsplit("/", 1)[1].split(".")[0])[1:] for u in manifest.shard_uris(1, "rankings")] == [
        (0, 2),
        (1, 2),
    ]
    assert manifest.shard_uris(1, "generations") == []
