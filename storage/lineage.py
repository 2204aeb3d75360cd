"""A lineage: a named, long-lived steering policy that scheduled runs advance, and where serving
reads its current steering.

::

    {store}/lineages/<name>/current.safetensors     the current steering (serving reads this)
    {store}/lineages/<name>/current.json            pointer: run, iteration, sha256, evaluation, time
    {store}/lineages/<name>/current_buffer.parquet  the memory bank that goes with it
    {store}/lineages/<name>/steering/<run>.safetensors, buffer/<run>.parquet
                                                    every steering ever promoted (rollback targets)
    {store}/lineages/<name>/nights/<run>.json       one record per run: prompts drawn, comparison with
                                                    the steering that was current, decision and why
    {store}/lineages/<name>/used/<run>.json         the prompt ids that run drew (later runs draw others)

Every file is written atomically (a reader sees the old or the new file whole, never half of one).
A promotion writes the new steering under its run's name first, then ``current.safetensors``, its
memory bank, and last the pointer, whose sha256 names the steering it points to. It is a
compare-and-swap: it is refused when the current steering is no longer the one the run started
from (another run promoted meanwhile).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from sims_core.config import LINEAGE_NAME
from sims_core.errors import ConfigError, NotFoundError, UserError

from .store import ArtifactStore

__all__ = ["LINEAGES_DIR", "Lineage", "LineageConflictError", "validate_lineage_name"]

LINEAGES_DIR = "lineages"
_NAME = re.compile(LINEAGE_NAME)


def validate_lineage_name(name: str) -> str:
    """``name`` if it is a valid lineage name, else a `ConfigError` saying why."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"lineage {name!r} is not a valid name: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


class LineageConflictError(UserError):
    """The lineage's current steering changed since the run started (another run promoted)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Lineage:
    """The files of lineage ``name`` in ``store``."""

    def __init__(self, store: ArtifactStore | str, name: str) -> None:
        self.store = ArtifactStore.open(store)
        self.name = validate_lineage_name(name)

    def uri(self, *parts: str) -> str:
        return self.store._uri(self.store._join(LINEAGES_DIR, self.name, *parts))

    def exists(self) -> bool:
        nights = self.store.fs.glob(self.store._join(LINEAGES_DIR, self.name, "nights", "*.json"))
        return bool(nights) or self.store.exists(self.uri("current.json"))

    # ------------------------------------------------------------ reading
    def pointer(self) -> dict[str, Any] | None:
        """The current pointer (run, iteration, sha256, evaluation, promoted_at), None before the
        first promotion."""
        try:
            return json.loads(self.store.read_bytes(self.uri("current.json")))
        except NotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.uri('current.json')} is not valid JSON ({exc}); was it edited?") from None

    def _current(self) -> tuple[dict[str, Any] | None, bytes | None]:
        """The pointer and the bytes of the current steering file, checked against the pointer's
        sha256 (a reader that catches a promotion between the two files reads again)."""
        for _ in range(5):
            pointer = self.pointer()
            if pointer is None:
                return None, None
            data = self.store.read_bytes(self.uri("current.safetensors"))
            if hashlib.sha256(data).hexdigest() == pointer["sha256"]:
                return pointer, data
        raise UserError(
            f"{self.uri('current.safetensors')} does not match the sha256 its pointer current.json records; "
            f"was one of them edited? `sims lineage rollback {self.name}` republishes a recorded steering"
        )

    def current_steering(self) -> bytes | None:
        """The bytes of the current steering file (see `_current`)."""
        return self._current()[1]

    def current_buffer(self, pointer: dict[str, Any] | None = None) -> bytes | None:
        """The current memory bank (``pointer``: the current pointer, when already read)."""
        if (pointer or self.pointer()) is None:
            return None
        try:
            return self.store.read_bytes(self.uri("current_buffer.parquet"))
        except NotFoundError:
            return None

    def snapshot(self) -> tuple[dict[str, Any], bytes | None, bytes | None]:
        """What a run advancing the lineage starts from, with one read of the pointer: the
        snapshot (lineage name, ``current`` pointer, sorted ``used_prompt_ids``), the current
        steering's bytes and its memory bank (both None before the first promotion)."""
        pointer, steering = self._current()
        bank = self.current_buffer(pointer) if pointer is not None else None
        used = sorted(self.used_prompt_ids())
        return {"lineage": self.name, "current": pointer, "used_prompt_ids": used}, steering, bank

    def _records(self, folder: str) -> list[dict[str, Any]]:
        """The JSON files in one of the lineage's folders (``used``, ``nights``), in name order."""
        paths = sorted(self.store.fs.glob(self.store._join(LINEAGES_DIR, self.name, folder, "*.json")))
        return [json.loads(self.store.fs.cat_file(path)) for path in paths]

    def used_prompt_ids(self) -> set[str]:
        """Every prompt id an earlier run of the lineage drew."""
        return {pid for record in self._records("used") for pid in record["prompt_ids"]}

    def nights(self) -> list[dict[str, Any]]:
        """One record per run (oldest first): run, time, prompts, comparison, decision, reason."""
        return sorted(self._records("nights"), key=lambda r: (r.get("recorded_at", ""), r.get("run_id", "")))

    def night(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.read_bytes(self.uri("nights", f"{run_id}.json")))
        except NotFoundError:
            return None

    # ------------------------------------------------------------ writing
    def record_night(self, run_id: str, record: dict[str, Any], prompt_ids: list[str]) -> None:
        """The run's record and the prompts it drew (written last: a run that has a record is done)."""
        self.store.write_bytes(
            self.uri("used", f"{run_id}.json"), json.dumps({"run_id": run_id, "prompt_ids": sorted(prompt_ids)})
        )
        self.store.write_bytes(
            self.uri("nights", f"{run_id}.json"), json.dumps({**record, "run_id": run_id, "recorded_at": _now()})
        )

    def promote(
        self,
        run_id: str,
        iteration: int,
        steering: bytes,
        buffer: bytes | None,
        evaluation: dict[str, Any],
        expected_sha256: str | None,
    ) -> dict[str, Any]:
        """Make ``steering`` (and its memory bank) the current one, if the current one is still
        ``expected_sha256`` (None: no current steering yet); returns the new pointer."""
        current = self.pointer()
        if (current or {}).get("sha256") != expected_sha256:
            raise LineageConflictError(
                f"lineage {self.name!r}: the current steering changed since run {run_id} started (now from run "
                f"{(current or {}).get('run_id')}); its steering was not promoted"
            )
        self.store.write_bytes(self.uri("steering", f"{run_id}.safetensors"), steering)
        if buffer is not None:
            self.store.write_bytes(self.uri("buffer", f"{run_id}.parquet"), buffer)
        return self._publish(run_id, iteration, steering, buffer, evaluation, "promoted")

    def _publish(
        self, run_id: str, iteration: int, steering: bytes, buffer: bytes | None, evaluation: dict, event: str
    ) -> dict[str, Any]:
        written = self.store.write_bytes(self.uri("current.safetensors"), steering)
        if buffer is not None:
            self.store.write_bytes(self.uri("current_buffer.parquet"), buffer)
        else:
            self.store.delete(self.uri("current_buffer.parquet"))
        pointer = {
            "lineage": self.name,
            "run_id": run_id,
            "iteration": iteration,
            "sha256": written.sha256,
            "evaluation": evaluation,
            "event": event,
            "promoted_at": _now(),
        }
        self.store.write_bytes(self.uri("current.json"), json.dumps(pointer, indent=2) + "\n")
        return pointer

    def promoted_runs(self) -> list[str]:
        """Runs whose steering was promoted, oldest first."""
        return [r["run_id"] for r in self.nights() if r.get("promoted")]

    def rollback(self, to_run: str | None = None) -> dict[str, Any]:
        """Make an earlier promoted steering current again: ``to_run``'s, or the one promoted
        before the current one. Recorded in the lineage's history."""
        pointer = self.pointer()
        promoted = self.promoted_runs()
        if to_run is None:
            if pointer is None or pointer["run_id"] not in promoted or promoted.index(pointer["run_id"]) == 0:
                raise UserError(
                    f"lineage {self.name!r} has no earlier promoted steering to roll back to "
                    f"(promoted runs: {promoted or 'none'}); name one with --to RUN"
                )
            to_run = promoted[promoted.index(pointer["run_id"]) - 1]
        if to_run not in promoted:
            raise UserError(f"run {to_run!r} was never promoted in lineage {self.name!r}; promoted runs: {promoted}")
        steering = self.store.read_bytes(self.uri("steering", f"{to_run}.safetensors"))
        buffer_uri = self.uri("buffer", f"{to_run}.parquet")
        buffer = self.store.read_bytes(buffer_uri) if self.store.exists(buffer_uri) else None
        night = self.night(to_run) or {}
        new = self._publish(
            to_run, int(night.get("iteration", 0)), steering, buffer, night.get("comparison", {}), "rollback"
        )
        self.store.write_bytes(
            self.uri("nights", f"rollback-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"),
            json.dumps(
                {
                    "run_id": f"rollback to {to_run}",
                    "event": "rollback",
                    "to_run": to_run,
                    "from_run": (pointer or {}).get("run_id"),
                    "recorded_at": _now(),
                }
            ),
        )
        return new
