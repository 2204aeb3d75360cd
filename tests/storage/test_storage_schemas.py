"""Declared schemas: every artifact round-trips; wrong, missing or extra columns are named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import SCHEMAS, ArtifactSchemaError, ArtifactStore, allows_extra_columns
from storage.schemas import activations_schema, conform_table


def raw_write(store, uri: str, table: pa.Table) -> None:
    """Write a Parquet file bypassing storage (as another tool would)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    path = store.path(uri)
    store.fs.makedirs(store.fs._parent(path), exist_ok=True)
    store.fs.pipe_file(path, buf.getvalue().to_pybytes())


def sample(name: str) -> pd.DataFrame:
    """A small, valid DataFrame for each artifact, with pandas' default dtypes (int64, str)."""
    if name == "prompts":
        return pd.DataFrame({"prompt_id": ["p0", "p1"], "prompt": ["Hi?", "Why?"], "split": ["train", "eval"]})
    if name == "generations":
        return pd.DataFrame(
            {
                "prompt_id": ["p0", "p0", "p1"],
                "prompt": ["Hi?", "Hi?", "Why?"],
                "sample_index": [0, 1, 0],
                "text": ["Hello", "Hey there", "Because"],
                "num_tokens": [2, 3, 1],
                "finish_reason": ["stop", "length", "stop"],
                "seed": [2**40 + 1, 2**40 + 2, 7],
            }
        )
    if name == "rankings":
        return pd.DataFrame(
            {
                "prompt_id": ["p0", "p0"],
                "sample_index": [0, 1],
                "score": [0.25, -1.5],
                "rank": [0, 1],
                "oracle": ["reward_model", "reward_model"],
            }
        )
    if name == "buffer":
        return pd.DataFrame(
            {
                "pair_id": ["1-p0-0"],
                "prompt_id": ["p0"],
                "prompt": ["Hi?"],
                "chosen": ["Hello"],
                "rejected": ["Go away"],
                "margin": [1.75],
                "source_iteration": [1],
                "source": ["ranking"],
                "chosen_score": [0.5],
                "rejected_score": [-1.25],
            }
        )
    if name == "activations":
        return pd.DataFrame(
            {
                "pair_id": ["a", "a"],
                "role": ["chosen", "rejected"],
                "layer": [3, 3],
                "token_count": [5, 7],
                "values": [np.array([0.5, 1.0, -2.0], dtype=np.float32), np.array([1.5, 0.0, 4.0], dtype=np.float32)],
            }
        )
    if name == "eval":
        return pd.DataFrame({"metric": ["win_rate", "mean_reward"], "value": [0.625, -0.1], "iteration": [1, 1]})
    if name == "selection":
        return pd.DataFrame(
            {
                "layers": ["", "15,18"],
                "alpha": [0.0, 4.0],
                "score": [0.31, 0.35],
                "nll": [2.5, 2.75],
                "fluent": [True, True],
                "chosen": [False, True],
                "metric": ["val_score", "val_score"],
            }
        )
    if name == "baseline":
        return sample("generations").assign(kind=["baseline", "candidate", "baseline"], temperature=0.7)
    raise KeyError(name)


def test_every_declared_schema_has_a_sample():
    assert set(SCHEMAS) == {
        "prompts",
        "generations",
        "rankings",
        "buffer",
        "activations",
        "selection",
        "eval",
        "baseline",
    }


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_round_trip_of_every_schema(store, name):
    df = sample(name)
    uri = store.uri("r1", 1, name)
    written = store.write_table(uri, df, name)
    assert written.rows == len(df)
    assert written.uri == uri
    table = store.read_table(uri, name)
    # Declared columns carry the declared types, in declared order.
    for field in SCHEMAS[name]:
        got = table.schema.field(field.name).type
        if name == "activations" and field.name == "values":
            assert got == pa.list_(pa.float32(), 3)
        else:
            assert got == field.type, field.name
    assert table.column_names[: len(SCHEMAS[name])] == SCHEMAS[name].names
    back = table.to_pandas()
    for col in df.columns:
        expected = df[col].tolist()
        got = back[col].tolist()
        if col == "values":
            assert [list(v) for v in got] == [list(v) for v in expected]
        else:
            assert got == expected, col


def test_integer_columns_are_stored_with_the_declared_width(tmp_path):
    uri = str(tmp_path / "g.parquet")
    ArtifactStore.open(tmp_path).write_table(uri, sample("generations"), "generations")
    schema = pq.read_schema(uri)
    assert schema.field("sample_index").type == pa.int32()
    assert schema.field("seed").type == pa.int64()
    assert pq.read_table(uri).column("seed").to_pylist()[0] == 2**40 + 1


def test_missing_column_on_write_names_file_column_and_type_and_writes_nothing(store):
    uri = store.uri("r1", 1, "rankings")
    df = sample("rankings").drop(columns=["score"])
    with pytest.raises(ArtifactSchemaError) as err:
        store.write_table(uri, df, "rankings")
    msg = str(err.value)
    assert uri in msg and "'score'" in msg and "is missing" in msg and "double" in msg
    assert err.value.column == "score"
    assert not store.exists(uri)


def test_wrong_type_on_write_names_the_column(tmp_path):
    df = sample("generations")
    df["num_tokens"] = ["two", "three", "one"]
    uri = str(tmp_path / "g.parquet")
    with pytest.raises(ArtifactSchemaError) as err:
        ArtifactStore.open(tmp_path).write_table(uri, df, "generations")
    msg = str(err.value)
    assert uri in msg and "'num_tokens'" in msg and "expected int32" in msg


def test_integer_overflow_is_refused_not_wrapped(tmp_path):
    df = sample("generations")
    df.loc[0, "num_tokens"] = 2**40
    with pytest.raises(ArtifactSchemaError, match="'num_tokens'"):
        ArtifactStore.open(tmp_path).write_table(str(tmp_path / "g.parquet"), df, "generations")


def test_nulls_in_a_required_column_are_refused(tmp_path):
    df = pd.concat([sample("buffer")] * 3, ignore_index=True)
    df["chosen"] = ["ok", None, "fine"]
    with pytest.raises(ArtifactSchemaError, match="'chosen' has 1 null"):
        ArtifactStore.open(tmp_path).write_table(str(tmp_path / "b.parquet"), df, "buffer")
    df["chosen"] = [None, None, None]
    with pytest.raises(ArtifactSchemaError, match="'chosen' has 3 null"):
        ArtifactStore.open(tmp_path).write_table(str(tmp_path / "b.parquet"), df.astype({"chosen": object}), "buffer")


def test_wrong_column_type_in_a_stored_file_is_named_on_read(store):
    uri = store.uri("r1", 1, "rankings")
    table = conform_table(sample("rankings"), "rankings")
    i = table.schema.get_field_index("rank")
    table = table.set_column(i, "rank", pa.array(["0", "1"]))  # rank stored as text by some other tool
    raw_write(store, uri, table)
    with pytest.raises(ArtifactSchemaError) as err:
        store.read_table(uri, "rankings")
    msg = str(err.value)
    assert uri in msg and "'rank'" in msg and "expected int32" in msg and "has type" in msg


def test_missing_column_in_a_stored_file_is_named_on_read(store):
    uri = store.uri("r1", 1, "buffer")
    table = conform_table(sample("buffer"), "buffer").drop_columns(["margin"])
    raw_write(store, uri, table)
    with pytest.raises(ArtifactSchemaError) as err:
        store.read_table(uri, "buffer")
    assert err.value.path == uri
    assert err.value.column == "margin"
    assert "expected double" in str(err.value)


def test_extra_columns_are_kept_where_declared_and_refused_elsewhere(tmp_path):
    assert allows_extra_columns("rankings") and allows_extra_columns("eval")
    assert not allows_extra_columns("generations") and not allows_extra_columns("activations")

    ranks = sample("rankings").assign(judge_reason=["short", "rude"])
    uri = str(tmp_path / "r.parquet")
    ArtifactStore.open(tmp_path).write_table(uri, ranks, "rankings")
    assert ArtifactStore.open(tmp_path).read_table(uri, "rankings").column("judge_reason").to_pylist() == [
        "short",
        "rude",
    ]

    gens = sample("generations").assign(temperature=0.7)
    with pytest.raises(ArtifactSchemaError, match="'temperature' is not declared"):
        ArtifactStore.open(tmp_path).write_table(str(tmp_path / "g.parquet"), gens, "generations")
    # A file written by another tool with an undeclared column is refused on read too.
    other = str(tmp_path / "g2.parquet")
    table = conform_table(sample("generations"), "generations").append_column("temperature", pa.array([0.7] * 3))
    pq.write_table(table, other)
    with pytest.raises(ArtifactSchemaError, match="'temperature'"):
        ArtifactStore.open(tmp_path).read_table(other, "generations")


def test_large_string_columns_written_by_pandas_are_accepted_on_read(tmp_path):
    uri = str(tmp_path / "p.parquet")
    table = pa.Table.from_pandas(sample("prompts"), preserve_index=False)
    assert table.schema.field("prompt").type == pa.large_string()
    pq.write_table(table, uri)
    assert ArtifactStore.open(tmp_path).read_table(uri, "prompts").column("prompt").to_pylist() == ["Hi?", "Why?"]


def test_activation_values_must_be_equal_length_float_lists():
    df = sample("activations")
    df["values"] = [np.zeros(3, np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ArtifactSchemaError, match="'values'.*unequal"):
        conform_table(df, "activations", path="x.parquet")


def test_activations_schema_builds_the_fixed_size_list():
    s = activations_schema(64, "float16")
    assert s.field("values").type == pa.list_(pa.float16(), 64)
    with pytest.raises(ValueError, match="bfloat16"):
        activations_schema(64, "bfloat16")


def test_unknown_schema_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="known schemas: activations, baseline, buffer"):
        ArtifactStore.open(tmp_path).write_table(str(tmp_path / "x.parquet"), sample("prompts"), "prompt")


def test_rows_are_written_in_declared_order_with_extras_after(tmp_path):
    store = ArtifactStore.open(tmp_path)
    rows = [
        {"oracle": "o", "judge_reason": "short", "rank": 1, "score": 0.5, "sample_index": 1, "prompt_id": "p"},
        {"prompt_id": "p", "sample_index": 0, "score": 2, "rank": 0, "oracle": "o", "judge_reason": None},
    ]
    uri = str(tmp_path / "r.parquet")
    assert store.write_table(uri, rows, "rankings").rows == 2
    table = pq.read_table(uri)
    assert table.column_names == ["prompt_id", "sample_index", "score", "rank", "oracle", "judge_reason"]
    assert table.schema.field("sample_index").type == pa.int32() and table.schema.field("score").type == pa.float64()
    assert table.column("score").to_pylist() == [0.5, 2.0] and table.column("judge_reason").to_pylist() == [
        "short",
        None,
    ]


def test_no_rows_give_an_empty_table_with_every_declared_column(tmp_path):
    store = ArtifactStore.open(tmp_path)
    uri = str(tmp_path / "g.parquet")
    assert store.write_table(uri, [], "generations").rows == 0
    schema = pq.read_schema(uri)
    assert schema.names == SCHEMAS["generations"].names
    assert [schema.field(n).type for n in schema.names] == [f.type for f in SCHEMAS["generations"]]


def test_rows_with_a_missing_or_unstorable_value_name_the_column(tmp_path):
    store = ArtifactStore.open(tmp_path)
    row = sample("generations").iloc[0].to_dict()
    with pytest.raises(ArtifactSchemaError, match="'seed' is missing; expected int64"):
        store.write_table(str(tmp_path / "g.parquet"), [{k: v for k, v in row.items() if k != "seed"}], "generations")
    with pytest.raises(ArtifactSchemaError, match="'num_tokens' has values that cannot be stored"):
        store.write_table(str(tmp_path / "g.parquet"), [row, {**row, "num_tokens": "many"}], "generations")
    with pytest.raises(ArtifactSchemaError, match="'text' has 1 null value"):
        store.write_table(str(tmp_path / "g.parquet"), [row, {**row, "text": None}], "generations")


def test_optional_columns_may_be_absent_and_read_as_nulls(tmp_path):
    store = ArtifactStore.open(tmp_path)
    uri = str(tmp_path / "p.parquet")
    store.write_table(uri, [{"prompt_id": "a", "prompt": "Hi?", "split": "train"}], "prompts")
    assert pq.read_schema(uri).names == ["prompt_id", "prompt", "split"]  # nothing invented on disk
    table = store.read_table(uri, "prompts")
    assert table.column_names == ["prompt_id", "prompt", "split", "category", "reference"]
    assert table.column("reference").to_pylist() == [None] and table.schema.field("reference").type == pa.string()
    assert store.read_table(uri, "prompts", columns=["prompt", "reference"]).column_names == ["prompt", "reference"]
    rows = [{"reference": "Hello.", "prompt_id": "a", "prompt": "Hi?", "split": "eval", "category": None}]
    store.write_table(uri, rows, "prompts")
    assert pq.read_schema(uri).names == ["prompt_id", "prompt", "split", "category", "reference"]
    with pytest.raises(ArtifactSchemaError, match="'reference' has type int64 which cannot be stored"):
        store.write_table(uri, [{**rows[0], "reference": 5}], "prompts")


def test_buffer_rows_need_their_scores(tmp_path):
    store = ArtifactStore.open(tmp_path)
    pairs = sample("buffer").drop(columns=["rejected_score"])
    with pytest.raises(ArtifactSchemaError, match="'rejected_score' is missing; expected double"):
        store.write_table(str(tmp_path / "b.parquet"), pairs, "buffer")
    no_oracle = sample("buffer").assign(chosen_score=[None], rejected_score=[None])  # pairs made without scores
    uri = store.write_table(str(tmp_path / "b.parquet"), no_oracle, "buffer").uri
    assert store.read_frame(uri, "buffer")["chosen_score"].isna().all()


def test_baseline_kind_takes_only_baseline_or_candidate(tmp_path):
    store = ArtifactStore.open(tmp_path)
    rows = sample("baseline").assign(kind=["baseline", "steered", "candidate"])
    with pytest.raises(ArtifactSchemaError) as err:
        store.write_table(str(tmp_path / "b.parquet"), rows, "baseline")
    assert str(err.value) == (
        f"{tmp_path / 'b.parquet'}: column 'kind' has value(s) ['steered']; expected one of ['baseline', "
        "'candidate'] (artifact schema 'baseline')"
    )


def test_selection_written_before_score_was_declared_is_still_readable(tmp_path):
    store = ArtifactStore.open(tmp_path)
    uri = str(tmp_path / "s.parquet")
    old = sample("selection").drop(columns=["score"]).assign(value=[0.31, 0.35])  # as fit wrote it into 'eval'
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), uri)
    frame = store.read_frame(uri, "selection")
    assert frame["score"].isna().all() and frame["value"].tolist() == [0.31, 0.35]
    assert frame["chosen"].tolist() == [False, True]
