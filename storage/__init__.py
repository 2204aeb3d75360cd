"""Where sims artifacts live: store URLs, declared Parquet schemas, atomic writes, the run
manifest, the run lock and prompt sources.

No model code and no Prefect here: everything goes through an `ArtifactStore` (any fsspec URL;
local ``./runs`` by default) and URIs, and everything written is readable with pandas/pyarrow
alone. The read side verifies what it reads: manifests may only name files inside their run,
recorded outputs are checked against their sha256, damaged files are errors that name them.

Quick tour::

    from storage import ArtifactStore, Manifest

    store = ArtifactStore.open("./runs")                  # or "s3://bucket/prefix"
    store.check(writable=True)                            # preflight
    with store.lock("run-1", holder="sims run"):
        store.sweep("run-1")                              # temporaries of a killed writer
        m = Manifest.load_or_create(store, "run-1", config=cfg, sims_version="0.1.0")
        fresh, why = m.is_fresh(1, "prompts", config_hash=h, input_hashes={})
        if not fresh:
            m.start(1, "prompts", config_hash=h, input_hashes={})
            out = store.write_table(store.uri("run-1", 1, "prompts"), rows, "prompts")
            m.complete(1, "prompts", {"prompts": out})
        frame = m.read_frame(1, "prompts", "prompts")     # verified against its recorded sha256
"""

from .activations import ActivationReader, ActivationWriter
from .errors import (
    ArtifactCorruptError,
    ArtifactMissingError,
    ArtifactModifiedError,
    ArtifactSchemaError,
    ManifestDamagedError,
    StoreAccessError,
    StoreUnavailableError,
    UnsafeURIError,
    UnsupportedStoreError,
)
from .layout import shard_phase, split_shard_phase, validate_run_id
from .lock import RunLock, RunLockedError
from .manifest import Manifest, PhaseEntry
from .prompt_sources import PromptSourceError, PromptTable, load_prompt_table
from .schemas import SCHEMAS, allows_extra_columns
from .store import ArtifactStore, WrittenArtifact

__all__ = [
    "ActivationReader",
    "ActivationWriter",
    "ArtifactCorruptError",
    "ArtifactMissingError",
    "ArtifactModifiedError",
    "ArtifactSchemaError",
    "ArtifactStore",
    "Manifest",
    "ManifestDamagedError",
    "PhaseEntry",
    "PromptSourceError",
    "PromptTable",
    "RunLock",
    "RunLockedError",
    "SCHEMAS",
    "StoreAccessError",
    "StoreUnavailableError",
    "UnsafeURIError",
    "UnsupportedStoreError",
    "WrittenArtifact",
    "allows_extra_columns",
    "load_prompt_table",
    "shard_phase",
    "split_shard_phase",
    "validate_run_id",
]
