"""Where sims artifacts live: store URLs, declared Parquet schemas, atomic writes, the run
manifest and the run lock.

No model code and no Prefect here: every function takes a store (or URL) and URIs, and
everything written is readable with pandas/pyarrow alone. See DESIGN.md section 3.

Quick tour::

    from storage import ArtifactStore, Manifest, RunLock

    store = ArtifactStore.open("./runs")                  # or "s3://bucket/prefix"
    with RunLock(store, "run-1", holder="sims run"):
        m = Manifest.load_or_create(store, "run-1", config=cfg, sims_version="0.1.0")
        fresh, why = m.is_fresh(1, "prompts", config_hash=h, input_hashes={})
        if not fresh:
            m.start(1, "prompts", config_hash=h, input_hashes={})
            out = store.write_table(store.uri("run-1", 1, "prompts"), df, "prompts")
            m.complete(1, "prompts", {"prompts": out})
"""

from .artifacts import (
    ActivationBatch,
    ActivationReader,
    ActivationWriter,
    WrittenArtifact,
    activation_layers,
    atomic_open,
    content_hash,
    delete,
    exists,
    fingerprint,
    load_activation_pairs,
    read_bytes,
    read_frame,
    read_frames,
    read_schema,
    read_table,
    write_bytes,
    write_table,
)
from .fs import DEFAULT_STORE_URL, SUPPORTED_SCHEMES, StoreLocation, UnsupportedStoreError, resolve_store
from .layout import (
    LOCK_NAME,
    MANIFEST_NAME,
    PHASES,
    REPORT_NAME,
    artifact_relpath,
    shard_phase,
    split_shard_phase,
    validate_run_id,
)
from .lock import LockInfo, RunLock, RunLockedError, break_lock, read_lock
from .manifest import Manifest, OutputRecord, PhaseEntry, stable_hash
from .schemas import SCHEMAS, ArtifactSchemaError, activations_schema, allows_extra_columns, schema_for
from .store import ArtifactStore

__all__ = [
    "ActivationBatch",
    "ActivationReader",
    "ActivationWriter",
    "ArtifactSchemaError",
    "ArtifactStore",
    "DEFAULT_STORE_URL",
    "LOCK_NAME",
    "LockInfo",
    "MANIFEST_NAME",
    "Manifest",
    "OutputRecord",
    "PHASES",
    "PhaseEntry",
    "REPORT_NAME",
    "RunLock",
    "RunLockedError",
    "SCHEMAS",
    "SUPPORTED_SCHEMES",
    "StoreLocation",
    "UnsupportedStoreError",
    "WrittenArtifact",
    "activations_schema",
    "allows_extra_columns",
    "artifact_relpath",
    "shard_phase",
    "split_shard_phase",
    "atomic_open",
    "break_lock",
    "content_hash",
    "delete",
    "exists",
    "fingerprint",
    "read_bytes",
    "read_frame",
    "read_frames",
    "load_activation_pairs",
    "activation_layers",
    "read_lock",
    "read_schema",
    "read_table",
    "resolve_store",
    "schema_for",
    "stable_hash",
    "validate_run_id",
    "write_bytes",
    "write_table",
]
