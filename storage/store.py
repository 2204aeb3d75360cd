"""``ArtifactStore``: one object tying the store URL, the layout and the I/O helpers together.

::

    store = ArtifactStore.open("s3://bucket/sims")          # or a local dir, default ./runs
    uri = store.uri("run-1", 2, "buffer")                   # s3://bucket/sims/run-1/iter=2/buffer.parquet
    store.write_table(uri, df, "buffer")
    df = store.read_frame(uri, "buffer")
    with store.lock("run-1", holder="sims run"):
        manifest = store.manifest("run-1")

URIs handed out are absolute (a local path or ``s3://...``), so they can travel between
Prefect tasks as plain strings and be opened by pandas with ``store.storage_options``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import artifacts as _a
from .fs import StoreLocation, resolve_store
from .layout import (
    LOCK_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    artifact_relpath,
    validate_run_id,
)

if TYPE_CHECKING:
    from .lock import RunLock
    from .manifest import Manifest

__all__ = ["ArtifactStore"]


@dataclass(frozen=True)
class ArtifactStore:
    """A store of runs at one URL (local directory or ``s3://bucket/prefix``)."""

    location: StoreLocation

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | ArtifactStore | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> ArtifactStore:
        """Open the store at ``url`` (default ``./runs``); an ArtifactStore is returned as is."""
        if isinstance(url, ArtifactStore):
            return url
        return cls(resolve_store(url, storage_options))

    # ------------------------------------------------------------ identity
    @property
    def url(self) -> str:
        return self.location.url

    @property
    def fs(self) -> Any:
        return self.location.fs

    @property
    def root(self) -> str:
        return self.location.root

    @property
    def protocol(self) -> str:
        return self.location.protocol

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options to pass to pandas/pyarrow/fsspec to open this store's URIs directly."""
        return dict(self.location.storage_options)

    def __str__(self) -> str:
        return self.url

    # ------------------------------------------------------------ layout
    def run_uri(self, run_id: str, *parts: str) -> str:
        """URI of the run directory, or of ``parts`` inside it (e.g. ``'report.md'``)."""
        validate_run_id(run_id)
        for p in parts:
            if ".." in str(p).split("/"):
                raise ValueError(f"path part {p!r} may not contain '..'")
        return self.location.to_uri(self.location.join(run_id, *parts))

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
        """``uri`` relative to the run directory, or None if it lies outside it."""
        base = self.location.join(validate_run_id(run_id)) + "/"
        path = self.location.to_path(uri) if _same_scheme(self, uri) else None
        if path is not None and path.startswith(base):
            return path[len(base) :]
        return None

    def resolve(self, run_id: str, uri_or_relpath: str) -> str:
        """Inverse of :meth:`relative_to_run`: absolute URIs pass through unchanged."""
        s = str(uri_or_relpath)
        if "://" in s or s.startswith("/"):
            return s
        return self.run_uri(run_id, s)

    # ------------------------------------------------------------ listing
    def exists(self, uri: str) -> bool:
        return _a.exists(self, uri)

    def delete(self, uri: str, missing_ok: bool = True) -> None:
        _a.delete(self, uri, missing_ok=missing_ok)

    def list_runs(self) -> list[str]:
        """Run ids in this store (directories holding a manifest), sorted."""
        fs, root = self.fs, self.root
        try:
            if self.location.is_local:
                names = [n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))]
            else:
                names = [
                    e["name"].rstrip("/").rsplit("/", 1)[-1]
                    for e in fs.ls(root, detail=True, refresh=True)
                    if e.get("type") == "directory"
                ]
        except FileNotFoundError:
            return []
        runs = []
        for n in sorted(set(names)):
            try:
                validate_run_id(n)
            except ValueError:
                continue
            if self.exists(self.manifest_uri(n)):
                runs.append(n)
        return runs

    # ------------------------------------------------------------ I/O
    def write_table(self, uri: str, data: Any, schema_name: str, **kwargs: Any) -> _a.WrittenArtifact:
        return _a.write_table(self, uri, data, schema_name, **kwargs)

    def read_table(self, uri: str, schema_name: str, *, columns: Sequence[str] | None = None) -> pa.Table:
        return _a.read_table(self, uri, schema_name, columns=columns)

    def read_frame(self, uri: str, schema_name: str, *, columns: Sequence[str] | None = None) -> Any:
        return _a.read_frame(self, uri, schema_name, columns=columns)

    def read_frames(self, uris: Sequence[str], schema_name: str, *, sort_by: Sequence[str] | None = None) -> Any:
        return _a.read_frames(self, uris, schema_name, sort_by=sort_by)

    def activation_layers(self, uris: Sequence[str]) -> list[int]:
        return _a.activation_layers(self, uris)

    def load_activation_pairs(self, uris: Sequence[str], layer: int) -> tuple[Any, Any, list[str]]:
        return _a.load_activation_pairs(self, uris, layer)

    def write_bytes(self, uri: str, data: bytes | str) -> _a.WrittenArtifact:
        return _a.write_bytes(self, uri, data)

    def read_bytes(self, uri: str) -> bytes:
        return _a.read_bytes(self, uri)

    def content_hash(self, uri: str) -> str:
        return _a.content_hash(self, uri)

    def activation_writer(self, uri: str, **kwargs: Any) -> _a.ActivationWriter:
        return _a.ActivationWriter(self, uri, **kwargs)

    def activation_reader(self, uri: str) -> _a.ActivationReader:
        return _a.ActivationReader(self, uri)

    # ------------------------------------------------------------ run-level objects
    def manifest(self, run_id: str) -> Manifest:
        """The run's manifest (FileNotFoundError if the run has none yet)."""
        from .manifest import Manifest

        return Manifest.load(self, run_id)

    def lock(self, run_id: str, holder: str, **kwargs: Any) -> RunLock:
        from .lock import RunLock

        return RunLock(self, run_id, holder, **kwargs)


def _same_scheme(store: ArtifactStore, uri: str) -> bool:
    s = str(uri)
    if "://" not in s:
        return store.location.is_local
    scheme = s.split("://", 1)[0].lower()
    return scheme == store.protocol or (scheme == "file" and store.location.is_local)
