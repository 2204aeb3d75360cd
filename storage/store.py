"""`ArtifactStore`: where runs live, and every read and write of their files.

A store is named by a URL, resolved by `fsspec.core.url_to_fs`:

- a local directory (the default, ``./runs``), as a plain path or ``file://`` URL;
- ``s3://bucket/prefix`` through s3fs. The endpoint comes from ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL`` and credentials from botocore's chain, unless ``storage_options`` (s3fs
  keyword arguments, e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``) say otherwise;
  listings are never cached (other processes write the manifest and the lock);
- any other fsspec protocol whose package is installed (``gs://`` with gcsfs, ``az://`` with
  adlfs, ``memory://``); an unknown or uninstalled one is an `UnsupportedStoreError`.

::

    store = ArtifactStore.open("s3://bucket/sims")          # or a local dir, default ./runs
    store.check(writable=True)                              # preflight: one sentence if unusable
    uri = store.uri("run-1", 2, "buffer")                   # s3://bucket/sims/run-1/iter=2/buffer.parquet
    store.write_table(uri, rows, "buffer")                  # row dicts, a DataFrame or an Arrow table
    frame = store.read_frame(uri, "buffer")

URIs handed out are absolute (a local path or ``s3://...``), so they travel between Prefect tasks
as plain strings and open in pandas with ``storage_options=store.storage_options``.

Every write is atomic for a reader of the final URI: locally the bytes go to a hidden temporary
file beside it (``.{name}.tmp-{random}``), are fsynced and renamed over the final name; elsewhere
(no rename) they are spooled to a local ``sims-upload-*.part`` file and uploaded whole under the
final key. A failed write leaves neither a final object nor a temporary file; a killed one may
leave a temporary, which `sweep` deletes at the next run start.

`content_hash` is the sha256 of the stored bytes, memoised by the file's fingerprint (size + mtime
+ inode locally, size + ETag + version elsewhere): hashing an unchanged file again costs one
``stat``/``HEAD``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sims_core.errors import NotFoundError, UserError

from .errors import (
    ArtifactCorruptError,
    StoreAccessError,
    StoreUnavailableError,
    UnsafeURIError,
    UnsupportedStoreError,
)
from .layout import LOCK_NAME, MANIFEST_NAME, REPORT_NAME, artifact_relpath, validate_run_id
from .schemas import check_schema, conform_table, fill_optional

if TYPE_CHECKING:
    from .activations import ActivationReader, ActivationWriter
    from .lock import RunLock

__all__ = ["DEFAULT_STORE_URL", "ArtifactStore", "WrittenArtifact"]

DEFAULT_STORE_URL = "./runs"
TEMP_MARKER = ".tmp-"
UPLOAD_PREFIX = "sims-upload-"
CHECK_TIMEOUT_S = 2.0
_HASH_CHUNK = 8 * 2**20
_MEMO_MAX = 4096
_memo_lock = threading.Lock()
_memo: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()  # (protocol, path) -> (fingerprint, sha256)


@dataclass(frozen=True)
class WrittenArtifact:
    """What a write produced: the final URI, the sha256 of its bytes, its size and rows."""

    uri: str
    sha256: str
    size: int
    rows: int | None = None
    fingerprint: str | None = None


class _HashingWriter:
    """A write-only binary file that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw, self._sha, self.size, self.closed = raw, hashlib.sha256(), 0, False

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


class _AtomicSink:
    """A temporary file that becomes ``path`` on `commit` and vanishes on `abort`."""

    def __init__(self, store: ArtifactStore, path: str) -> None:
        self.store, self.path, self.done = store, path, False
        if store.is_local:
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            self.tmp_path = os.path.join(directory, f".{name}{TEMP_MARKER}{uuid.uuid4().hex[:12]}")
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        else:
            fd, self.tmp_path = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=".part")
        self._raw = os.fdopen(fd, "wb")
        self.file = _HashingWriter(self._raw)

    def commit(self, rows: int | None = None) -> WrittenArtifact:
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        try:
            if self.store.is_local:
                os.replace(self.tmp_path, self.path)
                _fsync_dir(os.path.dirname(self.path))
            else:
                self.store.fs.put_file(self.tmp_path, self.path)
                self.store.fs.invalidate_cache(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)
            self.done = True
        sha = self.file._sha.hexdigest()
        fp = self.store._remember(self.path, sha)
        return WrittenArtifact(self.store._uri(self.path), sha, self.file.size, rows, fp)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(Exception):
                self._raw.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def parquet_errors(uri: str) -> Iterator[None]:
    """A missing file is a `NotFoundError`, an unreadable one an `ArtifactCorruptError`, each naming it."""
    try:
        yield
    except FileNotFoundError:
        raise NotFoundError(f"cannot read {uri}: no such file") from None
    except (pa.ArrowException, OSError) as exc:
        raise ArtifactCorruptError(
            f"{uri} is not a readable Parquet file ({exc}); it was truncated or overwritten: delete it "
            "so that its phase is computed again"
        ) from None


@dataclass(frozen=True)
class ArtifactStore:
    """A store of runs at one URL: its fsspec filesystem, root path (``/abs/dir`` locally,
    ``bucket/prefix`` on S3) and the options that open its URIs elsewhere (pandas, pyarrow)."""

    fs: fsspec.AbstractFileSystem
    root: str
    protocol: str
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def open(
        cls, url: str | os.PathLike[str] | ArtifactStore | None = None, storage_options: dict[str, Any] | None = None
    ) -> ArtifactStore:
        """Open the store at ``url`` (default ``./runs``); an ArtifactStore is returned as is.
        Opening does no I/O: `check` tells whether the store answers and can be written."""
        if isinstance(url, ArtifactStore):
            return url
        url = os.fspath(url) if url else DEFAULT_STORE_URL
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        options = dict(storage_options or {})
        if scheme in ("", "file", "local") and options:
            raise UserError(
                f"storage_options {sorted(options)} were given for the local store {url!r}; they only apply "
                "to s3:// and other remote stores"
            )
        if scheme in ("s3", "s3a"):
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            options = {"endpoint_url": endpoint, **options} if endpoint else options
            options.setdefault("use_listings_cache", False)
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except OSError as exc:  # a filesystem that connects when it is created (ftp, sftp, ...)
            raise StoreUnavailableError(f"store URL {url!r} cannot be opened: {exc}") from None
        except (ImportError, ValueError) as exc:
            why = f"needs a package that is not installed ({exc})" if isinstance(exc, ImportError) else "is unknown"
            raise UnsupportedStoreError(
                f"store URL {url!r}: protocol {scheme!r} {why}; supported: a local directory path, file://path, "
                "s3://bucket/prefix, or another fsspec protocol whose package is installed (gs:// with gcsfs, "
                "az:// with adlfs)"
            ) from None
        root = root.rstrip("/") or fs.root_marker or "/"
        if not isinstance(fs, LocalFileSystem) and not root.strip("/"):
            raise UnsupportedStoreError(f"store URL {url!r} names no bucket; expected {scheme}://bucket[/prefix]")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return cls(fs, root, "file" if isinstance(fs, LocalFileSystem) else protocol, options)

    # ------------------------------------------------------------ identity and layout
    @property
    def url(self) -> str:
        return self._uri(self.root)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def __str__(self) -> str:
        return self.url

    def _scheme_ok(self, uri: str) -> bool:
        """Whether ``uri`` has no scheme or one of this store's filesystem."""
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        return not scheme or scheme in ((self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol)

    def _uri(self, path: str) -> str:
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def path(self, uri: str | os.PathLike[str]) -> str:
        """A URI (or path) as a path in this store's filesystem; a URI of another scheme is refused."""
        uri = os.fspath(uri)
        if not self._scheme_ok(uri):
            raise UserError(f"URI {uri!r} does not belong to store {self.url!r} (another scheme)")
        return self.fs._strip_protocol(uri)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in map(str, parts) if p.strip("/"))])

    def run_uri(self, run_id: str, *parts: str) -> str:
        """URI of the run directory, or of ``parts`` inside it (e.g. ``'report.md'``)."""
        validate_run_id(run_id)
        for p in parts:
            if ".." in str(p).split("/"):
                raise UserError(f"path part {p!r} may not contain '..'")
        return self._uri(self._join(run_id, *parts))

    def uri(self, run_id: str, iteration: int, phase: str, ext: str | None = None) -> str:
        """URI of a phase's artifact: ``{root}/{run_id}/iter={t}/{phase}.{ext}``."""
        return self.run_uri(run_id, artifact_relpath(iteration, phase, ext))

    def manifest_uri(self, run_id: str) -> str:
        return self.run_uri(run_id, MANIFEST_NAME)

    def lock_uri(self, run_id: str) -> str:
        return self.run_uri(run_id, LOCK_NAME)

    def report_uri(self, run_id: str, name: str = REPORT_NAME) -> str:
        return self.run_uri(run_id, name)

    def relative_to_run(self, run_id: str, uri: str) -> str | None:
        """``uri`` (absolute, or relative to the run directory) as a path relative to the run
        directory; None when it lies outside it (another scheme or bucket, an absolute path
        elsewhere, a ``..`` or empty part)."""
        rel = str(uri)
        if "://" in rel or rel.startswith("/"):
            if not self._scheme_ok(rel) or ("://" not in rel and not self.is_local):
                return None
            base, path = self._join(validate_run_id(run_id)) + "/", self.path(rel)
            if not path.startswith(base):
                return None
            rel = path[len(base) :]
        parts = rel.split("/")
        return None if "\\" in rel or any(p in ("", ".", "..") for p in parts) else rel

    def inside_run(self, run_id: str, uri: str, *, source: str | None = None) -> str:
        """``uri`` (relative to the run directory, or absolute inside it) relative to the run
        directory; anything outside the run is an `UnsafeURIError` naming ``source`` (the file it
        came from)."""
        rel = self.relative_to_run(run_id, uri)
        if rel is None:
            raise UnsafeURIError(
                f"{source or 'the manifest'} names {str(uri)!r}, which lies outside the run folder "
                f"{self.run_uri(run_id)}; a run's records may only name files inside it (was the file edited?)"
            )
        return rel

    def resolve(self, run_id: str, uri: str, *, source: str | None = None) -> str:
        """The absolute URI of ``uri`` (`inside_run`'s checks)."""
        return self.run_uri(run_id, self.inside_run(run_id, uri, source=source))

    # ------------------------------------------------------------ files, fingerprints, hashes
    def fingerprint(self, uri: str) -> str | None:
        """A cheap identity of the stored object (size/mtime/inode or size/ETag); None if missing."""
        path = self.path(uri)
        if self.is_local:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        try:
            self.fs.invalidate_cache(path)
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or ""
        modified = next((info[k] for k in ("LastModified", "mtime", "last_modified", "created") if info.get(k)), "")
        return f"{info.get('size')}:{etag}:{info.get('VersionId') or ''}:{modified}"

    def _remember(self, path: str, sha: str, fp: str | None = None) -> str | None:
        fp = fp or self.fingerprint(path)
        if fp is not None:
            with _memo_lock:
                _memo[(self.protocol, path)] = (fp, sha)
                _memo.move_to_end((self.protocol, path))
                while len(_memo) > _MEMO_MAX:
                    _memo.popitem(last=False)
        return fp

    def exists(self, uri: str) -> bool:
        """Whether a complete object is stored at ``uri`` (never true for a partial write)."""
        return self.fingerprint(uri) is not None

    def content_hash(self, uri: str, *, known: tuple[str, str] | None = None) -> str:
        """The sha256 (hex) of the bytes stored at ``uri``, memoised by the object's fingerprint;
        ``known=(fingerprint, sha256)`` (a manifest's record) is trusted while the fingerprint
        matches. A `NotFoundError` names the URI when nothing is stored there."""
        path = self.path(uri)
        fp = self.fingerprint(path)
        if fp is None:
            raise NotFoundError(f"cannot hash {self._uri(path)}: no such file")
        if known is not None and known[0] == fp:
            self._remember(path, known[1], fp)
            return known[1]
        with _memo_lock:
            hit = _memo.get((self.protocol, path))
        if hit is not None and hit[0] == fp:
            return hit[1]
        sha = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                sha.update(chunk)
        if self.fingerprint(path) == fp:  # only memoise what did not change while it was read
            self._remember(path, sha.hexdigest(), fp)
        return sha.hexdigest()

    def delete(self, uri: str) -> None:
        """Delete the object at ``uri``, if there is one."""
        path = self.path(uri)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        self.fs.invalidate_cache(path)

    def list_runs(self) -> list[str]:
        """Run ids in this store (directories holding a manifest), sorted."""
        try:
            self.fs.invalidate_cache(self.root)
            entries = self.fs.ls(self.root, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = sorted({e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"})
        runs = []
        for name in names:
            with contextlib.suppress(ValueError):
                if self.exists(self.manifest_uri(name)):
                    runs.append(name)
        return runs

    def require_run(self, run_id: str, *, manifest: bool = True) -> None:
        """A `NotFoundError` listing the runs here when ``run_id`` has no manifest in this store
        (``manifest=False``: no folder at all, for a run whose manifest may be lost)."""
        if manifest:
            there = self.exists(self.manifest_uri(run_id))
        else:
            there = self.fs.exists(self._join(validate_run_id(run_id)))
        if not there:
            runs = ", ".join(self.list_runs()) or "none"
            raise NotFoundError(f"run {run_id!r} is not in {self.url}; runs there: {runs}")

    # ------------------------------------------------------------ bytes and tables
    @contextlib.contextmanager
    def _atomic(self, uri: str) -> Iterator[_AtomicSink]:
        sink = _AtomicSink(self, self.path(uri))
        try:
            yield sink
        except BaseException:
            sink.abort()
            raise

    def write_bytes(self, uri: str, data: bytes | bytearray | memoryview | str) -> WrittenArtifact:
        """Atomically store ``data`` (str is UTF-8 encoded) at ``uri``."""
        with self._atomic(uri) as sink:
            sink.file.write(data.encode("utf-8") if isinstance(data, str) else data)
            return sink.commit()

    def read_bytes(self, uri: str) -> bytes:
        path = self.path(uri)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise NotFoundError(f"cannot read {self._uri(path)}: no such file") from None

    def write_table(self, uri: str, data: Any, schema_name: str) -> WrittenArtifact:
        """Conform ``data`` (a list of row dicts, a DataFrame or an Arrow table) to schema
        ``schema_name`` (declared columns in declared order) and store it atomically.

        An `ArtifactSchemaError` names the URI, the column and the expected type when the data
        does not fit; nothing is written then."""
        table = conform_table(data, schema_name, path=self._uri(self.path(uri)))
        with self._atomic(uri) as sink:
            pq.write_table(table, sink.file, compression="zstd")
            return sink.commit(table.num_rows)

    @contextlib.contextmanager
    def _parquet(self, uri: str) -> Iterator[tuple[pq.ParquetFile, str]]:
        path = self.path(uri)
        full = self._uri(path)
        with parquet_errors(full), contextlib.ExitStack() as stack:
            source = path if self.is_local else stack.enter_context(self.fs.open(path, "rb"))
            pf = pq.ParquetFile(source, memory_map=self.is_local)
            stack.callback(pf.close)
            yield pf, full

    def read_table(self, uri: str, schema_name: str, *, columns: Sequence[str] | None = None) -> pa.Table:
        """The table at ``uri`` after checking its schema against ``schema_name`` (optional columns
        it lacks are added, all null); a damaged file is an `ArtifactCorruptError` naming it."""
        with self._parquet(uri) as (pf, full):
            check_schema(pf.schema_arrow, schema_name, full)
            present = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
            table = fill_optional(pf.read(columns=present), schema_name)
        return table if columns is None else table.select([c for c in columns if c in table.column_names])

    def read_frame(self, uri: str, schema_name: str, *, columns: Sequence[str] | None = None) -> Any:
        """Like `read_table`, as a pandas DataFrame."""
        return self.read_table(uri, schema_name, columns=columns).to_pandas()

    def read_frames(self, uris: Sequence[str], schema_name: str, *, sort_by: Sequence[str] | None = None) -> Any:
        """The rows of several artifacts of one schema (the shards of a phase) as one DataFrame,
        sorted by ``sort_by`` when given, so that the result does not depend on the sharding."""
        if not uris:
            raise ValueError(f"no {schema_name} artifacts to read")
        import pandas as pd

        frames = [self.read_frame(uri, schema_name) for uri in uris]
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return frame.sort_values(list(sort_by), kind="stable").reset_index(drop=True) if sort_by else frame

    # ------------------------------------------------------------ activations
    def activation_writer(self, uri: str, **kwargs: Any) -> ActivationWriter:
        """An `ActivationWriter` streaming per-layer row groups to ``uri`` (see storage.activations)."""
        from .activations import ActivationWriter

        return ActivationWriter(self, uri, **kwargs)

    def activation_reader(self, uri: str) -> ActivationReader:
        from .activations import ActivationReader

        return ActivationReader(self, uri)

    def activation_layers(self, uris: Sequence[str]) -> list[int]:
        """The layers held by one or more activation artifacts (shards without rows are ignored);
        shards that disagree are an error naming both."""
        found: dict[str, list[int]] = {}
        for uri in uris:
            with self.activation_reader(uri) as reader:
                if reader.num_rows:
                    found[uri] = reader.layers
        if not found:
            raise ValueError(f"none of the activation artifacts {list(uris)} holds any rows")
        (first, layers), *rest = found.items()
        for uri, other in rest:
            if other != layers:
                raise ValueError(f"activation shards disagree on layers: {first} holds {layers}, {uri} holds {other}")
        return layers

    def load_activation_pairs(self, uris: Sequence[str], layer: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(H_chosen, H_rejected, pair_ids)`` of ``layer`` across one or more activation artifacts
        (the shards of a phase), ordered by pair id, then numerically by token index (rows are
        named ``<pair id>:<k>``), whatever the sharding. A pair in two shards is an error naming it."""
        chosen_parts: list[np.ndarray] = []
        rejected_parts: list[np.ndarray] = []
        owner: dict[str, str] = {}  # pair id: the shard that holds it, in reading order
        for uri in uris:
            with self.activation_reader(uri) as reader:
                if not reader.num_rows:
                    continue
                chosen, rejected, pair_ids = reader.load_pairs(layer)
            for pid in pair_ids:
                if pid in owner:
                    raise ValueError(f"pair {pid!r} appears in two activation shards: {owner[pid]} and {uri}")
                owner[pid] = uri
            chosen_parts.append(chosen)
            rejected_parts.append(rejected)
        ids = list(owner)
        if not ids:
            raise ValueError(f"none of the activation artifacts {list(uris)} holds rows for layer {layer}")

        def key(i: int) -> tuple[str, int]:
            head, sep, tail = ids[i].rpartition(":")
            return (head, int(tail)) if sep and tail.isdigit() else (ids[i], -1)

        order = sorted(range(len(ids)), key=key)
        return np.concatenate(chosen_parts)[order], np.concatenate(rejected_parts)[order], [ids[i] for i in order]

    # ------------------------------------------------------------ run-level objects and upkeep
    def lock(self, run_id: str, holder: str, **kwargs: Any) -> RunLock:
        from .lock import RunLock

        return RunLock(self, run_id, holder, **kwargs)

    def sweep(self, run_id: str, *, upload_age_s: float = 3600.0) -> list[str]:
        """Delete what killed writers left behind and return what was deleted: temporaries in the
        run folder (``.{name}.tmp-*``, ``run.lock.stale-*``) and this machine's upload spool files
        (``sims-upload-*.part`` in the temp dir) older than ``upload_age_s``. Call it at run start
        while holding the run lock, when no other writer of the run is at work."""
        removed = []
        run_dir = self._join(validate_run_id(run_id))
        self.fs.invalidate_cache(run_dir)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for path in self.fs.find(run_dir):
                name = path.rsplit("/", 1)[-1]
                if (name.startswith(".") and TEMP_MARKER in name) or name.startswith(f"{LOCK_NAME}.stale-"):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(path)
                        removed.append(self._uri(path))
        cutoff = time.time() - upload_age_s
        for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{UPLOAD_PREFIX}*.part")):
            with contextlib.suppress(OSError):
                if os.path.getmtime(path) < cutoff:
                    os.unlink(path)
                    removed.append(path)
        return removed

    def check(self, *, writable: bool = False) -> None:
        """Preflight, fast: raise unless the store can be read (and written, with ``writable``).

        A local path that is a file, or not writable, and a missing bucket or denied access are a
        `StoreAccessError`; a remote store that does not answer within about `CHECK_TIMEOUT_S`
        seconds (one attempt, no retries) is a `StoreUnavailableError` naming the endpoint. Each
        is one sentence naming the store."""
        probe = f"{self.root}/.sims-check{TEMP_MARKER}{uuid.uuid4().hex[:12]}"
        if self.is_local:
            existing = self.root
            while not os.path.exists(existing):
                existing = os.path.dirname(existing)
            if not os.path.isdir(existing):
                raise StoreAccessError(f"store {self.url} cannot be used: {existing} is a file, not a directory")
            if writable:
                try:
                    os.makedirs(self.root, exist_ok=True)
                    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                    os.unlink(probe)
                except OSError as exc:
                    raise StoreAccessError(f"store {self.url} is not writable ({exc.strerror or exc})") from None
            return
        fs, endpoint = self.fs, self.storage_options.get("endpoint_url") or "the default endpoint"
        if self.protocol == "s3":  # a separate client: one attempt, short timeouts
            options = dict(self.storage_options)
            config = {
                **options.pop("config_kwargs", {}),
                "connect_timeout": CHECK_TIMEOUT_S,
                "read_timeout": 2 * CHECK_TIMEOUT_S,
                "retries": {"max_attempts": 1, "mode": "standard"},
            }
            fs = fsspec.filesystem("s3", **options, config_kwargs=config, skip_instance_cache=True)
            fs.retries = 1
        bucket = self.root.strip("/").split("/", 1)[0]
        try:
            if writable:
                fs.pipe_file(probe, b"")
                fs.rm_file(probe)
            else:
                fs.info(bucket) if self.protocol == "s3" else fs.exists(self.root)
        except FileNotFoundError:
            raise StoreAccessError(f"store {self.url} cannot be used: bucket {bucket!r} does not exist") from None
        except PermissionError as exc:
            what = "written" if writable else "read"
            raise StoreAccessError(f"store {self.url} cannot be {what} with these credentials ({exc})") from None
        except Exception as exc:
            if "credential" in f"{type(exc).__name__} {exc}".lower():
                raise StoreAccessError(f"store {self.url} cannot be used: no credentials found ({exc})") from None
            raise StoreUnavailableError(
                f"store {self.url} did not answer: endpoint {endpoint} is unreachable or timed out "
                f"({type(exc).__name__}, one attempt with a {CHECK_TIMEOUT_S:g} s connect timeout)"
            ) from None
