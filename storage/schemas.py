"""Declared pyarrow schemas of the Parquet artifacts, and their checks.

``SCHEMAS`` maps an artifact name to its schema; it is the one place that lists an artifact's
columns: tasks hand rows (dicts) to `ArtifactStore.write_table`, which puts them in declared order.
Declared columns come first, in order; a schema whose metadata says
``sims.allow_extra_columns = true`` accepts further columns after them (`allows_extra_columns`);
the others refuse any column they do not declare. A field tagged ``sims.optional`` may be absent
(files written before it existed, or data that has none): reading fills it with nulls. A field tagged
``sims.values`` only takes the listed values.

The ``values`` column of ``activations`` is a fixed-size list whose length is the model's hidden
size and whose element type is float16 or float32; the registry holds a placeholder tagged with
``sims.fixed_size_list``, and `activations_schema` builds the concrete schema for a hidden size.

Writing *conforms* a table to its schema (`conform_table`): columns are put in declared order and
cast within their kind (int64 -> int32 with overflow checks, large_string -> string,
list<float> -> fixed_size_list); anything else is an `ArtifactSchemaError`. Reading *checks* the
file's schema (`check_schema`). Every error names the file, the column and the expected type.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import ArtifactSchemaError

__all__ = [
    "ACTIVATION_DTYPES",
    "ACTIVATION_ROLES",
    "SCHEMAS",
    "activations_schema",
    "allows_extra_columns",
    "check_schema",
    "conform_table",
    "fill_optional",
    "schema_for",
]

_EXTRA, _FSL, _OPTIONAL, _VALUES = (
    b"sims.allow_extra_columns",
    b"sims.fixed_size_list",
    b"sims.optional",
    b"sims.values",
)
ACTIVATION_DTYPES: tuple[str, ...] = ("float16", "float32")
ACTIVATION_ROLES: tuple[str, ...] = ("chosen", "rejected")


def _f(name: str, kind: pa.DataType = pa.string(), null: bool = False, optional: bool = False, values=()) -> pa.Field:
    meta = {_OPTIONAL: b"true"} if optional else {}
    if values:
        meta[_VALUES] = "|".join(values).encode()
    return pa.field(name, kind, nullable=null or optional, metadata=meta or None)


def _schema(name: str, fields: list[pa.Field], allow_extra: bool) -> pa.Schema:
    return pa.schema(fields, metadata={b"sims.artifact": name.encode(), _EXTRA: b"true" if allow_extra else b"false"})


_GENERATED = [
    _f("prompt_id"),
    _f("prompt"),
    _f("sample_index", pa.int32()),
    _f("text"),
    _f("num_tokens", pa.int32()),
    _f("finish_reason"),
    _f("seed", pa.int64()),
]
_VALUES_PLACEHOLDER = pa.field("values", pa.list_(pa.float32()), nullable=False, metadata={_FSL: b"float16|float32"})

SCHEMAS: dict[str, pa.Schema] = {
    "prompts": _schema(
        "prompts",
        [_f("prompt_id"), _f("prompt"), _f("split"), _f("category", optional=True), _f("reference", optional=True)],
        allow_extra=True,
    ),
    "generations": _schema("generations", _GENERATED, allow_extra=False),
    "rankings": _schema(
        "rankings",
        [
            _f("prompt_id"),
            _f("sample_index", pa.int32()),
            _f("score", pa.float64()),
            _f("rank", pa.int32()),
            _f("oracle"),
        ],
        allow_extra=True,
    ),
    "buffer": _schema(
        "buffer",
        [
            *(_f(n) for n in ("pair_id", "prompt_id", "prompt", "chosen", "rejected")),
            _f("margin", pa.float64()),
            _f("source_iteration", pa.int32()),
            _f("source"),
            _f("chosen_score", pa.float64(), null=True),  # None for pairs made without an oracle
            _f("rejected_score", pa.float64(), null=True),
        ],
        allow_extra=True,
    ),
    "activations": _schema(
        "activations",
        [_f("pair_id"), _f("role"), _f("layer", pa.int32()), _f("token_count", pa.int32()), _VALUES_PLACEHOLDER],
        allow_extra=False,
    ),
    # One row per strength candidate tried on the validation prompts (row 0: unsteered).
    "selection": _schema(
        "selection",
        [
            _f("layers"),  # "15,18" ("" for the unsteered row)
            _f("alpha", pa.float64()),
            _f("score", pa.float64(), optional=True),  # the oracle's mean on validation prompts (absent before 0.2)
            _f("nll", pa.float64(), null=True),  # mean NLL per token under the unsteered model
            _f("fluent", pa.bool_()),
            _f("chosen", pa.bool_()),
        ],
        allow_extra=True,
    ),
    "eval": _schema("eval", [_f("metric"), _f("value", pa.float64(), null=True)], allow_extra=True),
    # The base model's answers to the held-out prompts, sampled once per run: the baseline every
    # iteration's eval compares with, and the best-of-N candidates (with the oracle's choice).
    "baseline": _schema("baseline", [*_GENERATED, _f("kind", values=("baseline", "candidate"))], allow_extra=True),
}


def schema_for(name: str) -> pa.Schema:
    """The declared schema of artifact ``name``; a clear error for an unknown name."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown artifact schema {name!r}; known schemas: {', '.join(sorted(SCHEMAS))}") from None


def allows_extra_columns(name: str) -> bool:
    return (schema_for(name).metadata or {}).get(_EXTRA) == b"true"


def activations_schema(hidden: int, dtype: str = "float32") -> pa.Schema:
    """The concrete ``activations`` schema for a hidden size and value dtype."""
    if dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"activation dtype {dtype!r} is not supported; use one of {ACTIVATION_DTYPES}")
    if not isinstance(hidden, int) or hidden <= 0:
        raise ValueError(f"hidden size must be a positive int, got {hidden!r}")
    base = SCHEMAS["activations"]
    values = pa.field("values", pa.list_(pa.from_numpy_dtype(dtype), hidden), nullable=False)
    return pa.schema([values if f.name == "values" else f for f in base], metadata=base.metadata)


def _meta(field: pa.Field, key: bytes) -> bytes | None:
    return (field.metadata or {}).get(key)


def _describe(field: pa.Field) -> str:
    """The expected type of a declared field, as an error message shows it."""
    return "fixed_size_list<float16|float32>[hidden]" if _meta(field, _FSL) else str(field.type)


def _is_stringish(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_stringish(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _fsl_ok(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and t.list_size > 0 and t.value_type in (pa.float16(), pa.float32())


def _cast_column(col: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    """Cast within a type's kind; raises TypeError/ArrowInvalid when not allowed or lossy."""
    src, dst = col.type, field.type
    if _meta(field, _FSL):
        if _fsl_ok(src):
            return col
        if (pa.types.is_list(src) or pa.types.is_large_list(src) or pa.types.is_fixed_size_list(src)) and (
            pa.types.is_floating(src.value_type)
        ):
            lengths = pc.unique(pc.list_value_length(col)).to_pylist()
            if len(lengths) != 1 or lengths[0] in (None, 0):
                raise TypeError(f"lists of unequal or zero length {sorted(x for x in lengths if x is not None)}")
            vt = src.value_type if pa.types.is_float16(src.value_type) else pa.float32()
            return col.cast(pa.list_(vt, lengths[0]))
        raise TypeError("not a list of floats")
    if src.equals(dst):
        return col
    if (pa.types.is_string(dst) and _is_stringish(src)) or pa.types.is_null(src):  # all-null: checked below
        return col.cast(dst)
    if pa.types.is_integer(dst) and pa.types.is_integer(src):
        return col.cast(dst, safe=True)
    if pa.types.is_floating(dst) and (pa.types.is_floating(src) or pa.types.is_integer(src)):
        return col.cast(dst, safe=False)
    raise TypeError("different kind of type")


def _from_rows(rows: list[dict[str, Any]], declared: pa.Schema, path: str, schema_name: str) -> pa.Table:
    """A table of ``rows`` (dicts): declared columns first; with no rows, every declared column, empty."""
    columns: dict[str, pa.Array] = {}
    for name in dict.fromkeys([*declared.names, *(k for row in rows for k in row)]):
        if rows and all(name not in row for row in rows):
            continue  # a declared column no row has: the checks name it
        try:
            columns[name] = pa.array([row.get(name) for row in rows]) if rows else pa.nulls(0)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ArtifactSchemaError(
                path, name, f"has values that cannot be stored ({exc})", None, schema_name
            ) from None
    return pa.table(columns)


def fill_optional(table: pa.Table, schema_name: str) -> pa.Table:
    """``table`` with each optional declared column it lacks added (all null) at its declared place."""
    for i, field in enumerate(schema_for(schema_name)):
        if _meta(field, _OPTIONAL) and field.name not in table.column_names:
            table = table.add_column(min(i, table.num_columns), field, pa.nulls(table.num_rows, field.type))
    return table


def conform_table(data: Any, schema_name: str, path: str = "<table>") -> pa.Table:
    """Return ``data`` (a list of row dicts, a pyarrow Table/RecordBatch or a pandas DataFrame)
    conformed to the declared schema ``schema_name``."""
    declared, allow_extra = schema_for(schema_name), allows_extra_columns(schema_name)
    if isinstance(data, list):
        data = _from_rows(data, declared, path, schema_name)
    elif isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif not isinstance(data, pa.Table):
        import pandas as pd

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"{path}: expected a list of row dicts, a pyarrow Table or a DataFrame, got {type(data)!r}")
        data = pa.Table.from_pandas(data, preserve_index=False)
    table: pa.Table = data
    names = table.column_names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ArtifactSchemaError(path, dup, "appears more than once", schema_name=schema_name)
    columns, fields = [], []
    for field in declared:
        if field.name not in names:
            if _meta(field, _OPTIONAL):  # left out of the file; readers see it as nulls
                continue
            raise ArtifactSchemaError(path, field.name, "is missing", _describe(field), schema_name)
        col = table.column(field.name)
        try:
            cast = _cast_column(col, field)
        except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problem = f"has type {col.type} which cannot be stored ({exc})"
            raise ArtifactSchemaError(path, field.name, problem, _describe(field), schema_name) from None
        if not field.nullable and cast.null_count:
            problem = f"has {cast.null_count} null value(s) but may not be null"
            raise ArtifactSchemaError(path, field.name, problem, f"{_describe(field)} without nulls", schema_name)
        allowed = _meta(field, _VALUES)
        values = allowed.decode().split("|") if allowed else None
        bad = sorted(set(pc.unique(cast).to_pylist()) - set(values) - {None}) if values is not None else []
        if bad:
            expected = f"one of {values}"
            raise ArtifactSchemaError(path, field.name, f"has value(s) {bad[:3]}", expected, schema_name)
        columns.append(cast)
        fields.append(pa.field(field.name, cast.type, nullable=field.nullable))
    extras = [n for n in names if n not in declared.names]
    if extras and not allow_extra:
        problem = f"is not declared (type {table.column(extras[0]).type}) and this artifact allows no extra columns"
        raise ArtifactSchemaError(path, extras[0], problem, f"only the columns {declared.names}", schema_name)
    columns += [table.column(n) for n in extras]
    fields += [table.schema.field(n) for n in extras]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=declared.metadata))


def check_schema(actual: pa.Schema, schema_name: str, path: str) -> None:
    """Raise `ArtifactSchemaError` unless ``actual`` (a file's schema) fits the declared schema ``schema_name``.

    Declared columns must be present (optional ones may be absent) with the declared type
    (string / large_string / dictionary<string> count as string); undeclared columns are
    refused unless allowed."""
    declared, allow_extra = schema_for(schema_name), allows_extra_columns(schema_name)
    for field in declared:
        if field.name not in actual.names:
            if _meta(field, _OPTIONAL):
                continue
            raise ArtifactSchemaError(path, field.name, "is missing", _describe(field), schema_name)
        got = actual.field(field.name).type
        if _meta(field, _FSL):
            ok = _fsl_ok(got)
        else:
            ok = _is_stringish(got) if pa.types.is_string(field.type) else got.equals(field.type)
        if not ok:
            raise ArtifactSchemaError(path, field.name, f"has type {got}", _describe(field), schema_name)
    extra = next((n for n in actual.names if n not in declared.names), None)
    if extra is not None and not allow_extra:
        problem = f"is not declared (type {actual.field(extra).type}) and this artifact allows no extra columns"
        raise ArtifactSchemaError(path, extra, problem, f"only the columns {declared.names}", schema_name)
