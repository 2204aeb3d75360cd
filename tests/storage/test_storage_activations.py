"""ActivationWriter / ActivationReader: per-layer row groups, bounded batches, exact values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from storage import ActivationReader, ActivationWriter, ArtifactSchemaError, ArtifactStore

HIDDEN = 16


def make_inputs(rng: np.random.Generator, layers=(2, 5), batches=3, batch_rows=5):
    """Per layer, ``batches`` chosen and rejected batches of ``batch_rows`` rows each."""
    out = []
    for b in range(batches):
        ids = [f"pair-{b}-{i}" for i in range(batch_rows)]
        for layer in layers:
            for role in ("chosen", "rejected"):
                vals = rng.standard_normal((batch_rows, HIDDEN)).astype(np.float32) * 50
                counts = rng.integers(1, 64, batch_rows)
                out.append((layer, vals, ids, role, counts))
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_writer_flushes_row_groups_per_layer_and_values_round_trip(store, dtype):
    rng = np.random.default_rng(0)
    inputs = make_inputs(rng)
    uri = store.uri("r1", 1, "activations")
    with ActivationWriter(store, uri, dtype=dtype, row_group_rows=4) as w:
        for layer, vals, ids, role, counts in inputs:
            w.write(layer, vals, ids, role, counts)
    # 30 rows per layer in groups of 4: 7 full groups + 1 of 2, for each of 2 layers.
    assert w.row_groups_written == 16
    assert w.result is not None and w.result.rows == 60

    path = store.path(uri)
    with store.fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert meta.num_row_groups == 16
    assert max(sizes) == 4 and sum(sizes) == 60

    with ActivationReader(store, uri) as r:
        assert r.hidden == HIDDEN and r.dtype == dtype
        assert r.layers == [2, 5]
        assert r.num_rows == 60
        for layer in (2, 5):
            expected = [x for x in inputs if x[0] == layer]
            want_vals = np.concatenate([x[1] for x in expected]).astype(dtype)
            want_ids = [i for x in expected for i in x[2]]
            want_roles = [x[3] for x in expected for _ in x[2]]
            want_counts = np.concatenate([x[4] for x in expected])

            batches = list(r.iter_batches(layer))
            assert [len(b) for b in batches] == [4] * 7 + [2]
            assert all(b.values.shape == (len(b), HIDDEN) for b in batches)
            assert all(set(b.layers.tolist()) == {layer} for b in batches)
            stacked = np.concatenate([b.values for b in batches])
            assert stacked.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(stacked, want_vals)

            whole = r.load_layer(layer)
            np.testing.assert_array_equal(whole.values, want_vals)
            assert whole.pair_ids == want_ids
            assert whole.roles == want_roles
            np.testing.assert_array_equal(whole.token_counts, want_counts)

            chosen, rejected, pair_ids = r.load_pairs(layer)
            assert chosen.shape == rejected.shape == (15, HIDDEN)
            by_key = {(x[3], pid): row for x in expected for pid, row in zip(x[2], x[1].astype(dtype))}
            for i, pid in enumerate(pair_ids):
                np.testing.assert_array_equal(chosen[i], by_key[("chosen", pid)])
                np.testing.assert_array_equal(rejected[i], by_key[("rejected", pid)])

            only_rejected = r.load_layer(layer, role="rejected")
            assert len(only_rejected) == 15 and set(only_rejected.roles) == {"rejected"}


def test_memory_stays_bounded_rows_are_flushed_while_writing(tmp_path):
    uri = str(tmp_path / "a.parquet")
    with ActivationWriter(None, uri, row_group_rows=4) as w:
        w.write(0, np.ones((10, 8)), [str(i) for i in range(10)], "chosen", 1)
        # 10 rows of one layer: two full row groups are already on disk, 2 rows wait.
        assert w.row_groups_written == 2 and w.rows_written == 8
        w.write(1, np.ones((3, 8)), ["a", "b", "c"], "rejected", 1)
        assert w.row_groups_written == 2  # layer 1 has fewer rows than a group
    assert w.row_groups_written == 4 and w.rows_written == 13


def test_buffered_rows_are_copies_of_the_callers_arrays(tmp_path):
    uri = str(tmp_path / "a.parquet")
    buf = np.zeros((2, 4), dtype=np.float32)
    t = torch.zeros(2, 4)
    with ActivationWriter(None, uri, dtype="float32", row_group_rows=100) as w:
        w.write(0, buf, ["a", "b"], "chosen", 1)
        w.write(0, t, ["a", "b"], "rejected", 1)
        buf += 9.0  # reused by the caller before the writer flushed
        t += 9.0
    with ActivationReader(None, uri) as r:
        assert r.load_layer(0).values.sum() == 0.0


def test_iterating_all_row_groups_yields_bounded_batches(tmp_path):
    uri = str(tmp_path / "a.parquet")
    rng = np.random.default_rng(1)
    with ActivationWriter(None, uri, row_group_rows=8) as w:
        for layer in range(3):
            w.write(layer, rng.standard_normal((20, 4)), [f"p{i}" for i in range(20)], "chosen", 3)
    with ActivationReader(None, uri) as r:
        batches = list(r.iter_batches())
    assert len(batches) == 9
    assert max(len(b) for b in batches) == 8
    assert sum(len(b) for b in batches) == 60


def test_torch_tensors_including_bfloat16_are_accepted(tmp_path):
    uri = str(tmp_path / "a.parquet")
    t32 = torch.randn(6, HIDDEN)
    tbf = torch.randn(6, HIDDEN, dtype=torch.bfloat16)
    with ActivationWriter(None, uri, dtype="float32") as w:
        w.write(7, t32, [f"p{i}" for i in range(6)], ["chosen"] * 6, torch.arange(6))
        w.write(7, tbf, [f"p{i}" for i in range(6)], "rejected", 2)
    with ActivationReader(None, uri) as r:
        chosen, rejected, ids = r.load_pairs(7)
        counts = r.load_layer(7, role="chosen").token_counts
    np.testing.assert_array_equal(chosen, t32.numpy())
    np.testing.assert_array_equal(rejected, tbf.float().numpy())
    assert ids == [f"p{i}" for i in range(6)]
    assert counts.tolist() == list(range(6))


def test_an_error_inside_the_writer_leaves_no_file(store):
    uri = store.uri("r1", 1, "activations")
    with pytest.raises(RuntimeError, match="extraction crashed"):
        with ActivationWriter(store, uri, row_group_rows=2) as w:
            w.write(0, np.ones((5, 4)), list("abcde"), "chosen", 1)
            assert w.row_groups_written == 2
            raise RuntimeError("extraction crashed")
    assert not store.exists(uri)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": np.ones((3, 5))}, "hidden size 5, expected 4"),
        ({"values": np.ones(4)}, "must be 2-D"),
        ({"pair_ids": ["a"]}, "1 pair_ids for 3 rows"),
        ({"roles": "neutral"}, r"role\(s\) \['neutral'\]"),
        ({"values": np.full((3, 4), np.nan)}, "NaN"),
        ({"values": np.ones((3, 4), dtype=np.int64)}, "floating point"),
    ],
)
def test_bad_batches_are_refused_with_a_reason(tmp_path, kwargs, message):
    w = ActivationWriter(None, str(tmp_path / "a.parquet"), hidden=4)
    args = {"layer": 1, "values": np.ones((3, 4)), "pair_ids": ["a", "b", "c"], "roles": "chosen", "token_counts": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        w.write(**args)
    w.abort()
    assert not (tmp_path / "a.parquet").exists()


def test_missing_layer_and_incomplete_pairs_are_named(tmp_path):
    uri = str(tmp_path / "a.parquet")
    with ActivationWriter(None, uri) as w:
        w.write(3, np.ones((2, 4)), ["a", "b"], "chosen", 1)
        w.write(3, np.ones((1, 4)), ["a"], "rejected", 1)
    with ActivationReader(None, uri) as r:
        with pytest.raises(KeyError, match="no activations for layer 4; layers: \\[3\\]"):
            r.load_layer(4)
        with pytest.raises(ValueError, match="1 pair\\(s\\) at layer 3 lack .* 'b'"):
            r.load_pairs(3)


def test_an_empty_writer_needs_a_hidden_size(tmp_path):
    with ActivationWriter(None, str(tmp_path / "e.parquet"), hidden=8, dtype="float16"):
        pass
    with ActivationReader(None, str(tmp_path / "e.parquet")) as r:
        assert r.num_rows == 0 and r.hidden == 8 and r.layers == []
    with pytest.raises(ValueError, match="no hidden size"):
        with ActivationWriter(None, str(tmp_path / "f.parquet")):
            pass
    assert not (tmp_path / "f.parquet").exists()


def test_reader_checks_the_schema(tmp_path):
    uri = str(tmp_path / "p.parquet")
    ArtifactStore.open(tmp_path).write_table(
        uri, pa.table({"prompt_id": ["a"], "prompt": ["b"], "split": ["c"]}), "prompts"
    )
    with pytest.raises(ArtifactSchemaError, match="'pair_id' is missing"):
        ActivationReader(None, uri)


def test_files_written_by_write_table_are_readable_by_layer(tmp_path):
    """Without the writer's layer index, the reader falls back to row-group statistics/data."""
    uri = str(tmp_path / "a.parquet")
    ArtifactStore.open(tmp_path).write_table(
        uri,
        pa.table(
            {
                "pair_id": ["a", "a", "b", "b"],
                "role": ["chosen", "rejected", "chosen", "rejected"],
                "layer": pa.array([1, 1, 2, 2], pa.int32()),
                "token_count": pa.array([1, 1, 1, 1], pa.int32()),
                "values": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], pa.list_(pa.float32(), 2)),
            }
        ),
        "activations",
    )
    with ActivationReader(None, uri) as r:
        assert r.layers == [1, 2]
        np.testing.assert_array_equal(r.load_layer(2).values, [[5.0, 6.0], [7.0, 8.0]])
