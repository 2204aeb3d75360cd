"""Helpers for comparing runs: every artifact of a run with its shards merged."""

from __future__ import annotations

import numpy as np
import pandas as pd

from storage import ArtifactStore, Manifest

SHARDED = {
    "generations": ("generations", ["prompt_id", "sample_index"]),
    "rankings": ("rankings", ["prompt_id", "sample_index"]),
}


def merged_artifacts(store_url: str, run_id: str) -> dict:
    """Every artifact of a run, with shards merged: what a later phase sees."""
    store = ArtifactStore.open(store_url)
    manifest = Manifest.load(store, run_id)
    out: dict = {}
    for t in manifest.iterations():
        for base, (schema, keys) in SHARDED.items():
            uris = manifest.shard_uris(t, base)
            if uris:
                out[(t, base)] = store.read_frames(uris, schema, sort_by=keys)
        acts = manifest.shard_uris(t, "activations")
        if acts:
            for layer in store.activation_layers(acts):
                out[(t, "activations", layer)] = store.load_activation_pairs(acts, layer)
        for phase in ("prompts", "buffer", "eval", "steering"):
            if manifest.entry(t, phase) is not None:
                out[(t, phase)] = store.read_bytes(manifest.output_uri(t, phase))
    return out


def assert_same_artifacts(reference: dict, other: dict) -> None:
    assert reference.keys() == other.keys()
    for key, value in reference.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, other[key], check_exact=True, obj=str(key))
        elif isinstance(value, tuple):  # (chosen, rejected, pair ids)
            assert np.array_equal(value[0], other[key][0]) and np.array_equal(value[1], other[key][1]), key
            assert value[2] == other[key][2], key
        else:
            assert value == other[key], f"{key} differs"
