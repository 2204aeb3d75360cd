"""Preference pairs and the contrast-sampling memory bank.

Sources of (prompt, chosen, rejected) pairs:

- `pairs_from_scores`: from an oracle's ranking of K answers per prompt, best vs worst
  (``"best_worst"``) or the i-th best vs the i-th worst for i < m (``"top_bottom"``), with the
  score margin kept per pair.
- `principle_contrast_pairs` (Self-Steering Optimization): the policy answers each prompt once
  under a positive and once under a negative principle (system prompts), no judge needed.

`PreferenceBuffer` is the contrast-sampling (SIMS-CS) memory bank: it keeps pairs across
iterations with their source iteration, and each update keeps the highest-margin pairs up to a
budget, de-duplicated, reporting what was kept and dropped and why. `to_dpo_records` /
`to_dpo_dataframe` / `write_dpo` export pairs as a TRL ``DPOTrainer`` dataset.

Ties, NaN, infinite scores: NaN is an error naming the oracle, prompt and candidate. A prompt
whose scores include +-inf is skipped (``"non_finite"``). Equal scores are broken by candidate
index (earlier ranks higher, deterministic) with ``ties="break"``, or the prompt is skipped with
``ties="skip"``; a pair with zero margin or identical texts is never made. Every skip is counted
in `PairSet.skipped`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sims_core.oracles.base import Candidates, Oracle, Scores, check_scores, validate_candidates

if TYPE_CHECKING:
    import pandas as pd

    from sims_core.models import LanguageModel

__all__ = [
    "BufferReport",
    "PairSet",
    "PreferenceBuffer",
    "PreferencePair",
    "pairs_from_scores",
    "principle_contrast_pairs",
    "rank_and_pair",
    "ranks",
    "to_dpo_dataframe",
    "to_dpo_records",
    "write_dpo",
]

Strategy = Literal["best_worst", "top_bottom"]
Ties = Literal["break", "skip"]


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is preferred to ``rejected`` as an answer to ``prompt``.
    ``margin`` is the score difference (>= 0); ``iteration`` where the pair was made; ``source``
    how (``"ranking"`` or ``"principle"``)."""

    prompt: str
    chosen: str
    rejected: str
    margin: float
    iteration: int = 0
    source: str = "ranking"
    chosen_score: float | None = None
    rejected_score: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.prompt, self.chosen, self.rejected)


@dataclass
class PairSet:
    """Pairs made from one batch of prompts, and how many prompts/pairs were skipped and why."""

    pairs: list[PreferencePair]
    prompts: int
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)


def pairs_from_scores(
    prompts: Sequence[str],
    candidates: Candidates,
    scores: Sequence[Sequence[float]],
    *,
    strategy: Strategy = "best_worst",
    m: int = 1,
    ties: Ties = "break",
    iteration: int = 0,
    oracle: str = "oracle",
) -> PairSet:
    """Turn per-candidate scores into pairs (see the module docstring for ties and skips).

    ``strategy="top_bottom"`` pairs rank i with rank K-1-i for i < m (needs 2m <= K; a prompt
    with fewer candidates gives fewer pairs and the shortfall is counted).
    """
    if strategy not in ("best_worst", "top_bottom"):
        raise ValueError(f"strategy must be 'best_worst' or 'top_bottom', got {strategy!r}")
    if ties not in ("break", "skip"):
        raise ValueError(f"ties must be 'break' or 'skip', got {ties!r}")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    prompts, candidates = validate_candidates(prompts, candidates, oracle)
    scores = check_scores(oracle, prompts, candidates, scores)
    skipped: Counter[str] = Counter()
    pairs: list[PreferencePair] = []
    wanted = 1 if strategy == "best_worst" else m
    for prompt, group, row in zip(prompts, candidates, scores):
        if not all(math.isfinite(s) for s in row):
            skipped["non_finite"] += 1
            continue
        if len(set(row)) == 1:
            skipped["all_tied"] += 1
            continue
        if ties == "skip" and len(set(row)) < len(row):
            skipped["tied_scores"] += 1
            continue
        order = sorted(range(len(group)), key=lambda j: (-row[j], j))  # stable: earlier index wins ties
        for i in range(min(wanted, len(group) // 2)):
            best, worst = order[i], order[len(order) - 1 - i]
            margin = row[best] - row[worst]
            if margin <= 0:
                skipped["zero_margin"] += 1
                continue
            if group[best] == group[worst]:
                skipped["identical_text"] += 1
                continue
            pairs.append(
                PreferencePair(prompt, group[best], group[worst], margin, iteration, "ranking", row[best], row[worst])
            )
        if wanted > len(group) // 2:
            skipped["too_few_candidates"] += wanted - len(group) // 2
    return PairSet(pairs, len(prompts), dict(skipped))


def ranks(scores: Sequence[float]) -> list[int]:
    """The rank of each answer among its prompt's answers: 0 for the highest score; equal scores
    rank in answer order (the earlier sample first), so ranks never depend on anything else."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    rank = [0] * len(scores)
    for position, index in enumerate(order):
        rank[index] = position
    return rank


def rank_and_pair(
    oracle: Oracle, prompts: Sequence[str], candidates: Candidates, **options: Any
) -> tuple[Scores, PairSet]:
    """Score with ``oracle`` and make pairs (options as for `pairs_from_scores`)."""
    scores = oracle.score(prompts, candidates)
    return scores, pairs_from_scores(prompts, candidates, scores, oracle=oracle.name, **options)


def principle_contrast_pairs(
    lm: LanguageModel,
    prompts: Sequence[str],
    positive_principle: str,
    negative_principle: str,
    *,
    iteration: int = 0,
    margin: float = 1.0,
    **generation: Any,
) -> PairSet:
    """Oracle-free pairs: ``lm`` answers each prompt under the positive principle (chosen) and the
    negative one (rejected), both as system prompts and with the same per-sample seeds. The
    pair's prompt is the plain prompt (steering should give the positive behaviour without the
    principle). Every pair gets the same ``margin``; identical answers are skipped and counted.
    ``generation`` options go to `sims_core.generation.generate` (max_new_tokens, temperature,
    seed, num_samples, ...)."""
    from sims_core.generation import generate

    for label, value in (("positive_principle", positive_principle), ("negative_principle", negative_principle)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{label} must be a non-empty string (a system prompt)")
    if "system_prompt" in generation:
        raise ValueError("principle_contrast_pairs sets the system prompt itself; do not pass system_prompt")
    good = generate(lm, prompts, system_prompt=positive_principle, **generation)
    bad = generate(lm, prompts, system_prompt=negative_principle, **generation)
    pairs: list[PreferencePair] = []
    skipped: Counter[str] = Counter()
    for prompt, g_row, b_row in zip(prompts, good, bad):
        for g, b in zip(g_row, b_row):
            if g.text == b.text:
                skipped["identical_text"] += 1
                continue
            pairs.append(PreferencePair(prompt, g.text, b.text, float(margin), iteration, "principle"))
    return PairSet(pairs, len(prompts), dict(skipped))


@dataclass(frozen=True)
class BufferReport:
    """What one `PreferenceBuffer.update` did: pairs offered (new), kept in the bank after the
    update, and dropped by reason (``duplicate``, ``contradicted``, ``below_margin``, ``too_old``,
    ``over_budget``; counted over new and previously kept pairs alike)."""

    iteration: int
    offered: int
    kept: int
    new_kept: int
    dropped: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class PreferenceBuffer:
    """Contrast-sampling memory bank (SIMS-CS).

    Args:
        budget: at most this many pairs kept after each update (None: no limit), the highest
            margins first (ties: newer iteration, then text order, so it is deterministic).
        min_margin: pairs with a smaller margin are dropped.
        max_age: pairs made more than this many iterations before the update are dropped.
    """

    budget: int | None = None
    min_margin: float = 0.0
    max_age: int | None = None
    pairs: list[PreferencePair] = field(default_factory=list)
    history: list[BufferReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"budget must be a positive integer or None, got {self.budget!r}")
        if self.max_age is not None and (not isinstance(self.max_age, int) or self.max_age < 0):
            raise ValueError(f"max_age must be a non-negative integer or None, got {self.max_age!r}")

    def __len__(self) -> int:
        return len(self.pairs)

    def update(self, new_pairs: Iterable[PreferencePair] | PairSet, iteration: int) -> BufferReport:
        """Merge ``new_pairs`` (made at ``iteration``) into the bank and re-select."""
        incoming = list(new_pairs.pairs if isinstance(new_pairs, PairSet) else new_pairs)
        for i, pair in enumerate(incoming):
            if not isinstance(pair, PreferencePair):
                raise TypeError(f"new_pairs[{i}] must be a PreferencePair, got {type(pair).__name__}")
            if not math.isfinite(pair.margin):
                raise ValueError(f"new_pairs[{i}] has margin {pair.margin}; margins must be finite")
        dropped: Counter[str] = Counter()
        rank = lambda p: (-p.margin, -p.iteration, p.prompt, p.chosen, p.rejected)  # noqa: E731
        best: dict[tuple[str, str, str], PreferencePair] = {}
        for pair in sorted(self.pairs + incoming, key=rank):
            if pair.key in best:
                dropped["duplicate"] += 1
            else:
                best[pair.key] = pair
        kept: list[PreferencePair] = []
        for pair in sorted(best.values(), key=rank):
            reverse = (pair.prompt, pair.rejected, pair.chosen)
            if reverse in best and rank(best[reverse]) < rank(pair):
                dropped["contradicted"] += 1  # the opposite preference has the larger margin
            elif pair.margin < self.min_margin:
                dropped["below_margin"] += 1
            elif self.max_age is not None and iteration - pair.iteration > self.max_age:
                dropped["too_old"] += 1
            else:
                kept.append(pair)
        if self.budget is not None and len(kept) > self.budget:
            dropped["over_budget"] += len(kept) - self.budget
            kept = kept[: self.budget]
        new_keys = {p.key for p in incoming}
        old_keys = {p.key for p in self.pairs}
        self.pairs = kept
        report = BufferReport(
            iteration,
            len(incoming),
            len(kept),
            sum(1 for p in kept if p.key in new_keys and p.key not in old_keys),
            dict(dropped),
        )
        self.history.append(report)
        return report

    def to_dataframe(self) -> pd.DataFrame:
        """All fields of the kept pairs (the buffer artifact)."""
        import pandas as pd

        columns = list(PreferencePair.__dataclass_fields__)
        return pd.DataFrame([asdict(p) for p in self.pairs], columns=columns)


def to_dpo_records(
    pairs: Iterable[PreferencePair] | PairSet | PreferenceBuffer,
    *,
    conversational: bool = False,
    metadata: bool = False,
) -> list[dict[str, Any]]:
    """Pairs as TRL DPO rows: ``{"prompt", "chosen", "rejected"}`` plain strings (TRL's
    "standard" format), or with ``conversational=True`` message lists (TRL then applies the
    chat template). ``metadata=True`` adds margin, iteration and source columns."""
    items = pairs.pairs if isinstance(pairs, (PairSet, PreferenceBuffer)) else list(pairs)
    rows = []
    for p in items:
        if conversational:
            row: dict[str, Any] = {
                "prompt": [{"role": "user", "content": p.prompt}],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
        else:
            row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        if metadata:
            row.update(margin=p.margin, iteration=p.iteration, source=p.source)
        rows.append(row)
    return rows


def to_dpo_dataframe(pairs: Iterable[PreferencePair] | PairSet | PreferenceBuffer, **options: Any) -> pd.DataFrame:
    """`to_dpo_records` as a pandas DataFrame (columns prompt, chosen, rejected first)."""
    import pandas as pd

    records = to_dpo_records(pairs, **options)
    columns = ["prompt", "chosen", "rejected"] + (["margin", "iteration", "source"] if options.get("metadata") else [])
    return pd.DataFrame(records, columns=columns)


def write_dpo(
    pairs: Iterable[PreferencePair] | PairSet | PreferenceBuffer, path: str | os.PathLike[str], **options: Any
) -> Path:
    """Write a local DPO dataset: ``.parquet`` or ``.jsonl`` by the path's suffix (for remote
    URLs and atomic writes use storage/). Returns the path."""
    target = Path(path)
    frame = to_dpo_dataframe(pairs, **options)
    if target.suffix == ".parquet":
        frame.to_parquet(target, index=False)
    elif target.suffix == ".jsonl":
        frame.to_json(target, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"write_dpo: path must end in .parquet or .jsonl, got {str(path)!r}")
    return target
