"""The run manifest: what each phase of each iteration produced, from what, and when.

``{store}/{run_id}/manifest.json`` (written atomically) holds run-level metadata (config
dict, created_at, sims version) and one entry per (iteration, phase) with its status
(``running`` | ``completed`` | ``failed``), config hash, input hashes, outputs (URI relative
to the run directory when inside it, sha256, size, rows, fingerprint), row count, timestamps,
duration and error message.

:meth:`Manifest.is_fresh` decides whether a phase can be skipped on resume and, if not, says
exactly why. Every change re-reads the file, applies itself and writes the file back under a
per-process lock; across processes the run lock (``storage.lock``) keeps a single writer.

The entries of shards (``generations_shard_002_of_004``: see `storage.layout.shard_phase`) are
written by workers in other processes or on other hosts, concurrently: each lives in its own
file ``{run_id}/iter={t}/{phase}.entry.json`` (the same JSON as an entry of manifest.json), which
only that shard writes, so no update is lost on a local disk or on S3. `Manifest.load` merges them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import artifacts as _a
from .layout import phase_sort_key, split_shard_phase, validate_phase, validate_run_id
from .store import ArtifactStore

__all__ = [
    "STATUSES",
    "MANIFEST_FORMAT",
    "OutputRecord",
    "PhaseEntry",
    "Manifest",
    "stable_hash",
    "utc_now",
]

STATUSES: tuple[str, ...] = ("running", "completed", "failed")
MANIFEST_FORMAT = 1
_SHORT = 12


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _parse_time(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "model_dump"):  # pydantic
        return obj.model_dump()
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    raise TypeError(f"cannot hash/serialise a value of type {type(obj).__name__}")


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys): a config hash stable across runs."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _short(h: str | None) -> str:
    return "none" if h is None else h[:_SHORT]


@dataclass
class OutputRecord:
    """One output of a phase. ``uri`` is relative to the run directory when inside it."""

    uri: str
    sha256: str | None = None
    size: int | None = None
    rows: int | None = None
    fingerprint: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputRecord:
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


@dataclass
class PhaseEntry:
    """The manifest's record of one (iteration, phase)."""

    iteration: int
    phase: str
    status: str
    config_hash: str | None = None
    input_hashes: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, OutputRecord] = field(default_factory=dict)
    rows: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    error: str | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["outputs"] = {k: dataclasses.asdict(v) for k, v in self.outputs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseEntry:
        kw = {f.name: d.get(f.name) for f in dataclasses.fields(cls) if f.name in d}
        kw["outputs"] = {k: OutputRecord.from_dict(v) for k, v in (d.get("outputs") or {}).items()}
        kw["input_hashes"] = dict(d.get("input_hashes") or {})
        return cls(**kw)


def _is_shard(phase: str) -> bool:
    return split_shard_phase(phase)[2] > 1


def _check_key(iteration: int, phase: str) -> None:
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
    validate_phase(phase)


_locks_guard = threading.Lock()
_locks: dict[str, threading.RLock] = {}


def _lock_for(uri: str) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(uri, threading.RLock())


class Manifest:
    """The manifest of one run. Create with :meth:`load` or :meth:`load_or_create`."""

    def __init__(
        self,
        store: ArtifactStore | str | os.PathLike[str] | None,
        run_id: str,
        *,
        config: dict[str, Any] | None = None,
        sims_version: str | None = None,
        created_at: str | None = None,
        updated_at: str | None = None,
        entries: list[PhaseEntry] | None = None,
    ) -> None:
        self.store = ArtifactStore.open(store)
        self.run_id = validate_run_id(run_id)
        self.config: dict[str, Any] = dict(config or {})
        self.sims_version = sims_version
        self.created_at = created_at or utc_now()
        self.updated_at = updated_at
        self._entries: dict[tuple[int, str], PhaseEntry] = {(e.iteration, e.phase): e for e in (entries or [])}

    # ------------------------------------------------------------ (de)serialisation
    @property
    def uri(self) -> str:
        return self.store.manifest_uri(self.run_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "sims_version": self.sims_version,
            "store": self.store.url,
            "config": self.config,
            "entries": [e.to_dict() for e in self.entries],
        }

    def _sidecar_uri(self, iteration: int, phase: str) -> str:
        return self.store.run_uri(self.run_id, f"iter={int(iteration)}", f"{phase}.entry.json")

    def _read_sidecars(self) -> list[PhaseEntry]:
        fs = self.store.fs
        run_dir = self.store.location.join(self.run_id)
        fs.invalidate_cache(run_dir)  # s3fs caches listings; another worker may just have written one
        pattern = f"{run_dir}/iter=*/*.entry.json"
        out = []
        for path in sorted(fs.glob(pattern)):
            try:
                out.append(PhaseEntry.from_dict(json.loads(fs.cat_file(path))))
            except FileNotFoundError:
                continue
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}: shard entry is not valid ({exc})") from None
        return out

    def _apply_sidecars(self) -> None:
        for e in self._read_sidecars():
            self._entries[(e.iteration, e.phase)] = e

    def _apply_dict(self, d: dict[str, Any]) -> None:
        fmt = d.get("format")
        if fmt != MANIFEST_FORMAT:
            raise ValueError(f"{self.uri}: manifest format {fmt!r} is not supported (expected {MANIFEST_FORMAT})")
        self.config = dict(d.get("config") or {})
        self.sims_version = d.get("sims_version")
        self.created_at = d.get("created_at") or self.created_at
        self.updated_at = d.get("updated_at")
        entries = [PhaseEntry.from_dict(e) for e in d.get("entries") or []]
        self._entries = {(e.iteration, e.phase): e for e in entries}

    def _read_disk(self) -> dict[str, Any] | None:
        try:
            raw = _a.read_bytes(self.store, self.uri)
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.uri}: manifest is not valid JSON ({exc})") from None

    @classmethod
    def load(cls, store: ArtifactStore | str | os.PathLike[str] | None, run_id: str) -> Manifest:
        """Read the manifest of ``run_id``; FileNotFoundError naming the runs there if absent."""
        m = cls(store, run_id)
        d = m._read_disk()
        if d is None:
            runs = m.store.list_runs()
            raise FileNotFoundError(
                f"run {run_id!r} has no manifest at {m.uri}; runs in {m.store.url}: "
                + (", ".join(runs) if runs else "none")
            )
        m._apply_dict(d)
        m._apply_sidecars()
        return m

    @classmethod
    def load_or_create(
        cls,
        store: ArtifactStore | str | os.PathLike[str] | None,
        run_id: str,
        *,
        config: dict[str, Any] | None = None,
        sims_version: str | None = None,
    ) -> Manifest:
        """Load the run's manifest, or create and save an empty one.

        ``config`` / ``sims_version``, when given, replace the stored run-level values (the
        per-phase config hashes decide what must be recomputed).
        """
        m = cls(store, run_id)

        def update(mm: Manifest) -> None:
            if config is not None:
                mm.config = json.loads(json.dumps(config, default=_json_default))
            if sims_version is not None:
                mm.sims_version = sims_version

        m._commit(update)
        return m

    def reload(self) -> Manifest:
        d = self._read_disk()
        if d is not None:
            self._apply_dict(d)
        self._apply_sidecars()
        return self

    def save(self) -> None:
        """Write the in-memory manifest as is (atomically)."""
        with _lock_for(self.uri):
            self._write()

    def _write(self) -> None:
        self.updated_at = utc_now()
        data = self.to_dict()
        data["entries"] = [e for e in data["entries"] if not _is_shard(e["phase"])]  # they have their own files
        text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
        _a.write_bytes(self.store, self.uri, text + "\n")

    def _commit(self, mutate: Callable[[Manifest], Any]) -> Any:
        """Re-read the file, apply ``mutate``, write it back: no lost updates within a process."""
        with _lock_for(self.uri):
            d = self._read_disk()
            if d is not None:
                self._apply_dict(d)
            self._apply_sidecars()
            out = mutate(self)
            self._write()
            return out

    def _commit_entry(self, iteration: int, phase: str, mutate: Callable[[Manifest], PhaseEntry]) -> PhaseEntry:
        """Update one entry: a shard's goes to its own file (never lost to a concurrent shard in
        another process); any other through the manifest file."""
        if not _is_shard(phase):
            return self._commit(mutate)
        uri = self._sidecar_uri(iteration, phase)
        with _lock_for(uri):
            try:  # only this shard writes this file: its previous state is all the update needs
                self._entries[(iteration, phase)] = PhaseEntry.from_dict(json.loads(_a.read_bytes(self.store, uri)))
            except FileNotFoundError:
                self._entries.pop((iteration, phase), None)
            entry = mutate(self)
            text = json.dumps(entry.to_dict(), indent=2, default=_json_default)
            _a.write_bytes(self.store, uri, text + "\n")
            return entry

    # ------------------------------------------------------------ queries
    @property
    def entries(self) -> list[PhaseEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.iteration, phase_sort_key(e.phase)))

    def entry(self, iteration: int, phase: str) -> PhaseEntry | None:
        return self._entries.get((int(iteration), phase))

    def iterations(self) -> list[int]:
        return sorted({it for it, _ in self._entries})

    def phases(self, iteration: int) -> list[str]:
        return [e.phase for e in self.entries if e.iteration == iteration]

    def shard_uris(self, iteration: int, phase: str) -> list[str]:
        """URIs of the completed artifact(s) of ``phase`` at ``iteration``: the plain one, or every
        shard of the shard plan (``*_shard_i_of_n``) that completed last; [] when none did."""
        plans: dict[int, list[PhaseEntry]] = {}
        for e in self.entries:
            base, _, count = split_shard_phase(e.phase)
            if e.iteration == iteration and base == phase:
                plans.setdefault(count, []).append(e)
        complete = [
            (max(x.finished_at or "" for x in group), count)
            for count, group in plans.items()
            if len(group) == count and all(x.status == "completed" for x in group)
        ]
        if not complete:
            return []
        _, count = max(complete)
        return [self.output_uri(iteration, e.phase) for e in sorted(plans[count], key=lambda x: x.phase)]

    def _require(self, iteration: int, phase: str) -> PhaseEntry:
        e = self.entry(iteration, phase)
        if e is None:
            raise KeyError(f"run {self.run_id!r} has no entry for iteration {iteration}, phase {phase!r}")
        return e

    def _output(self, iteration: int, phase: str, name: str | None) -> OutputRecord:
        e = self._require(iteration, phase)
        if not e.outputs:
            raise KeyError(f"iteration {iteration}, phase {phase!r} of run {self.run_id!r} recorded no output")
        key = name or (phase if phase in e.outputs else next(iter(e.outputs)))
        try:
            return e.outputs[key]
        except KeyError:
            raise KeyError(
                f"iteration {iteration}, phase {phase!r} has no output {key!r}; outputs: {sorted(e.outputs)}"
            ) from None

    def output_uri(self, iteration: int, phase: str, name: str | None = None) -> str:
        """Absolute URI of a recorded output (default: the one named like the phase, else the first)."""
        return self.store.resolve(self.run_id, self._output(iteration, phase, name).uri)

    def output_hash(self, iteration: int, phase: str, name: str | None = None) -> str | None:
        return self._output(iteration, phase, name).sha256

    # ------------------------------------------------------------ updates
    def _make_output(self, value: str | _a.WrittenArtifact | OutputRecord) -> OutputRecord:
        if isinstance(value, OutputRecord):
            rec = dataclasses.replace(value)
            full = self.store.resolve(self.run_id, rec.uri)
        else:
            if isinstance(value, _a.WrittenArtifact):
                full, sha, size, rows, fp = value.uri, value.sha256, value.size, value.rows, value.fingerprint
            else:
                full, rows, size = str(value), None, None
                fp = _a.fingerprint(self.store, full)
                if fp is None:
                    raise FileNotFoundError(f"output {full} does not exist; write it before recording it")
                sha = _a.content_hash(self.store, full)
            rec = OutputRecord(uri=full, sha256=sha, size=size, rows=rows, fingerprint=fp)
        rel = self.store.relative_to_run(self.run_id, full)
        if rel is not None:
            rec.uri = rel
        return rec

    def record(
        self,
        iteration: int,
        phase: str,
        status: str,
        *,
        config_hash: str | None = None,
        input_hashes: dict[str, str] | None = None,
        outputs: dict[str, str | _a.WrittenArtifact | OutputRecord] | None = None,
        rows: int | None = None,
        started_at: str | None = None,
        finished_at: str | None = None,
        duration_s: float | None = None,
        error: str | BaseException | None = None,
    ) -> PhaseEntry:
        """Create or replace the entry of (iteration, phase) and save the manifest.

        Fields left as None keep their previous value, except that a new status other than
        'failed' clears the error. Output hashes of plain URIs are computed here; rows default
        to the main output's row count; duration defaults to finished_at - started_at.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        _check_key(iteration, phase)
        built = {k: self._make_output(v) for k, v in (outputs or {}).items()}
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"

        def mutate(m: Manifest) -> PhaseEntry:
            old = m._entries.get((iteration, phase))
            e = dataclasses.replace(old) if old else PhaseEntry(iteration=iteration, phase=phase, status=status)
            e.status = status
            if config_hash is not None:
                e.config_hash = config_hash
            if input_hashes is not None:
                e.input_hashes = dict(input_hashes)
            if outputs is not None:
                e.outputs = built
            if started_at is not None:
                e.started_at = started_at
            if finished_at is not None:
                e.finished_at = finished_at
            if rows is not None:
                e.rows = int(rows)
            elif outputs is not None:
                main = built.get(phase) or next(iter(built.values()), None)
                e.rows = main.rows if main is not None else None
            if duration_s is not None:
                e.duration_s = float(duration_s)
            elif e.started_at and e.finished_at:
                e.duration_s = round((_parse_time(e.finished_at) - _parse_time(e.started_at)).total_seconds(), 3)
            e.error = error if status == "failed" else None
            m._entries[(iteration, phase)] = e
            return e

        return self._commit_entry(iteration, phase, mutate)

    def start(
        self,
        iteration: int,
        phase: str,
        *,
        config_hash: str,
        input_hashes: dict[str, str] | None = None,
    ) -> PhaseEntry:
        """Mark (iteration, phase) running: new start time, outputs cleared, attempt counted."""
        _check_key(iteration, phase)
        now = utc_now()

        def mutate(m: Manifest) -> PhaseEntry:
            old = m._entries.get((iteration, phase))
            e = PhaseEntry(
                iteration=iteration,
                phase=phase,
                status="running",
                config_hash=config_hash,
                input_hashes=dict(input_hashes or {}),
                started_at=now,
                attempts=(old.attempts if old else 0) + 1,
            )
            m._entries[(iteration, phase)] = e
            return e

        return self._commit_entry(iteration, phase, mutate)

    def complete(
        self,
        iteration: int,
        phase: str,
        outputs: dict[str, str | _a.WrittenArtifact | OutputRecord],
        *,
        rows: int | None = None,
        config_hash: str | None = None,
        input_hashes: dict[str, str] | None = None,
    ) -> PhaseEntry:
        """Mark (iteration, phase) completed with its outputs (hashes recorded)."""
        return self.record(
            iteration,
            phase,
            "completed",
            config_hash=config_hash,
            input_hashes=input_hashes,
            outputs=outputs,
            rows=rows,
            finished_at=utc_now(),
        )

    def fail(self, iteration: int, phase: str, error: str | BaseException) -> PhaseEntry:
        """Mark (iteration, phase) failed with the error message."""
        return self.record(iteration, phase, "failed", error=error, finished_at=utc_now())

    # ------------------------------------------------------------ freshness
    def is_fresh(
        self,
        iteration: int,
        phase: str,
        config_hash: str,
        input_hashes: dict[str, str] | None = None,
        *,
        verify_outputs: bool = True,
    ) -> tuple[bool, str]:
        """Whether (iteration, phase) can be skipped, and why (not).

        Reasons, checked in this order: ``no previous output``, ``previous attempt failed:
        <error>``, ``previous attempt did not finish ...``, ``config changed (hash a -> b)``,
        ``input 'name' changed (hash a -> b)`` / ``is new`` / ``is no longer an input``,
        ``output file missing: <uri>``, ``output 'name' changed since it was written ...``.
        With ``verify_outputs`` an output whose fingerprint differs from the recorded one is
        re-hashed (an unchanged fingerprint is trusted and costs one stat/HEAD).
        """
        e = self.entry(iteration, phase)
        if e is None:
            return False, "no previous output"
        if e.status == "failed":
            return False, f"previous attempt failed: {e.error or 'no error message recorded'}"
        if e.status != "completed":
            return False, f"previous attempt did not finish (status '{e.status}' since {e.started_at})"
        if e.config_hash != config_hash:
            return False, f"config changed (hash {_short(e.config_hash)} -> {_short(config_hash)})"
        new = dict(input_hashes or {})
        reasons = []
        for name in sorted(set(e.input_hashes) | set(new)):
            if name not in e.input_hashes:
                reasons.append(f"input '{name}' is new")
            elif name not in new:
                reasons.append(f"input '{name}' is no longer an input")
            elif e.input_hashes[name] != new[name]:
                reasons.append(f"input '{name}' changed (hash {_short(e.input_hashes[name])} -> {_short(new[name])})")
        if reasons:
            return False, "; ".join(reasons)
        if not e.outputs:
            return False, "no previous output"
        for name, out in e.outputs.items():
            full = self.store.resolve(self.run_id, out.uri)
            fp = _a.fingerprint(self.store, full)
            if fp is None:
                return False, f"output file missing: {full}"
            if out.fingerprint is not None and fp == out.fingerprint and out.sha256:
                _a.remember_hash(self.store, full, out.sha256, fp)
                continue
            if verify_outputs and out.sha256:
                sha = _a.content_hash(self.store, full)
                if sha != out.sha256:
                    return False, (
                        f"output '{name}' changed since it was written "
                        f"(hash {_short(out.sha256)} -> {_short(sha)}): {full}"
                    )
        return True, f"up to date (completed {e.finished_at})"

    # ------------------------------------------------------------ reporting
    def to_frame(self) -> Any:
        """A pandas table for ``sims status``: iteration, phase, status, rows, seconds, finished_at, error."""
        import pandas as pd

        rows = [
            {
                "iteration": e.iteration,
                "phase": e.phase,
                "status": e.status,
                "rows": e.rows,
                "seconds": e.duration_s if e.duration_s is not None else math.nan,
                "finished_at": e.finished_at,
                "error": e.error,
            }
            for e in self.entries
        ]
        df = pd.DataFrame(rows, columns=["iteration", "phase", "status", "rows", "seconds", "finished_at", "error"])
        df["iteration"] = df["iteration"].astype("int64")
        df["rows"] = df["rows"].astype("Int64")
        df["seconds"] = df["seconds"].astype("float64")
        return df

    def __repr__(self) -> str:
        return f"Manifest(run_id={self.run_id!r}, store={self.store.url!r}, entries={len(self._entries)})"
