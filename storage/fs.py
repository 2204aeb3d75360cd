"""Resolve a store URL into an fsspec filesystem and a root path.

A *store* is where runs live. It is named by a URL:

- a local directory (the default, ``./runs``), as a plain path or ``file://`` URL;
- ``s3://bucket/prefix`` through s3fs. Endpoint and credentials come from the standard AWS
  variables (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``)
  or from an explicit ``storage_options`` dict (s3fs keyword arguments, e.g.
  ``{"endpoint_url": "http://127.0.0.1:9000", "key": ..., "secret": ...}``), which wins.

Everything else in ``storage`` works on a :class:`StoreLocation` (filesystem + root) and on
*URIs*: absolute local paths, or ``s3://bucket/key`` URLs, so that pandas/pyarrow can open any
URI on their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sims_core.errors import UserError

__all__ = [
    "DEFAULT_STORE_URL",
    "SUPPORTED_SCHEMES",
    "StoreLocation",
    "UnsupportedStoreError",
    "resolve_store",
    "filesystem_for",
]

DEFAULT_STORE_URL = "./runs"
SUPPORTED_SCHEMES: tuple[str, ...] = ("file", "s3")


class UnsupportedStoreError(UserError):
    """The store URL uses a scheme that ``storage`` does not support."""


@dataclass(frozen=True)
class StoreLocation:
    """An fsspec filesystem plus the root path of the store inside it.

    ``root`` is a path in the filesystem's own terms (``/abs/dir`` locally, ``bucket/prefix``
    on S3); ``url`` is the normalised URL (``/abs/dir`` or ``s3://bucket/prefix``).
    """

    fs: fsspec.AbstractFileSystem
    root: str
    protocol: str
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def url(self) -> str:
        return self.to_uri(self.root)

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def join(self, *parts: str) -> str:
        """Join ``parts`` under the root; returns a filesystem path (not a URI)."""
        out = self.root.rstrip("/")
        for part in parts:
            part = str(part).strip("/")
            if part:
                out = f"{out}/{part}" if out else part
        return out

    def to_uri(self, path: str) -> str:
        """A filesystem path as a URI that pandas/pyarrow/fsspec can open on their own."""
        if self.protocol == "file":
            return path
        return f"{self.protocol}://{path}"

    def to_path(self, uri: str) -> str:
        """A URI (or path) as a path in this filesystem; refuses a URI of another scheme."""
        uri = str(uri)
        scheme = _scheme_of(uri)
        if scheme not in ("", self.protocol) and not (scheme == "s3a" and self.protocol == "s3"):
            raise ValueError(
                f"URI {uri!r} does not belong to store {self.url!r} (scheme {scheme!r}, store scheme {self.protocol!r})"
            )
        if self.protocol == "file":
            return _local_path(uri)
        return self.fs._strip_protocol(uri)


def _scheme_of(url: str) -> str:
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return ""


def _local_path(url: str) -> str:
    if url.startswith("file://"):
        url = url[len("file://") :]
    return os.path.abspath(os.path.expanduser(url)).replace(os.sep, "/")


def _s3_options_from_env() -> dict[str, Any]:
    """Endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.

    botocore reads these itself (>= 1.31), but passing the endpoint explicitly makes it work
    with any botocore and shows up in ``repr``. Credentials are left to botocore's own chain.
    """
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def resolve_store(
    url: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StoreLocation:
    """Resolve a store URL (default ``./runs``) into a :class:`StoreLocation`.

    Raises :class:`UnsupportedStoreError` for any scheme other than local paths and ``s3://``.
    """
    url = os.fspath(url) if url is not None else DEFAULT_STORE_URL
    if not url:
        url = DEFAULT_STORE_URL
    scheme = _scheme_of(url)
    options = dict(storage_options or {})
    if scheme in ("", "file", "local"):
        if options:
            raise ValueError(
                f"storage_options {sorted(options)} were given for the local store {url!r}; "
                "they only apply to s3:// stores"
            )
        fs = LocalFileSystem()
        root = _local_path(url.replace("local://", "file://", 1))
        return StoreLocation(fs=fs, root=root.rstrip("/") or "/", protocol="file")
    if scheme in ("s3", "s3a"):
        merged = {**_s3_options_from_env(), **options}
        # Other processes write the manifest and lock: never answer from a stale listing.
        merged.setdefault("use_listings_cache", False)
        fs = fsspec.filesystem("s3", **merged)
        root = fs._strip_protocol(url).rstrip("/")
        if not root:
            raise ValueError(f"store URL {url!r} names no bucket; expected s3://bucket[/prefix]")
        return StoreLocation(fs=fs, root=root, protocol="s3", storage_options=merged)
    raise UnsupportedStoreError(
        f"unsupported store URL {url!r} (scheme {scheme!r}); supported: a local directory "
        f"path, file://path, or s3://bucket/prefix"
    )


def filesystem_for(
    target: Any, uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str, StoreLocation | None]:
    """The filesystem and in-filesystem path for ``uri``.

    ``target`` may be a store (anything with a ``location`` or ``fs`` + ``to_path``), a
    :class:`StoreLocation`, a bare fsspec filesystem, or ``None`` (resolve from the URI itself,
    with ``storage_options`` / the AWS environment for s3).
    """
    uri = os.fspath(uri)
    loc = getattr(target, "location", None)
    if isinstance(loc, StoreLocation):
        target = loc
    if isinstance(target, StoreLocation):
        return target.fs, target.to_path(uri), target
    if isinstance(target, fsspec.AbstractFileSystem):
        if isinstance(target, LocalFileSystem):
            return target, _local_path(uri), None
        return target, target._strip_protocol(uri), None
    if target is None:
        scheme = _scheme_of(uri)
        if scheme in ("", "file", "local"):
            loc = resolve_store(os.path.dirname(_local_path(uri)) or "/")
        else:
            loc = resolve_store(uri, storage_options)
        return loc.fs, loc.to_path(uri), loc
    raise TypeError(f"expected an ArtifactStore, StoreLocation, fsspec filesystem or None, got {type(target)!r}")
