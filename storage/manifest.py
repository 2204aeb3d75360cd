"""The run manifest: what each phase of each iteration produced, from what, and when.

``{store}/{run_id}/manifest.json`` (written atomically) holds run-level metadata (config dict,
created_at, sims version) and one entry per (iteration, phase) with its status (``running`` |
``completed`` | ``failed``), config hash, input hashes, outputs (URI relative to the run
directory, sha256, size, rows, fingerprint), row count, timestamps, duration and error message.

`Manifest.is_fresh` decides whether a phase can be skipped on resume and, if not, says exactly
why. Every change re-reads the file, applies itself and writes the file back under a per-process
lock; across processes the run lock (`storage.lock`) keeps a single writer.

The entries of shards (``generations_shard_002_of_004``: see `storage.layout.shard_phase`) are
written by workers in other processes or on other hosts, concurrently: each lives in its own file
``{run_id}/iter={t}/{phase}.entry.json`` (the same JSON as an entry of manifest.json), which only
that shard writes, so no update is lost on a local disk or on S3. `Manifest.load` merges them.

The read side trusts nothing it reads: a recorded URI must lie inside the run folder
(`UnsafeURIError` otherwise), a damaged manifest or entry file is a `ManifestDamagedError` naming
it (`Manifest.rebuild` recovers what can be verified), and `verified_uri` / `read_frame` /
`read_bytes` / `verify_outputs` compare files with their recorded sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sims_core.errors import NotFoundError
from sims_core.hashing import json_default

from .errors import ArtifactMissingError, ArtifactModifiedError, ManifestDamagedError, UnsafeURIError
from .layout import phase_sort_key, split_shard_phase, validate_iteration, validate_phase, validate_run_id
from .store import ArtifactStore, WrittenArtifact

__all__ = ["MANIFEST_FORMAT", "STATUSES", "Manifest", "OutputCheck", "OutputRecord", "PhaseEntry"]

STATUSES: tuple[str, ...] = ("running", "completed", "failed")
MANIFEST_FORMAT = 1
_SHORT = 12


def utc_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _short(h: str | None) -> str:
    return "none" if h is None else h[:_SHORT]


@dataclass
class OutputRecord:
    """One output of a phase. ``uri`` is relative to the run directory."""

    uri: str
    sha256: str | None = None
    size: int | None = None
    rows: int | None = None
    fingerprint: str | None = None


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseEntry:
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["outputs"] = {k: OutputRecord(**v) for k, v in (d.get("outputs") or {}).items()}
        kw["input_hashes"] = dict(d.get("input_hashes") or {})
        return cls(**kw)


@dataclass(frozen=True)
class OutputCheck:
    """A recorded output compared with what is stored: ``state`` is ``ok``, ``missing`` or
    ``modified`` (its sha256 is no longer the recorded one)."""

    iteration: int
    phase: str
    name: str
    uri: str
    state: str
    recorded: str | None = None
    sha256: str | None = None


def _is_shard(phase: str) -> bool:
    return split_shard_phase(phase)[2] > 1


def _check_key(iteration: int, phase: str) -> None:
    validate_iteration(iteration)
    validate_phase(phase)


_locks_guard = threading.Lock()
_locks: dict[str, threading.RLock] = {}


def _lock_for(uri: str) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(uri, threading.RLock())


class Manifest:
    """The manifest of one run. Create with `load`, `load_or_create` or `rebuild`."""

    def __init__(self, store: ArtifactStore | str | os.PathLike[str] | None, run_id: str) -> None:
        self.store = ArtifactStore.open(store)
        self.run_id = validate_run_id(run_id)
        self.config: dict[str, Any] = {}
        self.sims_version: str | None = None
        self.created_at = utc_now()
        self.updated_at: str | None = None
        self._entries: dict[tuple[int, str], PhaseEntry] = {}

    # ------------------------------------------------------------ reading and writing
    @property
    def uri(self) -> str:
        return self.store.manifest_uri(self.run_id)

    def _damaged(self, source: str, why: str) -> ManifestDamagedError:
        return ManifestDamagedError(
            f"{source} is damaged ({why}): rebuild the manifest of run {self.run_id!r} from its artifacts with "
            f"`sims repair {self.run_id}` (storage.Manifest.rebuild; phases whose outputs cannot be verified are "
            "computed again)"
        )

    def _parse(self, raw: bytes, source: str) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:  # bad JSON or not UTF-8
            raise self._damaged(source, f"not valid JSON: {exc}") from None

    def _entry_from(self, d: Any, source: str) -> PhaseEntry:
        """An entry read from ``source``, checked: its fields, and every output inside the run."""
        try:
            e = PhaseEntry.from_dict(d)
            _check_key(e.iteration, e.phase)
            if e.status not in STATUSES or not all(isinstance(o.uri, str) for o in e.outputs.values()):
                raise ValueError(f"status {e.status!r} or an output URI is not valid")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self._damaged(source, f"an entry is not valid: {exc}") from None
        for out in e.outputs.values():
            out.uri = self.store.inside_run(self.run_id, out.uri, source=source)
        return e

    def _sidecar_uri(self, iteration: int, phase: str) -> str:
        return self.store.run_uri(self.run_id, f"iter={int(iteration)}", f"{phase}.entry.json")

    def _sidecar_uris(self) -> list[str]:
        run_dir = self.store.path(self.store.run_uri(self.run_id))
        self.store.fs.invalidate_cache(run_dir)  # listings may be cached; another worker may just have written one
        return [self.store._uri(p) for p in sorted(self.store.fs.glob(f"{run_dir}/iter=*/*.entry.json"))]

    def _apply_sidecars(self) -> None:
        for uri in self._sidecar_uris():
            try:
                e = self._entry_from(self._parse(self.store.read_bytes(uri), uri), uri)
            except FileNotFoundError:
                continue
            self._entries[(e.iteration, e.phase)] = e

    def _apply_dict(self, d: Any) -> None:
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise self._damaged(self.uri, f"format {fmt!r} is not supported (expected {MANIFEST_FORMAT})")
        if not isinstance(d.get("config") or {}, dict) or not isinstance(d.get("entries") or [], list):
            raise self._damaged(self.uri, "'config' must be an object and 'entries' a list")
        self.config = dict(d.get("config") or {})
        self.sims_version = d.get("sims_version")
        self.created_at = d.get("created_at") or self.created_at
        self.updated_at = d.get("updated_at")
        entries = [self._entry_from(e, self.uri) for e in d.get("entries") or []]
        self._entries = {(e.iteration, e.phase): e for e in entries}

    def _read_disk(self) -> Any:
        try:
            return self._parse(self.store.read_bytes(self.uri), self.uri)
        except FileNotFoundError:
            return None

    @classmethod
    def load(cls, store: ArtifactStore | str | os.PathLike[str] | None, run_id: str) -> Manifest:
        """Read the manifest of ``run_id``: a `NotFoundError` naming the runs there if absent, a
        `ManifestDamagedError` / `UnsafeURIError` naming the file if it cannot be trusted."""
        m = cls(store, run_id)
        d = m._read_disk()
        if d is None:
            runs = m.store.list_runs()
            raise NotFoundError(
                f"run {run_id!r} has no manifest at {m.uri}; runs in {m.store.url}: {', '.join(runs) or 'none'}"
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
        """Load the run's manifest, or create and save an empty one. ``config`` / ``sims_version``,
        when given, replace the stored run-level values (the per-phase config hashes decide what
        must be recomputed)."""
        m = cls(store, run_id)

        def update(mm: Manifest) -> None:
            if config is not None:
                mm.config = json.loads(json.dumps(config, default=json_default))
            if sims_version is not None:
                mm.sims_version = sims_version

        m._commit(update)
        return m

    def _write(self) -> None:
        self.updated_at = utc_now()
        data = {
            "format": MANIFEST_FORMAT,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "sims_version": self.sims_version,
            "store": self.store.url,
            "config": self.config,
            "entries": [dataclasses.asdict(e) for e in self.entries if not _is_shard(e.phase)],  # shards have own files
        }
        self.store.write_bytes(self.uri, json.dumps(data, indent=2, default=json_default) + "\n")

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
                self._entries[(iteration, phase)] = self._entry_from(self._parse(self.store.read_bytes(uri), uri), uri)
            except FileNotFoundError:
                self._entries.pop((iteration, phase), None)
            entry = mutate(self)
            self.store.write_bytes(uri, json.dumps(dataclasses.asdict(entry), indent=2, default=json_default) + "\n")
            return entry

    # ------------------------------------------------------------ queries
    @property
    def entries(self) -> list[PhaseEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.iteration, phase_sort_key(e.phase)))

    def entry(self, iteration: int, phase: str) -> PhaseEntry | None:
        return self._entries.get((int(iteration), phase))

    def iterations(self) -> list[int]:
        return sorted({it for it, _ in self._entries})

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

    def _output(self, iteration: int, phase: str, name: str | None) -> tuple[str, OutputRecord]:
        e = self.entry(iteration, phase)
        if e is None:
            raise KeyError(f"run {self.run_id!r} has no entry for iteration {iteration}, phase {phase!r}")
        if not e.outputs:
            raise KeyError(f"iteration {iteration}, phase {phase!r} of run {self.run_id!r} recorded no output")
        key = name or (phase if phase in e.outputs else next(iter(e.outputs)))
        if key not in e.outputs:
            raise KeyError(
                f"iteration {iteration}, phase {phase!r} has no output {key!r}; outputs: {sorted(e.outputs)}"
            )
        return key, e.outputs[key]

    def output_uri(self, iteration: int, phase: str, name: str | None = None) -> str:
        """Absolute URI of a recorded output (default: the one named like the phase, else the first)."""
        return self.store.run_uri(self.run_id, self._output(iteration, phase, name)[1].uri)

    def output_hash(self, iteration: int, phase: str, name: str | None = None) -> str | None:
        return self._output(iteration, phase, name)[1].sha256

    # ------------------------------------------------------------ verification
    def check_output(self, iteration: int, phase: str, name: str | None = None, *, trust: bool = True) -> OutputCheck:
        """Compare a recorded output with the stored file. With ``trust`` an unchanged fingerprint
        (size/mtime/inode, ETag) vouches for the recorded sha256 (one stat/HEAD); otherwise, or
        when it changed, the file is hashed (memoised per process)."""
        return self._check(iteration, phase, *self._output(iteration, phase, name), trust=trust)

    def _check(self, iteration: int, phase: str, key: str, out: OutputRecord, trust: bool = True) -> OutputCheck:
        uri = self.store.run_uri(self.run_id, out.uri)
        known = (out.fingerprint, out.sha256) if trust and out.fingerprint and out.sha256 else None
        try:
            sha = self.store.content_hash(uri, known=known)
        except FileNotFoundError:
            return OutputCheck(iteration, phase, key, uri, "missing", out.sha256)
        return OutputCheck(
            iteration, phase, key, uri, "ok" if out.sha256 in (None, sha) else "modified", out.sha256, sha
        )

    def verify_outputs(self) -> list[OutputCheck]:
        """The recorded outputs of completed phases that are missing or modified ([] when all are
        intact), for ``sims status`` to list beside the phase table; files whose fingerprint did
        not change are not read."""
        checks = [
            self.check_output(e.iteration, e.phase, n)
            for e in self.entries
            if e.status == "completed"
            for n in e.outputs
        ]
        return [c for c in checks if c.state != "ok"]

    def verified_uri(self, iteration: int, phase: str, name: str | None = None) -> str:
        """The URI of a recorded output after checking it is the file the phase wrote: an
        `ArtifactMissingError` or `ArtifactModifiedError` naming the file otherwise."""
        c = self.check_output(iteration, phase, name)
        where = f"iteration {iteration} {phase!r} of run {self.run_id!r}"
        if c.state == "missing":
            raise ArtifactMissingError(f"{c.uri} is missing: {where} recorded it; resume the run to compute it again")
        if c.state == "modified":
            raise ArtifactModifiedError(
                f"{c.uri} changed after {where} wrote it (sha256 {_short(c.recorded)} recorded, {_short(c.sha256)} "
                "now); resume the run to compute it again"
            )
        return c.uri

    def verify_inputs(self, uris: Iterable[str]) -> None:
        """Check, with `verified_uri`, each of ``uris`` that a completed phase of this run recorded
        as an output (inputs it does not record have nothing to be compared with)."""
        recorded = {
            self.store.run_uri(self.run_id, out.uri): (entry.iteration, entry.phase, name)
            for entry in self.entries
            if entry.status == "completed"
            for name, out in entry.outputs.items()
        }
        for uri in uris:
            if uri in recorded:
                self.verified_uri(*recorded[uri])

    def read_frame(self, iteration: int, phase: str, schema_name: str, name: str | None = None) -> Any:
        """A recorded Parquet output as a DataFrame, verified first (see `verified_uri`)."""
        return self.store.read_frame(self.verified_uri(iteration, phase, name), schema_name)

    def read_bytes(self, iteration: int, phase: str, name: str | None = None) -> bytes:
        """A recorded output's bytes, checked against the recorded sha256 (the bytes read are hashed)."""
        _, out = self._output(iteration, phase, name)
        data = self.store.read_bytes(self.output_uri(iteration, phase, name))
        if out.sha256 is not None and hashlib.sha256(data).hexdigest() != out.sha256:
            return self.store.read_bytes(self.verified_uri(iteration, phase, name))  # raises, naming the file
        return data

    # ------------------------------------------------------------ updates
    def _make_output(self, value: str | WrittenArtifact | OutputRecord, source: str) -> OutputRecord:
        if isinstance(value, (OutputRecord, WrittenArtifact)):  # the same fields
            rec = OutputRecord(**dataclasses.asdict(value))
        else:
            fp = self.store.fingerprint(str(value))
            if fp is None:
                raise NotFoundError(f"output {value} does not exist; write it before recording it")
            rec = OutputRecord(str(value), self.store.content_hash(str(value)), fingerprint=fp)
        rec.uri = self.store.inside_run(self.run_id, rec.uri, source=source)
        return rec

    def record(
        self,
        iteration: int,
        phase: str,
        status: str,
        *,
        config_hash: str | None = None,
        input_hashes: dict[str, str] | None = None,
        outputs: Mapping[str, str | WrittenArtifact | OutputRecord] | None = None,
        rows: int | None = None,
        finished_at: str | None = None,
        error: str | BaseException | None = None,
    ) -> PhaseEntry:
        """Create or replace the entry of (iteration, phase) and save the manifest.

        Fields left as None keep their previous value, except that a new status other than
        'failed' clears the error. Output hashes of plain URIs are computed here; rows default
        to the main output's row count; duration is finished_at - started_at. An output
        outside the run folder is an `UnsafeURIError`.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        _check_key(iteration, phase)
        source = f"the outputs of iteration {iteration} {phase!r}"
        built = {k: self._make_output(v, source) for k, v in (outputs or {}).items()}
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"

        def mutate(m: Manifest) -> PhaseEntry:
            old = m._entries.get((iteration, phase))
            e = dataclasses.replace(old) if old else PhaseEntry(iteration=iteration, phase=phase, status=status)
            e.status = status
            e.config_hash = config_hash if config_hash is not None else e.config_hash
            e.input_hashes = dict(input_hashes) if input_hashes is not None else e.input_hashes
            e.finished_at = finished_at or e.finished_at
            if outputs is not None:
                e.outputs = built
                main = built.get(phase) or next(iter(built.values()), None)
                e.rows = main.rows if main is not None else None
            e.rows = int(rows) if rows is not None else e.rows
            if e.started_at and e.finished_at:
                delta = datetime.fromisoformat(e.finished_at) - datetime.fromisoformat(e.started_at)
                e.duration_s = round(delta.total_seconds(), 3)
            e.error = error if status == "failed" else None
            m._entries[(iteration, phase)] = e
            return e

        return self._commit_entry(iteration, phase, mutate)

    def start(
        self, iteration: int, phase: str, *, config_hash: str, input_hashes: dict[str, str] | None = None
    ) -> PhaseEntry:
        """Mark (iteration, phase) running: new start time, outputs cleared, attempt counted."""
        _check_key(iteration, phase)
        now = utc_now()

        def mutate(m: Manifest) -> PhaseEntry:
            old = m._entries.get((iteration, phase))
            attempts = (old.attempts if old else 0) + 1
            e = PhaseEntry(
                iteration, phase, "running", config_hash, dict(input_hashes or {}), started_at=now, attempts=attempts
            )
            m._entries[(iteration, phase)] = e
            return e

        return self._commit_entry(iteration, phase, mutate)

    def complete(
        self,
        iteration: int,
        phase: str,
        outputs: Mapping[str, str | WrittenArtifact | OutputRecord],
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
        self, iteration: int, phase: str, config_hash: str, input_hashes: dict[str, str] | None = None
    ) -> tuple[bool, str]:
        """Whether (iteration, phase) can be skipped, and why (not).

        Reasons, checked in this order: ``no previous output``, ``previous attempt failed:
        <error>``, ``previous attempt did not finish ...``, ``config changed (hash a -> b)``,
        ``input 'name' changed (hash a -> b)`` / ``is new`` / ``is no longer an input``,
        ``output file missing: <uri>``, ``output 'name' changed since it was written ...``.
        An output whose fingerprint is unchanged is trusted (one stat/HEAD); otherwise it is hashed.
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
        new, old, reasons = dict(input_hashes or {}), e.input_hashes, []
        for name in sorted(set(old) | set(new)):
            if name not in old:
                reasons.append(f"input '{name}' is new")
            elif name not in new:
                reasons.append(f"input '{name}' is no longer an input")
            elif old[name] != new[name]:
                reasons.append(f"input '{name}' changed (hash {_short(old[name])} -> {_short(new[name])})")
        if reasons:
            return False, "; ".join(reasons)
        if not e.outputs:
            return False, "no previous output"
        for name in e.outputs:
            c = self.check_output(iteration, phase, name)
            if c.state == "missing":
                return False, f"output file missing: {c.uri}"
            if c.state == "modified":
                why = f"hash {_short(c.recorded)} -> {_short(c.sha256)}"
                return False, f"output '{name}' changed since it was written ({why}): {c.uri}"
        return True, f"up to date (completed {e.finished_at})"

    # ------------------------------------------------------------ recovery
    @classmethod
    def rebuild(cls, store: ArtifactStore | str | os.PathLike[str] | None, run_id: str) -> tuple[Manifest, list[str]]:
        """Rebuild the manifest of ``run_id`` from what can be verified, after ``manifest.json`` or
        a shard's entry file was damaged or tampered with; call it holding the run lock.

        Keeps the run-level fields (config, sims version, creation time) of a readable
        manifest.json, and every entry of manifest.json and of the shard entry files that can be
        read, names only files inside the run, and whose recorded outputs still hash to their
        recorded sha256 (the files are read: recorded fingerprints are not trusted); failed and running entries are kept as
        they are. Every other entry is dropped: the config and input hashes of a lost entry
        cannot be known, so its phase is computed again on resume (correct, slower). An
        unreadable file is kept beside itself as ``<name>.damaged``; the entry files of dropped
        shard entries are deleted. Artifact files that no entry names stay where they are (a
        recomputed phase overwrites them). Returns the saved manifest and one sentence per
        dropped entry or damaged file."""
        m, notes, found = cls(store, run_id), [], []
        with _lock_for(m.uri):
            for uri in [m.uri, *m._sidecar_uris()]:
                try:
                    raw = m.store.read_bytes(uri)
                except FileNotFoundError:
                    continue
                try:
                    d = json.loads(raw)
                    if not isinstance(d, dict):
                        raise ValueError(f"a JSON {type(d).__name__}, not an object")
                except ValueError as exc:
                    notes.append(f"{uri} was not valid JSON ({exc}); kept as {uri}.damaged")
                    m.store.write_bytes(f"{uri}.damaged", raw)
                    m.store.delete(uri)
                    continue
                if uri != m.uri:
                    found.append((uri, d))
                    continue
                m.config = d["config"] if isinstance(d.get("config"), dict) else {}
                m.sims_version, m.created_at = d.get("sims_version"), d.get("created_at") or m.created_at
                found += [(uri, e) for e in (d["entries"] if isinstance(d.get("entries"), list) else [])]
            for uri, d in found:
                try:
                    e = m._entry_from(d, uri)
                    checks = [m._check(e.iteration, e.phase, k, o, False) for k, o in e.outputs.items()]
                    bad: list[OutputCheck | str] = [c for c in checks if c.state != "ok" and e.status == "completed"]
                except (ManifestDamagedError, UnsafeURIError) as exc:
                    e, bad = None, [str(exc)]
                if e is not None and not bad:
                    m._entries[(e.iteration, e.phase)] = e
                    continue
                what = f"iteration {e.iteration} {e.phase!r}" if e is not None else f"an entry of {uri}"
                why = bad[0] if isinstance(bad[0], str) else f"output {bad[0].name!r} is {bad[0].state}: {bad[0].uri}"
                notes.append(f"dropped {what} (its phase is computed again): {why}")
                if uri != m.uri:
                    m.store.delete(uri)
            m._write()
        return m, notes

    # ------------------------------------------------------------ reporting
    def to_frame(self) -> Any:
        """A pandas table for ``sims status``: iteration, phase, status, rows, seconds, finished_at, error."""
        import pandas as pd

        columns = ["iteration", "phase", "status", "rows", "seconds", "finished_at", "error"]
        rows = [[e.iteration, e.phase, e.status, e.rows, e.duration_s, e.finished_at, e.error] for e in self.entries]
        df = pd.DataFrame(rows, columns=columns)
        return df.astype({"iteration": "int64", "rows": "Int64", "seconds": "float64"})  # a missing duration: NaN

    def __repr__(self) -> str:
        return f"Manifest(run_id={self.run_id!r}, store={self.store.url!r}, entries={len(self._entries)})"
