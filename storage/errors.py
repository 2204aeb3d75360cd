"""The errors ``storage`` raises, all in sims' family (`sims_core.errors`).

Bad input (a store URL, a damaged or tampered file, a table that does not fit its schema) is a
`UserError`: one sentence naming the file or URL and what was expected. A store that does not
answer is a `TransientError` (worth a retry). `RunLockedError` lives with the lock
(`storage.lock`) and `PromptSourceError` with the prompt readers (`storage.prompt_sources`).
"""

from __future__ import annotations

from sims_core.errors import NotFoundError, TransientError, UserError

__all__ = [
    "ArtifactCorruptError",
    "ArtifactMissingError",
    "ArtifactModifiedError",
    "ArtifactSchemaError",
    "ManifestDamagedError",
    "StoreAccessError",
    "StoreUnavailableError",
    "UnsafeURIError",
    "UnsupportedStoreError",
]


class UnsupportedStoreError(UserError):
    """The store URL names a protocol that is unknown or whose fsspec package is not installed."""


class StoreAccessError(UserError):
    """The store cannot be used as given: a file where a directory should be, no write permission,
    a missing bucket, no credentials."""


class StoreUnavailableError(TransientError):
    """The store did not answer (an unreachable endpoint, a timeout): a later attempt may succeed."""


class ArtifactCorruptError(UserError):
    """A stored file cannot be read as what it should be (a truncated or overwritten Parquet file)."""


class ArtifactMissingError(NotFoundError):
    """An output the manifest records is no longer in the store."""


class ArtifactModifiedError(UserError):
    """An output the manifest records has changed since it was written (its sha256 differs)."""


class ManifestDamagedError(UserError):
    """A run's ``manifest.json`` or a shard's entry file cannot be read (bad JSON or structure)."""


class UnsafeURIError(UserError):
    """A manifest or entry file names a file outside its run's folder (absolute path, ``..``,
    another scheme or bucket): refused, so a tampered manifest cannot read other files."""


class ArtifactSchemaError(UserError):
    """A table does not match its declared schema (missing, wrong or unexpected column)."""

    def __init__(
        self, path: str, column: str, problem: str, expected: str | None = None, schema_name: str | None = None
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
