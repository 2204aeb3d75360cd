"""Reading and writing artifacts: Parquet tables, streamed activations, raw bytes.

Every write is atomic for a reader of the final URI:

- locally the bytes go to a hidden temporary file in the same directory
  (``.{name}.tmp-{random}``), are fsynced, and the file is renamed over the final name;
- on S3 (no rename) the bytes are spooled to a local temporary file and uploaded under the
  final key only once complete; an S3 upload (a single PUT or a completed multipart upload) is
  visible whole or not at all. For the pipeline an artifact exists once the manifest entry that
  names it is committed.

A failed write leaves neither a final object nor a temporary file behind.

The first argument of every function, ``store``, is an :class:`~storage.store.ArtifactStore`,
a :class:`~storage.fs.StoreLocation`, a bare fsspec filesystem, or ``None`` (resolve the
filesystem from the URI itself and the AWS environment).

:func:`content_hash` is the sha256 of the stored bytes; it is memoised by the file's
fingerprint (size + mtime + inode locally, size + ETag + version on S3), so calling it again
on an unchanged file costs one ``stat``/``HEAD``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .fs import filesystem_for
from .schemas import (
    ACTIVATION_DTYPES,
    ACTIVATION_ROLES,
    activations_schema,
    check_schema,
    conform_table,
)

__all__ = [
    "WrittenArtifact",
    "ActivationBatch",
    "ActivationWriter",
    "ActivationReader",
    "write_table",
    "read_table",
    "read_frame",
    "read_schema",
    "write_bytes",
    "read_bytes",
    "content_hash",
    "fingerprint",
    "remember_hash",
    "exists",
    "delete",
    "atomic_open",
    "TEMP_MARKER",
]

TEMP_MARKER = ".tmp-"
_HASH_CHUNK = 8 * 2**20
_LAYER_INDEX_KEY = "sims.layer_row_groups"


@dataclass(frozen=True)
class WrittenArtifact:
    """What a write produced: the final URI, the sha256 of its bytes, its size and rows."""

    uri: str
    sha256: str
    size: int
    rows: int | None = None
    fingerprint: str | None = None


# --------------------------------------------------------------------------- helpers


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def _to_uri(fs: fsspec.AbstractFileSystem, path: str, loc: Any) -> str:
    if loc is not None:
        return loc.to_uri(path)
    if _is_local(fs):
        return path
    return f"{_protocol(fs)}://{path}"


def _resolve(store: Any, uri: str) -> tuple[fsspec.AbstractFileSystem, str, str]:
    fs, path, loc = filesystem_for(store, uri)
    return fs, path, _to_uri(fs, path, loc)


class _HashingWriter:
    """A write-only binary file that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        self._sha.update(mv)
        self._raw.write(mv)
        self.size += mv.nbytes
        return mv.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:  # the sink owns the raw file; closing here only marks it done
        self.closed = True

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


class _AtomicSink:
    """A temporary file that becomes ``path`` on :meth:`commit` and vanishes on :meth:`abort`."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.local = _is_local(fs)
        if self.local:
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            self.tmp_path = os.path.join(directory, f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        else:
            fd, self.tmp_path = tempfile.mkstemp(prefix="sims-upload-", suffix=".part")
        self._raw = os.fdopen(fd, "wb")
        self.file = _HashingWriter(self._raw)
        self.done = False

    def commit(self) -> tuple[str, int]:
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        try:
            if self.local:
                os.replace(self.tmp_path, self.path)
                _fsync_dir(os.path.dirname(self.path))
            else:
                self.fs.put_file(self.tmp_path, self.path)
                self.fs.invalidate_cache(self.path)
        finally:
            if os.path.exists(self.tmp_path):
                os.unlink(self.tmp_path)
            self.done = True
        return self.file.sha256, self.file.size

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        with contextlib.suppress(Exception):
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(store: Any, uri: str) -> Iterator[_HashingWriter]:
    """Open ``uri`` for writing; it appears (whole) only if the block exits without error."""
    fs, path, _ = _resolve(store, uri)
    sink = _AtomicSink(fs, path)
    try:
        yield sink.file
    except BaseException:
        sink.abort()
        raise
    sha, size = sink.commit()
    _remember(fs, path, sha)


# ----------------------------------------------------------------- hashing, fingerprints

_memo_lock = threading.Lock()
_memo: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
_MEMO_MAX = 4096


def _fingerprint(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    if _is_local(fs):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") == "directory":
        return None
    etag = info.get("ETag") or info.get("etag") or ""
    version = info.get("VersionId") or ""
    modified = info.get("LastModified") or info.get("mtime") or ""
    return f"{info.get('size')}:{etag}:{version}:{modified}"


def _remember(fs: fsspec.AbstractFileSystem, path: str, sha: str, fp: str | None = None) -> str | None:
    fp = fp or _fingerprint(fs, path)
    if fp is not None:
        with _memo_lock:
            _memo[(_protocol(fs), path)] = (fp, sha)
            _memo.move_to_end((_protocol(fs), path))
            while len(_memo) > _MEMO_MAX:
                _memo.popitem(last=False)
    return fp


def fingerprint(store: Any, uri: str) -> str | None:
    """A cheap identity of the stored object (size/mtime/inode or size/ETag); None if missing."""
    fs, path, _ = _resolve(store, uri)
    return _fingerprint(fs, path)


def remember_hash(store: Any, uri: str, sha256: str, fp: str) -> None:
    """Seed the hash memo: the object whose fingerprint is ``fp`` has hash ``sha256``."""
    fs, path, _ = _resolve(store, uri)
    _remember(fs, path, sha256, fp)


def content_hash(store: Any, uri: str) -> str:
    """The sha256 (hex) of the bytes stored at ``uri``; memoised by the object's fingerprint.

    Raises FileNotFoundError naming the URI when nothing is stored there.
    """
    fs, path, full = _resolve(store, uri)
    fp = _fingerprint(fs, path)
    if fp is None:
        raise FileNotFoundError(f"cannot hash {full}: no such file")
    key = (_protocol(fs), path)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None and hit[0] == fp:
        return hit[1]
    sha = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            sha.update(chunk)
    digest = sha.hexdigest()
    # Only trust the memo if the object did not change while we read it.
    if _fingerprint(fs, path) == fp:
        _remember(fs, path, digest, fp)
    return digest


def exists(store: Any, uri: str) -> bool:
    """Whether a complete object is stored at ``uri`` (never true for a partial write)."""
    fs, path, _ = _resolve(store, uri)
    return _fingerprint(fs, path) is not None


def delete(store: Any, uri: str, missing_ok: bool = True) -> None:
    fs, path, full = _resolve(store, uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise FileNotFoundError(f"cannot delete {full}: no such file") from None
    if not _is_local(fs):
        fs.invalidate_cache(path)


# ------------------------------------------------------------------------- bytes


def write_bytes(store: Any, uri: str, data: bytes | bytearray | memoryview | str) -> WrittenArtifact:
    """Atomically store ``data`` (str is UTF-8 encoded) at ``uri``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fs, path, full = _resolve(store, uri)
    sink = _AtomicSink(fs, path)
    try:
        sink.file.write(data)
    except BaseException:
        sink.abort()
        raise
    sha, size = sink.commit()
    fp = _remember(fs, path, sha)
    return WrittenArtifact(uri=full, sha256=sha, size=size, rows=None, fingerprint=fp)


def read_bytes(store: Any, uri: str) -> bytes:
    fs, path, full = _resolve(store, uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read {full}: no such file") from None


# ------------------------------------------------------------------------- tables


def write_table(
    store: Any,
    uri: str,
    data: Any,
    schema_name: str,
    *,
    compression: str | None = "zstd",
    row_group_rows: int | None = None,
) -> WrittenArtifact:
    """Conform ``data`` (Table or DataFrame) to schema ``schema_name`` and store it atomically.

    Raises :class:`~storage.schemas.ArtifactSchemaError` (naming the URI, the column and the
    expected type) when the data does not fit; nothing is written then.
    """
    fs, path, full = _resolve(store, uri)
    table = conform_table(data, schema_name, path=full)
    sink = _AtomicSink(fs, path)
    try:
        pq.write_table(
            table,
            sink.file,
            compression=compression or "none",
            row_group_size=row_group_rows,
        )
    except BaseException:
        sink.abort()
        raise
    sha, size = sink.commit()
    fp = _remember(fs, path, sha)
    return WrittenArtifact(uri=full, sha256=sha, size=size, rows=table.num_rows, fingerprint=fp)


@contextlib.contextmanager
def _open_parquet(fs: fsspec.AbstractFileSystem, path: str, full: str) -> Iterator[pq.ParquetFile]:
    try:
        if _is_local(fs):
            pf = pq.ParquetFile(path, memory_map=True)
            try:
                yield pf
            finally:
                pf.close()
        else:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                yield pf
    except FileNotFoundError:
        raise FileNotFoundError(f"cannot read {full}: no such file") from None


def read_schema(store: Any, uri: str) -> pa.Schema:
    fs, path, full = _resolve(store, uri)
    with _open_parquet(fs, path, full) as pf:
        return pf.schema_arrow


def read_table(
    store: Any,
    uri: str,
    schema_name: str,
    *,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read the table at ``uri`` after checking its schema against ``schema_name``."""
    fs, path, full = _resolve(store, uri)
    with _open_parquet(fs, path, full) as pf:
        check_schema(pf.schema_arrow, schema_name, full)
        return pf.read(columns=list(columns) if columns is not None else None)


def read_frame(store: Any, uri: str, schema_name: str, *, columns: Sequence[str] | None = None) -> Any:
    """Like :func:`read_table`, as a pandas DataFrame."""
    return read_table(store, uri, schema_name, columns=columns).to_pandas()


# -------------------------------------------------------------------- activations


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
        store: Any,
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
        self._fs, self._path, self.uri = _resolve(store, uri)
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
            sha, size = self._sink.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        fp = _remember(self._fs, self._path, sha)
        self.result = WrittenArtifact(self.uri, sha, size, self.rows_written, fp)
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
        self._sink = _AtomicSink(self._fs, self._path)
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

    def __init__(self, store: Any, uri: str) -> None:
        self._fs, self._path, self.uri = _resolve(store, uri)
        self._stack = contextlib.ExitStack()
        try:
            self._pf: pq.ParquetFile = self._stack.enter_context(_open_parquet(self._fs, self._path, self.uri))
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
                for lay in np.unique(self._pf.read_row_group(i, columns=["layer"]).column(0).to_numpy()):
                    out.setdefault(int(lay), []).append(i)
        return out

    @property
    def num_rows(self) -> int:
        return self._pf.metadata.num_rows

    @property
    def num_row_groups(self) -> int:
        return self._pf.metadata.num_row_groups

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
        groups = self.row_groups_for(layer) if layer is not None else range(self.num_row_groups)
        for i in groups:
            yield self._batch(self._pf.read_row_group(i), layer)

    def load_layer(self, layer: int, role: str | None = None) -> ActivationBatch:
        """All rows of ``layer`` (optionally of one ``role``) with values ``[n, hidden]``."""
        groups = self.row_groups_for(layer)
        table = self._pf.read_row_groups(groups)
        batch = self._batch(table, int(layer))
        if role is not None:
            if role not in ACTIVATION_ROLES:
                raise ValueError(f"role {role!r} is not one of {ACTIVATION_ROLES}")
            keep = np.array([r == role for r in batch.roles], dtype=bool)
            batch = ActivationBatch(
                layer=batch.layer,
                pair_ids=[p for p, k in zip(batch.pair_ids, keep) if k],
                roles=[role] * int(keep.sum()),
                token_counts=batch.token_counts[keep],
                values=batch.values[keep],
                layers=None if batch.layers is None else batch.layers[keep],
            )
        return batch

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


def read_frames(store: Any, uris: Sequence[str], schema_name: str, *, sort_by: Sequence[str] | None = None) -> Any:
    """The rows of several artifacts of one schema (the shards of a phase) as one DataFrame,
    sorted by ``sort_by`` when given so that the result does not depend on how rows were sharded."""
    if not uris:
        raise ValueError(f"no {schema_name} artifacts to read")
    import pandas as pd

    frames = [read_frame(store, uri, schema_name) for uri in uris]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if sort_by:
        frame = frame.sort_values(list(sort_by), kind="stable").reset_index(drop=True)
    return frame


def _pair_order_key(pair_id: str) -> tuple[str, int]:
    """Token-level rows are named ``<pair id>:<k>``: order by pair, then numerically by token."""
    head, sep, tail = pair_id.rpartition(":")
    if sep and tail.isdigit():
        return head, int(tail)
    return pair_id, -1


def activation_layers(store: Any, uris: Sequence[str]) -> list[int]:
    """The layers held by one or more activation artifacts (shards without rows are ignored);
    shards that disagree are an error naming both."""
    found: dict[str, list[int]] = {}
    for uri in uris:
        with ActivationReader(store, uri) as reader:
            if reader.num_rows:
                found[uri] = reader.layers
    items = list(found.items())
    for uri, layers in items[1:]:
        if layers != items[0][1]:
            raise ValueError(
                f"activation shards disagree on layers: {items[0][0]} holds {items[0][1]}, {uri} holds {layers}"
            )
    if not found:
        raise ValueError(f"none of the activation artifacts {list(uris)} holds any rows")
    return next(iter(found.values()))


def load_activation_pairs(store: Any, uris: Sequence[str], layer: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(H_chosen, H_rejected, pair_ids)`` of ``layer`` across one or more activation artifacts
    (the shards of a phase), ordered by pair id (then token index) whatever the sharding.
    A pair present in two shards is an error that names it."""
    chosen_parts, rejected_parts, ids = [], [], []
    owner: dict[str, str] = {}
    for uri in uris:
        with ActivationReader(store, uri) as reader:
            if not reader.num_rows:
                continue
            chosen, rejected, pair_ids = reader.load_pairs(layer)
        for pid in pair_ids:
            if pid in owner:
                raise ValueError(f"pair {pid!r} appears in two activation shards: {owner[pid]} and {uri}")
            owner[pid] = uri
        chosen_parts.append(chosen)
        rejected_parts.append(rejected)
        ids.extend(pair_ids)
    if not ids:
        raise ValueError(f"none of the activation artifacts {list(uris)} holds rows for layer {layer}")
    order = sorted(range(len(ids)), key=lambda i: _pair_order_key(ids[i]))
    chosen_all = np.concatenate(chosen_parts)[order]
    rejected_all = np.concatenate(rejected_parts)[order]
    return chosen_all, rejected_all, [ids[i] for i in order]
