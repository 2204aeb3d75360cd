"""Activations on disk: one Parquet file per phase (or shard), per-layer row groups, bounded memory.

`ActivationWriter` buffers rows per layer and flushes a row group of one layer whenever a layer's
buffer is full; the file appears under its final URI only when the writer closes without error.
`ActivationReader` reads it row group by row group or one layer at a time, through an index of
the row groups of each layer kept in the file's metadata. Open them with
`ArtifactStore.activation_writer` / `ArtifactStore.activation_reader`; the store's
`activation_layers` and `load_activation_pairs` merge the shards of a phase.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schemas import ACTIVATION_DTYPES, ACTIVATION_ROLES, activations_schema, check_schema
from .store import ArtifactStore, WrittenArtifact, _AtomicSink, parquet_errors

__all__ = ["ActivationBatch", "ActivationReader", "ActivationWriter"]

_LAYER_INDEX_KEY = "sims.layer_row_groups"


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch tensor, without importing torch
        t = values.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(values)


def _fsl_to_numpy(col: pa.ChunkedArray | pa.Array, hidden: int) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    flat = col.flatten()
    return flat.to_numpy(zero_copy_only=False).reshape(len(col), hidden)


@dataclass
class ActivationBatch:
    """Rows of an activations file: ids, roles, token counts and values ``[n, hidden]``."""

    layer: int | None
    pair_ids: list[str]
    roles: list[str]
    token_counts: np.ndarray
    values: np.ndarray
    layers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pair_ids)


class ActivationWriter:
    """Stream per-layer activations into one Parquet file in bounded memory.

    Rows are buffered per layer and flushed as a row group of exactly ``row_group_rows`` rows
    of a single layer whenever a layer's buffer is full (the rest on close), so memory holds
    at most ``layers x row_group_rows x hidden`` values. The file appears under ``uri`` only
    when the writer closes without error (use it as a context manager)::

        with ActivationWriter(store, uri, hidden=576, dtype="float16") as w:
            w.write(layer=12, values=h, pair_ids=ids, roles="chosen", token_counts=n)
    """

    def __init__(
        self,
        store: ArtifactStore | str | None,
        uri: str,
        *,
        hidden: int | None = None,
        dtype: str = "float32",
        row_group_rows: int = 4096,
        compression: str | None = None,
    ) -> None:
        if dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"ActivationWriter dtype {dtype!r} is not supported; use one of {ACTIVATION_DTYPES}")
        if row_group_rows <= 0:
            raise ValueError(f"row_group_rows must be positive, got {row_group_rows}")
        self.store = ArtifactStore.open(store)
        self._path = self.store.path(uri)
        self.uri = self.store._uri(self._path)
        self.dtype = dtype
        self.hidden = hidden
        self.row_group_rows = row_group_rows
        self.compression = compression or "none"
        self._np_dtype = np.dtype(dtype)
        self._buffers: dict[int, list[tuple[list[str], list[str], np.ndarray, np.ndarray]]] = {}
        self._buffered: dict[int, int] = {}
        self._sink: _AtomicSink | None = None
        self._writer: pq.ParquetWriter | None = None
        self._layer_groups: dict[int, list[int]] = {}
        self.rows_written = 0
        self.row_groups_written = 0
        self.result: WrittenArtifact | None = None
        self._closed = False

    # -- public
    def write(
        self,
        layer: int,
        values: Any,
        pair_ids: Sequence[str],
        roles: Sequence[str] | str,
        token_counts: Sequence[int] | np.ndarray | int,
    ) -> None:
        """Buffer ``values [n, hidden]`` (numpy or torch) for ``layer`` with per-row ids."""
        if self._closed:
            raise ValueError(f"ActivationWriter for {self.uri} is closed")
        arr = _to_numpy(values)
        if arr.ndim != 2:
            raise ValueError(f"activations for layer {layer} must be 2-D [n, hidden], got shape {arr.shape}")
        n, hidden = arr.shape
        if self.hidden is None:
            self.hidden = int(hidden)
        elif hidden != self.hidden:
            raise ValueError(f"activations for layer {layer} have hidden size {hidden}, expected {self.hidden}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"activations for layer {layer} must be floating point, got dtype {arr.dtype}")
        ids = [str(x) for x in pair_ids]
        if len(ids) != n:
            raise ValueError(f"layer {layer}: {len(ids)} pair_ids for {n} rows of activations")
        role_list = [roles] * n if isinstance(roles, str) else [str(r) for r in roles]
        if len(role_list) != n:
            raise ValueError(f"layer {layer}: {len(role_list)} roles for {n} rows of activations")
        bad = sorted({r for r in role_list if r not in ACTIVATION_ROLES})
        if bad:
            raise ValueError(f"layer {layer}: role(s) {bad} are not allowed; expected one of {ACTIVATION_ROLES}")
        counts = np.broadcast_to(np.asarray(_to_numpy(token_counts), dtype=np.int64), (n,)).astype(np.int32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"layer {layer}: activations contain NaN or infinite values")
        layer = int(layer)
        # Always copy: the caller may reuse its buffer (or tensor) before the row group is flushed.
        arr = np.array(arr, dtype=self._np_dtype, order="C", copy=True)
        self._buffers.setdefault(layer, []).append((ids, role_list, counts, arr))
        self._buffered[layer] = self._buffered.get(layer, 0) + n
        while self._buffered[layer] >= self.row_group_rows:
            self._flush_layer(layer, self.row_group_rows)

    def close(self) -> WrittenArtifact:
        """Flush what is buffered, finish the file and publish it under its final URI."""
        if self._closed:
            if self.result is None:
                raise ValueError(f"ActivationWriter for {self.uri} was aborted")
            return self.result
        try:
            for layer in sorted(self._buffered):
                if self._buffered[layer]:
                    self._flush_layer(layer, self._buffered[layer])
            if self._writer is None:
                if self.hidden is None:
                    raise ValueError(f"no activations were written to {self.uri} and no hidden size was given")
                self._open()
            assert self._writer is not None and self._sink is not None
            self._writer.add_key_value_metadata(
                {_LAYER_INDEX_KEY: json.dumps({str(k): v for k, v in sorted(self._layer_groups.items())})}
            )
            self._writer.close()
            self.result = self._sink.commit(self.rows_written)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.result

    def abort(self) -> None:
        """Drop everything; no file appears under the final URI."""
        self._closed = True
        self._buffers.clear()
        self._buffered.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._sink is not None:
            self._sink.abort()

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals
    def _open(self) -> None:
        assert self.hidden is not None
        self.schema = activations_schema(self.hidden, self.dtype)
        self._sink = _AtomicSink(self.store, self._path)
        self._writer = pq.ParquetWriter(
            self._sink.file,
            self.schema,
            compression=self.compression,
            use_dictionary=["pair_id", "role"],
            write_statistics=["pair_id", "role", "layer", "token_count"],
        )

    def _flush_layer(self, layer: int, rows: int) -> None:
        if self._writer is None:
            self._open()
        assert self._writer is not None
        chunks = self._buffers[layer]
        ids: list[str] = []
        roles: list[str] = []
        counts: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        need = rows
        while need:
            c_ids, c_roles, c_counts, c_vals = chunks[0]
            take = min(need, len(c_ids))
            ids += c_ids[:take]
            roles += c_roles[:take]
            counts.append(c_counts[:take])
            vals.append(c_vals[:take])
            if take == len(c_ids):
                chunks.pop(0)
            else:
                chunks[0] = (c_ids[take:], c_roles[take:], c_counts[take:], c_vals[take:])
            need -= take
        self._buffered[layer] -= rows
        flat = np.concatenate(vals).reshape(-1)
        values = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.hidden)
        table = pa.Table.from_arrays(
            [
                pa.array(ids, pa.string()),
                pa.array(roles, pa.string()),
                pa.array(np.full(rows, layer, dtype=np.int32)),
                pa.array(np.concatenate(counts)),
                values,
            ],
            schema=self.schema,
        )
        self._writer.write_table(table, row_group_size=rows)
        self._layer_groups.setdefault(layer, []).append(self.row_groups_written)
        self.row_groups_written += 1
        self.rows_written += rows


class ActivationReader:
    """Read an activations file row group by row group, or one layer at a time.

    Use as a context manager (it holds the file open)::

        with ActivationReader(store, uri) as r:
            for batch in r.iter_batches(layer=12):   # one row group per batch
                ...
            h = r.load_layer(12).values               # np.ndarray [n, hidden]
    """

    def __init__(self, store: ArtifactStore | str | None, uri: str) -> None:
        self._stack = contextlib.ExitStack()
        try:
            self._pf, self.uri = self._stack.enter_context(ArtifactStore.open(store)._parquet(uri))
            schema = self._pf.schema_arrow
            check_schema(schema, "activations", self.uri)
        except BaseException:
            self._stack.close()
            raise
        vtype = schema.field("values").type
        self.hidden: int = vtype.list_size
        self.dtype: str = "float16" if pa.types.is_float16(vtype.value_type) else "float32"
        self._layer_groups = self._index()

    def _index(self) -> dict[int, list[int]]:
        meta = self._pf.metadata
        kv = meta.metadata or {}
        raw = kv.get(_LAYER_INDEX_KEY.encode())
        if raw is not None:
            return {int(k): list(v) for k, v in json.loads(raw).items()}
        # Fallback for files written by other tools: row-group statistics, else read the column.
        col = self._pf.schema_arrow.get_field_index("layer")
        out: dict[int, list[int]] = {}
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            if stats is not None and stats.has_min_max and stats.min == stats.max:
                out.setdefault(int(stats.min), []).append(i)
            else:
                for lay in np.unique(self._read(i, columns=["layer"]).column(0).to_numpy()):
                    out.setdefault(int(lay), []).append(i)
        return out

    def _read(self, *groups: int, columns: list[str] | None = None) -> pa.Table:
        with parquet_errors(self.uri):  # a damaged row group is an error naming the file
            return self._pf.read_row_groups(list(groups), columns=columns)

    @property
    def num_rows(self) -> int:
        return self._pf.metadata.num_rows

    @property
    def layers(self) -> list[int]:
        return sorted(self._layer_groups)

    def row_groups_for(self, layer: int) -> list[int]:
        try:
            return list(self._layer_groups[int(layer)])
        except KeyError:
            raise KeyError(f"{self.uri} holds no activations for layer {layer}; layers: {self.layers}") from None

    def _batch(self, table: pa.Table, layer: int | None) -> ActivationBatch:
        layers = table.column("layer").to_numpy()
        if layer is not None:
            mask = layers == layer
            if not mask.all():
                table = table.filter(pa.array(mask))
                layers = layers[mask]
        return ActivationBatch(
            layer=layer,
            pair_ids=table.column("pair_id").to_pylist(),
            roles=table.column("role").to_pylist(),
            token_counts=table.column("token_count").to_numpy(),
            values=_fsl_to_numpy(table.column("values"), self.hidden),
            layers=layers,
        )

    def iter_batches(self, layer: int | None = None) -> Iterator[ActivationBatch]:
        """Yield one batch per row group (of ``layer`` only, when given)."""
        groups = self.row_groups_for(layer) if layer is not None else range(self._pf.metadata.num_row_groups)
        for i in groups:
            yield self._batch(self._read(i), layer)

    def load_layer(self, layer: int, role: str | None = None) -> ActivationBatch:
        """All rows of ``layer`` (optionally of one ``role``) with values ``[n, hidden]``."""
        table = self._read(*self.row_groups_for(layer))
        if role is not None:
            if role not in ACTIVATION_ROLES:
                raise ValueError(f"role {role!r} is not one of {ACTIVATION_ROLES}")
            table = table.filter(pc.equal(table.column("role"), role))
        return self._batch(table, int(layer))

    def load_pairs(self, layer: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(H_chosen, H_rejected, pair_ids)`` of ``layer``, row i of both from pair i.

        A pair with no chosen or no rejected row (or two of either) is an error that names it.
        """
        batch = self.load_layer(layer)
        index: dict[str, dict[str, int]] = {}
        for i, (pid, role) in enumerate(zip(batch.pair_ids, batch.roles)):
            slot = index.setdefault(pid, {})
            if role in slot:
                raise ValueError(f"{self.uri}: pair {pid!r} has two '{role}' rows at layer {layer}")
            slot[role] = i
        incomplete = [p for p, s in index.items() if len(s) != 2]
        if incomplete:
            raise ValueError(
                f"{self.uri}: {len(incomplete)} pair(s) at layer {layer} lack a chosen or rejected row, "
                f"e.g. {incomplete[0]!r}"
            )
        ids = list(index)
        chosen = batch.values[[index[p]["chosen"] for p in ids]]
        rejected = batch.values[[index[p]["rejected"] for p in ids]]
        return chosen, rejected, ids

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> ActivationReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
