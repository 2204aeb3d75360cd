"""Prompt sets: validated, identified, split and sampled prompts (no answers needed).

SIMS only needs prompts: each iteration samples N training prompts, the policy answers them,
an oracle ranks the answers. This module turns a list of prompt texts into
:class:`PromptRecord` objects with stable ids, assigns each to ``train``/``val``/``eval``, and
picks the prompts for one iteration, all deterministically and independently of input order.

Pure: the only file this module reads is the built-in prompt set packaged with ``sims_core``
(``sims_core/data/default_prompts.jsonl``, through :mod:`importlib.resources`). Reading user
files, URLs and Hugging Face datasets is ``storage.prompt_sources``' job.

Quick tour::

    from sims_core.prompts import default_prompts, make_prompt_records, split_prompts, sample_prompts

    records, report = make_prompt_records(texts)        # report.n_duplicates, report.n_empty
    records = split_prompts(records, eval_fraction=0.25, val_fraction=0.15, seed=0)
    sample = sample_prompts(records, n=64, seed=0, iteration=3)
    if sample.shortfall:
        logger.warning(sample.message)                 # fewer train prompts than asked
    prompts = [r.prompt for r in sample.records]
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from sims_core.errors import UserError
from sims_core.seeding import unit_from

__all__ = [
    "DEFAULT_PROMPTS_RESOURCE",
    "SPLITS",
    "PromptRecord",
    "PromptReport",
    "PromptSample",
    "PromptSplitError",
    "default_prompts",
    "make_prompt_records",
    "normalize_prompt",
    "prompt_id",
    "records_to_rows",
    "sample_prompts",
    "split_counts",
    "split_prompts",
    "unused_prompts",
]

SPLITS: tuple[str, ...] = ("train", "val", "eval")
DEFAULT_PROMPTS_RESOURCE = "data/default_prompts.jsonl"
_ID_HEX = 16  # 64 bits of sha256: collisions are negligible for any realistic prompt set
_MAX_LISTED = 5


def normalize_prompt(text: str) -> str:
    """The form a prompt is identified by: Unicode NFC, whitespace runs collapsed, stripped.

    Case and punctuation are kept: "Why?" and "why?" are different prompts.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_id(text: str) -> str:
    """A stable id: the first 16 hex digits of sha256 of the normalized text (UTF-8)."""
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:_ID_HEX]


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a prompt set.

    ``prompt`` is the text sent to the model (stripped, inner whitespace kept);
    ``prompt_id`` is :func:`prompt_id` of it; ``split`` is ``None`` until
    :func:`split_prompts` assigns ``"train"``, ``"val"`` or ``"eval"``; ``reference`` is a
    reference answer when the prompt set has one (judges such as ``"reference"`` compare answers
    with it; SIMS itself never needs answers).
    """

    prompt_id: str
    prompt: str
    category: str | None = None
    split: str | None = None
    reference: str | None = None


@dataclass(frozen=True)
class PromptReport:
    """What :func:`make_prompt_records` kept and dropped (nothing is dropped silently).

    ``duplicate_indices``/``empty_indices`` are 0-based positions in the input; a duplicate is
    a text whose normalized form (hence id) equals an earlier one's, which is kept.
    """

    n_input: int
    n_kept: int
    n_duplicates: int
    n_empty: int
    duplicate_indices: tuple[int, ...] = ()
    empty_indices: tuple[int, ...] = ()

    @property
    def n_dropped(self) -> int:
        return self.n_duplicates + self.n_empty

    @property
    def message(self) -> str:
        """One sentence for a log: what was kept and what was dropped, with counts."""
        text = f"kept {self.n_kept} of {self.n_input} prompts"
        parts = []
        if self.n_duplicates:
            parts.append(
                f"{self.n_duplicates} duplicate{'s' if self.n_duplicates != 1 else ''} "
                f"(input positions {_listed(self.duplicate_indices)})"
            )
        if self.n_empty:
            parts.append(f"{self.n_empty} empty or whitespace-only (input positions {_listed(self.empty_indices)})")
        if parts:
            text += "; dropped " + " and ".join(parts)
        return text


@dataclass(frozen=True)
class PromptSample:
    """The prompts chosen for one iteration by :func:`sample_prompts`.

    ``shortfall`` is ``requested - len(records)`` when fewer prompts were available than asked
    (then every available prompt is used) and 0 otherwise; ``message`` says so for a log.
    """

    records: list[PromptRecord]
    requested: int
    available: int
    split: str | None = "train"
    seed: int = 0
    iteration: int = 0
    message: str = field(default="", compare=False)

    @property
    def shortfall(self) -> int:
        return max(0, self.requested - len(self.records))

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.records]


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def make_prompt_records(
    texts: Sequence[str],
    categories: Sequence[str | None] | None = None,
    references: Sequence[str | None] | None = None,
) -> tuple[list[PromptRecord], PromptReport]:
    """Validate prompt texts and give each an id; returns ``(records, report)``.

    - ``texts`` must be a non-empty list/tuple of strings (a ``TypeError`` names the first
      non-string and its position); ``categories`` and ``references`` (reference answers), if
      given, have one entry (str or None) per text. A reference is stripped; an empty one is None.
    - Empty or whitespace-only texts are dropped and counted in ``report.n_empty``.
    - Duplicates (same normalized text, hence same id) are dropped after their first
      occurrence, with their category and reference, and counted in ``report.n_duplicates``:
      check ``report.message``.
    - A ``ValueError`` if no prompt is left.

    Records keep input order; their ``split`` is ``None``.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(
            f"texts must be a list of strings, got {type(texts).__name__}"
            + (" (a single string: wrap it in a list)" if isinstance(texts, str) else "")
        )
    if len(texts) == 0:
        raise ValueError("texts is empty: a prompt set needs at least one prompt")
    if categories is not None and len(categories) != len(texts):
        raise ValueError(
            f"categories has {len(categories)} entries but texts has {len(texts)}; give one category (or None) per text"
        )
    if references is not None and (isinstance(references, str) or len(references) != len(texts)):
        got = "a single string" if isinstance(references, str) else f"{len(references)} entries"
        raise UserError(
            f"references has {got} but texts has {len(texts)}; give one reference answer (or None) per text"
        )
    records: list[PromptRecord] = []
    seen: set[str] = set()
    dups: list[int] = []
    empties: list[int] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r:.60}), expected a string prompt")
        category = None if categories is None else categories[i]
        if category is not None and not isinstance(category, str):
            raise TypeError(
                f"categories[{i}] is {type(category).__name__} ({category!r:.60}), expected a string or None"
            )
        reference = None if references is None else references[i]
        if reference is not None and not isinstance(reference, str):
            raise UserError(
                f"references[{i}] is {type(reference).__name__} ({reference!r:.60}), expected a string or None"
            )
        stripped = text.strip()
        if not stripped:
            empties.append(i)
            continue
        pid = prompt_id(stripped)
        if pid in seen:
            dups.append(i)
            continue
        seen.add(pid)
        records.append(
            PromptRecord(
                prompt_id=pid,
                prompt=stripped,
                category=category or None,
                reference=(reference or "").strip() or None,
            )
        )
    report = PromptReport(
        n_input=len(texts),
        n_kept=len(records),
        n_duplicates=len(dups),
        n_empty=len(empties),
        duplicate_indices=tuple(dups),
        empty_indices=tuple(empties),
    )
    if not records:
        raise ValueError(f"no prompt left: all {len(texts)} texts are empty or whitespace-only")
    return records, report


def default_prompts() -> list[PromptRecord]:
    """The built-in prompt set: 600 short single-turn requests, 50 in each of 12 categories,
    each with a short reference answer; prompts and references were written for this project.

    For small instruction-tuned chat models: factual questions, how-to, explanations, creative
    writing, maths word problems, recommendations, definitions, comparisons, summaries,
    rewriting, advice and brainstorming. Records have ``category`` and ``reference`` set and
    ``split`` ``None``. A line without a non-empty ``reference`` is an error naming the line.
    """
    raw = resources.files("sims_core").joinpath(DEFAULT_PROMPTS_RESOURCE).read_text("utf-8")
    texts: list[str] = []
    cats: list[str | None] = []
    refs: list[str | None] = []
    where = f"sims_core/{DEFAULT_PROMPTS_RESOURCE}"
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f'{where} line {lineno} is not {{"prompt": str, "category": str, "reference": str}}')
        reference = row.get("reference")
        if not isinstance(reference, str) or not reference.strip():
            raise UserError(f"{where} line {lineno} has no reference answer: every line needs a non-empty 'reference'")
        texts.append(row["prompt"])
        cats.append(row.get("category"))
        refs.append(reference)
    records, report = make_prompt_records(texts, cats, refs)
    if report.n_dropped:  # the packaged file is checked by tests; this guards hand edits
        raise ValueError(f"sims_core/{DEFAULT_PROMPTS_RESOURCE}: {report.message}")
    return records


def _unit(*parts: object) -> float:
    """A number in [0, 1) from sha256 of the parts: the same on every platform and run."""
    return unit_from(*parts)


def _check_unique_ids(records: Sequence[PromptRecord], where: str) -> None:
    seen: set[str] = set()
    for i, r in enumerate(records):
        if not isinstance(r, PromptRecord):
            raise TypeError(f"{where}: records[{i}] is {type(r).__name__}, expected PromptRecord")
        if r.prompt_id in seen:
            raise ValueError(
                f"{where}: prompt_id {r.prompt_id!r} appears twice (records[{i}]); "
                "build records with make_prompt_records, which drops duplicates"
            )
        seen.add(r.prompt_id)


def split_counts(records: Iterable[PromptRecord]) -> dict[str, int]:
    """How many records each split holds (``None`` counted as ``"unsplit"``)."""
    counts = {s: 0 for s in SPLITS}
    for r in records:
        key = r.split if r.split is not None else "unsplit"
        counts[key] = counts.get(key, 0) + 1
    return counts


class PromptSplitError(UserError):
    """A prompt set too small for the split: one of train, val or eval would be empty."""


def _split_of(u: float, eval_fraction: float, val_fraction: float) -> str:
    return "eval" if u < eval_fraction else "val" if u < eval_fraction + val_fraction else "train"


def _working_fractions(units: Sequence[float], eval_fraction: float, val_fraction: float) -> tuple[float, float] | None:
    """The (eval_fraction, val_fraction) nearest the given ones, on a grid of 0.05 with each
    fraction > 0 and their sum < 0.9 (what `SimsConfig` accepts), that leaves every split
    non-empty for prompts with these hash units; None when no such pair exists."""
    grid = [round(0.05 * k, 2) for k in range(1, 18)]
    best: tuple[float, float, float] | None = None
    for e in grid:
        for v in grid:
            if e + v >= 0.9 - 1e-9:
                continue
            if {_split_of(u, e, v) for u in units} != set(SPLITS):
                continue
            distance = abs(e - eval_fraction) + abs(v - val_fraction)
            if best is None or distance < best[0] - 1e-12:
                best = (distance, e, v)
    return None if best is None else (best[1], best[2])


def split_prompts(
    records: Sequence[PromptRecord],
    eval_fraction: float = 0.25,
    val_fraction: float = 0.15,
    seed: int = 0,
    *,
    allow_empty_splits: bool = True,
) -> list[PromptRecord]:
    """Assign each record to ``"train"``, ``"val"`` or ``"eval"``; returns new records.

    A record's split depends only on ``(seed, prompt_id)``: ``u = sha256(seed, id)`` mapped to
    [0, 1) goes to eval if ``u < eval_fraction``, to val if ``u < eval_fraction +
    val_fraction``, else to train. So the split of a prompt does not change with the order of
    the records or with which other prompts are present, and fractions are met only on average.

    Raises ``ValueError`` for fractions outside [0, 1) or summing to 1 or more, and a
    `PromptSplitError` when a split with a positive fraction would be empty (naming the split and
    the counts, with advice that works: fractions that fill every split with these prompts, or
    how many prompts to add). A fraction of 0 means that split is intentionally empty; with
    ``allow_empty_splits=False`` (a SIMS run, which needs all three) the advice never suggests it.
    Output keeps input order.
    """
    for name, value in (("eval_fraction", eval_fraction), ("val_fraction", val_fraction)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if eval_fraction + val_fraction >= 1.0:
        raise ValueError(
            f"eval_fraction + val_fraction must be below 1 to leave training prompts, got "
            f"{eval_fraction} + {val_fraction} = {eval_fraction + val_fraction}"
        )
    if not records:
        raise ValueError("records is empty: nothing to split")
    _check_unique_ids(records, "split_prompts")
    units = [_unit("split", seed, r.prompt_id) for r in records]
    out = [replace(r, split=_split_of(u, eval_fraction, val_fraction)) for r, u in zip(records, units)]
    counts = split_counts(out)
    fractions = {"train": 1.0 - eval_fraction - val_fraction, "val": val_fraction, "eval": eval_fraction}
    for name in SPLITS:
        if fractions[name] > 0 and counts[name] == 0:
            shown = ", ".join(f"{s} {counts[s]}" for s in SPLITS)
            n = len(out)
            if not allow_empty_splits and n < len(SPLITS):
                hint = (
                    f"add prompts: a run needs at least {len(SPLITS)} distinct prompts (one each for train, val and "
                    "eval), and in practice dozens"
                )
            else:
                working = _working_fractions(units, eval_fraction, val_fraction)
                hint = "add prompts"
                if working is not None:
                    hint += f", or set eval_fraction={working[0]:g} and val_fraction={working[1]:g} (every split then has a prompt)"
                elif name == "train":
                    hint += " or lower eval_fraction/val_fraction"
                if allow_empty_splits and name != "train":
                    hint += f", or set {name}_fraction=0 to have no {name} split"
            raise PromptSplitError(
                f"split {name!r} would be empty with {n} prompt{'s' if n != 1 else ''}"
                f" ({shown}; eval_fraction={eval_fraction}, val_fraction={val_fraction}, "
                f"seed={seed}): {hint}"
            )
    return out


def sample_prompts(
    records: Sequence[PromptRecord],
    n: int,
    seed: int,
    iteration: int,
    *,
    split: str | None = "train",
) -> PromptSample:
    """Choose ``n`` prompts of ``split`` (default ``"train"``; ``None``: all) for an iteration.

    Deterministic from ``(seed, iteration)`` and order-independent: each candidate is ranked by
    ``sha256(seed, iteration, prompt_id)`` and the ``n`` lowest are taken, returned in input
    order. Different iterations get different (overlapping) samples.

    If fewer than ``n`` candidates exist, all of them are returned and the result's
    ``shortfall``/``message`` say so: the caller logs it (no exception, no silent truncation).
    Raises ``ValueError`` for ``n < 1``, an unknown ``split``, or no candidate at all.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer number of prompts, got {n!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
    _check_unique_ids(records, "sample_prompts")
    candidates = [r for r in records if split is None or r.split == split]
    if not candidates:
        counts = split_counts(records)
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise ValueError(
            f"no {split!r} prompts to sample from ({len(records)} records: {shown})"
            + ("; assign splits with split_prompts first" if counts.get("unsplit") else "")
        )
    ranked = sorted(candidates, key=lambda r: (_unit("sample", seed, iteration, r.prompt_id), r.prompt_id))
    chosen = {r.prompt_id for r in ranked[:n]}
    picked = [r for r in candidates if r.prompt_id in chosen]
    what = f"{split} prompts" if split else "prompts"
    if len(picked) < n:
        message = f"asked for {n} {what} at iteration {iteration} but only {len(picked)} exist: using all {len(picked)}"
    else:
        message = f"sampled {n} of {len(candidates)} {what} for iteration {iteration} (seed {seed})"
    return PromptSample(
        records=picked,
        requested=n,
        available=len(candidates),
        split=split,
        seed=seed,
        iteration=iteration,
        message=message,
    )


def unused_prompts(
    records: Sequence[PromptRecord], used: Iterable[str], limit: int | None = None
) -> tuple[list[PromptRecord], int]:
    """The records whose prompt id is not in ``used`` (a lineage's earlier draws), in source
    order, at most ``limit`` of them (None: all); and how many unused records there are."""
    used = set(used)
    fresh = [r for r in records if r.prompt_id not in used]
    return fresh[:limit], len(fresh)


def records_to_rows(records: Iterable[PromptRecord]) -> list[dict[str, str | None]]:
    """Records as dicts with the ``prompts`` artifact's columns (prompt_id, prompt, split,
    category, reference), ready for ``pandas.DataFrame(rows)``."""
    return [
        {
            "prompt_id": r.prompt_id,
            "prompt": r.prompt,
            "split": r.split,
            "category": r.category,
            "reference": r.reference,
        }
        for r in records
    ]
