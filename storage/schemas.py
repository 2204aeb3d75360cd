"""Declared pyarrow schemas of the Parquet artifacts, and their checks.

``SCHEMAS`` maps an artifact name to its schema. Declared columns come first, in order; a
schema whose metadata says ``sims.allow_extra_columns = true`` accepts further columns after
them (``allows_extra_columns(name)``); the others refuse any column they do not declare.

The ``values`` column of ``activations`` is a fixed-size list whose length is the model's
hidden size and whose element type is float16 or float32; the registry holds a placeholder
(``list<float32>``) tagged with ``sims.fixed_size_list`` metadata, and
:func:`activations_schema` builds the concrete schema for a given hidden size and dtype.

Writing *conforms* a table to its schema (:func:`conform_table`): columns are put in declared
order and cast within their kind (int64 -> int32 with overflow checks, large_string ->
string, list<float> -> fixed_size_list); anything else is an :class:`ArtifactSchemaError`.
Reading *checks* the file's schema (:func:`check_schema`). Every error names the file, the
column and the expected type.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sims_core.errors import UserError

__all__ = [
    "ArtifactSchemaError",
    "SCHEMAS",
    "ACTIVATION_DTYPES",
    "ACTIVATION_ROLES",
    "activations_schema",
    "allows_extra_columns",
    "schema_for",
    "describe_type",
    "conform_table",
    "check_schema",
]

_EXTRA = b"sims.allow_extra_columns"
_FSL = b"sims.fixed_size_list"

ACTIVATION_DTYPES: tuple[str, ...] = ("float16", "float32")
ACTIVATION_ROLES: tuple[str, ...] = ("chosen", "rejected")


class ArtifactSchemaError(UserError):
    """A table does not match its declared schema (missing, wrong or unexpected column)."""

    def __init__(
        self,
        path: str,
        column: str,
        problem: str,
        expected: str | None = None,
        schema_name: str | None = None,
    ) -> None:
        self.path = path
        self.column = column
        self.problem = problem
        self.expected = expected
        self.schema_name = schema_name
        msg = f"{path}: column '{column}' {problem}"
        if expected is not None:
            msg += f"; expected {expected}"
        if schema_name is not None:
            msg += f" (artifact schema '{schema_name}')"
        super().__init__(msg)


def _s(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.string(), nullable=nullable)


def _schema(name: str, fields: list[pa.Field], allow_extra: bool) -> pa.Schema:
    return pa.schema(
        fields,
        metadata={b"sims.artifact": name.encode(), _EXTRA: b"true" if allow_extra else b"false"},
    )


_VALUES_PLACEHOLDER = pa.field("values", pa.list_(pa.float32()), nullable=False, metadata={_FSL: b"float16|float32"})

SCHEMAS: dict[str, pa.Schema] = {
    "prompts": _schema("prompts", [_s("prompt_id"), _s("prompt"), _s("split")], allow_extra=True),
    "generations": _schema(
        "generations",
        [
            _s("prompt_id"),
            _s("prompt"),
            pa.field("sample_index", pa.int32(), nullable=False),
            _s("text"),
            pa.field("num_tokens", pa.int32(), nullable=False),
            _s("finish_reason"),
            pa.field("seed", pa.int64(), nullable=False),
        ],
        allow_extra=False,
    ),
    "rankings": _schema(
        "rankings",
        [
            _s("prompt_id"),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("rank", pa.int32(), nullable=False),
            _s("oracle"),
        ],
        allow_extra=True,
    ),
    "buffer": _schema(
        "buffer",
        [
            _s("pair_id"),
            _s("prompt_id"),
            _s("prompt"),
            _s("chosen"),
            _s("rejected"),
            pa.field("margin", pa.float64(), nullable=False),
            pa.field("source_iteration", pa.int32(), nullable=False),
            _s("source"),
        ],
        allow_extra=True,
    ),
    "activations": _schema(
        "activations",
        [
            _s("pair_id"),
            _s("role"),
            pa.field("layer", pa.int32(), nullable=False),
            pa.field("token_count", pa.int32(), nullable=False),
            _VALUES_PLACEHOLDER,
        ],
        allow_extra=False,
    ),
    "eval": _schema(
        "eval",
        [_s("metric"), pa.field("value", pa.float64(), nullable=True)],
        allow_extra=True,
    ),
}


def schema_for(name: str) -> pa.Schema:
    """The declared schema of artifact ``name``; a clear error for an unknown name."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown artifact schema {name!r}; known schemas: {', '.join(sorted(SCHEMAS))}") from None


def allows_extra_columns(name: str) -> bool:
    meta = schema_for(name).metadata or {}
    return meta.get(_EXTRA) == b"true"


def activations_schema(hidden: int, dtype: str = "float32") -> pa.Schema:
    """The concrete ``activations`` schema for a hidden size and value dtype."""
    if dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"activation dtype {dtype!r} is not supported; use one of {ACTIVATION_DTYPES}")
    if not isinstance(hidden, int) or hidden <= 0:
        raise ValueError(f"hidden size must be a positive int, got {hidden!r}")
    base = SCHEMAS["activations"]
    fields = [
        pa.field("values", pa.list_(pa.from_numpy_dtype(dtype), hidden), nullable=False) if f.name == "values" else f
        for f in base
    ]
    return pa.schema(fields, metadata=base.metadata)


def _is_fsl_placeholder(field: pa.Field) -> bool:
    return bool(field.metadata and _FSL in field.metadata)


def describe_type(field: pa.Field) -> str:
    """The expected type of a declared field, as an error message shows it."""
    if _is_fsl_placeholder(field):
        return "fixed_size_list<float16|float32>[hidden]"
    return str(field.type)


def _is_stringish(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_stringish(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _fsl_ok(t: pa.DataType) -> bool:
    return (
        pa.types.is_fixed_size_list(t)
        and t.list_size > 0
        and (pa.types.is_float16(t.value_type) or pa.types.is_float32(t.value_type))
    )


def _cast_column(col: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    """Cast within a type's kind; raises TypeError/ArrowInvalid when not allowed or lossy."""
    src, dst = col.type, field.type
    if _is_fsl_placeholder(field):
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
    if pa.types.is_string(dst) and _is_stringish(src):
        return col.cast(dst)
    if pa.types.is_null(src):  # all-null column: the null check below names it
        return col.cast(dst)
    if pa.types.is_integer(dst) and pa.types.is_integer(src):
        return col.cast(dst, safe=True)
    if pa.types.is_floating(dst) and (pa.types.is_floating(src) or pa.types.is_integer(src)):
        return col.cast(dst, safe=False)
    raise TypeError("different kind of type")


def conform_table(
    data: Any, schema: str | pa.Schema, path: str = "<table>", schema_name: str | None = None
) -> pa.Table:
    """Return ``data`` (a pyarrow Table or pandas DataFrame) conformed to ``schema``.

    ``schema`` is a registry name or a concrete schema (``schema_name`` then names it in
    errors and decides whether extra columns are allowed).
    """
    if isinstance(schema, str):
        schema_name = schema
        declared = schema_for(schema)
    else:
        declared = schema
        schema_name = schema_name or (declared.metadata or {}).get(b"sims.artifact", b"?").decode()
    allow_extra = (declared.metadata or {}).get(_EXTRA) == b"true"
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, list):  # rows as dicts; no rows: an empty table of the declared columns
        if data:
            data = pa.Table.from_pylist(data)
        else:
            data = pa.table({f.name: pa.array([], type=f.type) for f in declared if not _is_fsl_placeholder(f)})
    if not isinstance(data, pa.Table):
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dependency
            pd = None
        if pd is not None and isinstance(data, pd.DataFrame):
            data = pa.Table.from_pandas(data, preserve_index=False)
        else:
            raise TypeError(f"{path}: expected a pyarrow Table or pandas DataFrame, got {type(data)!r}")
    table: pa.Table = data
    names = table.column_names
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ArtifactSchemaError(path, dup, "appears more than once", schema_name=schema_name)
    columns: list[pa.ChunkedArray] = []
    fields: list[pa.Field] = []
    declared_names = set(declared.names)
    for field in declared:
        if field.name not in names:
            raise ArtifactSchemaError(path, field.name, "is missing", describe_type(field), schema_name)
        col = table.column(field.name)
        try:
            cast = _cast_column(col, field)
        except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ArtifactSchemaError(
                path,
                field.name,
                f"has type {col.type} which cannot be stored ({exc})",
                describe_type(field),
                schema_name,
            ) from None
        if not field.nullable and cast.null_count:
            raise ArtifactSchemaError(
                path,
                field.name,
                f"has {cast.null_count} null value(s) but may not be null",
                f"{describe_type(field)} without nulls",
                schema_name,
            )
        columns.append(cast)
        fields.append(pa.field(field.name, cast.type, nullable=field.nullable))
    extras = [n for n in names if n not in declared_names]
    if extras and not allow_extra:
        raise ArtifactSchemaError(
            path,
            extras[0],
            f"is not declared (type {table.column(extras[0]).type}) and this artifact allows no extra columns",
            f"only the columns {declared.names}",
            schema_name,
        )
    for name in extras:
        columns.append(table.column(name))
        fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=declared.metadata))


def check_schema(actual: pa.Schema, schema: str | pa.Schema, path: str, schema_name: str | None = None) -> None:
    """Raise :class:`ArtifactSchemaError` unless ``actual`` (a file's schema) fits ``schema``.

    Declared columns must be present with the declared type (string / large_string /
    dictionary<string> count as string); undeclared columns are refused unless allowed.
    """
    if isinstance(schema, str):
        schema_name = schema
        declared = schema_for(schema)
    else:
        declared = schema
        schema_name = schema_name or (declared.metadata or {}).get(b"sims.artifact", b"?").decode()
    allow_extra = (declared.metadata or {}).get(_EXTRA) == b"true"
    names = actual.names
    for field in declared:
        if field.name not in names:
            raise ArtifactSchemaError(path, field.name, "is missing", describe_type(field), schema_name)
        got = actual.field(field.name).type
        if _is_fsl_placeholder(field):
            ok = _fsl_ok(got)
        elif pa.types.is_string(field.type):
            ok = _is_stringish(got)
        else:
            ok = got.equals(field.type)
        if not ok:
            raise ArtifactSchemaError(path, field.name, f"has type {got}", describe_type(field), schema_name)
    if not allow_extra:
        for name in names:
            if name not in declared.names:
                raise ArtifactSchemaError(
                    path,
                    name,
                    f"is not declared (type {actual.field(name).type}) and this artifact allows no extra columns",
                    f"only the columns {declared.names}",
                    schema_name,
                )
