"""The oracle protocol, input/score validation and the registry behind `get_oracle`.

An oracle orders a model's own samples: given prompts and K candidate answers per prompt it
returns one float per candidate, higher = preferred. Scores are only compared within a prompt.
A NaN score is an error naming the oracle, the prompt and the candidate; infinite scores are
allowed here and handled (skipped and counted) where rankings become pairs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sims_core.errors import UserError

__all__ = [
    "Oracle",
    "OracleError",
    "PairwiseJudge",
    "check_scores",
    "get_oracle",
    "OracleInfo",
    "oracle_factory",
    "oracle_info",
    "known_oracles",
    "register_oracle",
    "validate_candidates",
]


class OracleError(UserError):
    """Bad oracle input or output; the message names the oracle, prompt and candidate."""


@runtime_checkable
class Oracle(Protocol):
    """Scores K candidate answers per prompt; higher = preferred."""

    name: str

    def score(self, prompts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    """A judge that compares two answers in one fixed order (before any position-bias
    correction): ``judge_pairs`` returns P(first answer is better) per pair. Used by the judge
    sanity check to measure how often the judge agrees with itself when the order is swapped."""

    name: str

    def judge_pairs(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]: ...


def _short(text: str, limit: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_candidates(
    prompts: object, candidates: object, oracle: str = "oracle"
) -> tuple[list[str], list[list[str]]]:
    """Check ``prompts`` (list of str) and ``candidates`` (one list of K >= 2 strings per
    prompt); return them as lists. K may differ between prompts."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise OracleError(f"{oracle}: prompts must be a list of strings, got {type(prompts).__name__}")
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise OracleError(
            f"{oracle}: candidates must be a list (one per prompt) of lists of strings, got {type(candidates).__name__}"
        )
    if len(candidates) == 0:
        raise OracleError(f"{oracle}: candidates is empty: give one list of K >= 2 answers per prompt")
    if len(prompts) != len(candidates):
        raise OracleError(
            f"{oracle}: got {len(prompts)} prompts but {len(candidates)} candidate lists; give one list per prompt"
        )
    out_prompts: list[str] = []
    out_candidates: list[list[str]] = []
    for i, (prompt, group) in enumerate(zip(prompts, candidates)):
        if not isinstance(prompt, str):
            raise OracleError(f"{oracle}: prompts[{i}] must be a string, got {type(prompt).__name__}")
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise OracleError(f"{oracle}: candidates[{i}] must be a list of strings, got {type(group).__name__}")
        if len(group) < 2:
            raise OracleError(
                f"{oracle}: prompt {i} ({_short(prompt)!r}) has K={len(group)} candidates; ranking needs K >= 2"
            )
        for j, answer in enumerate(group):
            if not isinstance(answer, str):
                raise OracleError(f"{oracle}: candidates[{i}][{j}] must be a string, got {type(answer).__name__}")
        out_prompts.append(prompt)
        out_candidates.append(list(group))
    return out_prompts, out_candidates


def check_scores(
    oracle: str, prompts: Sequence[str], candidates: Sequence[Sequence[str]], scores: object
) -> list[list[float]]:
    """Check an oracle's output: one float per candidate, no NaN (an error naming the oracle,
    prompt and candidate). Infinite values pass through."""
    if isinstance(scores, str) or not isinstance(scores, Sequence) or len(scores) != len(candidates):
        got = len(scores) if isinstance(scores, Sequence) else type(scores).__name__
        raise OracleError(f"oracle {oracle!r} returned {got} score lists for {len(candidates)} prompts")
    out: list[list[float]] = []
    for i, (row, group) in enumerate(zip(scores, candidates)):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != len(group):
            got = len(row) if isinstance(row, Sequence) else type(row).__name__
            raise OracleError(
                f"oracle {oracle!r} returned {got} scores for prompt {i} which has {len(group)} candidates"
            )
        values = []
        for j, value in enumerate(row):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise OracleError(
                    f"oracle {oracle!r} returned a non-number {value!r} for prompt {i} ({_short(prompts[i])!r}), "
                    f"candidate {j} ({_short(group[j])!r})"
                ) from None
            if math.isnan(number):
                raise OracleError(
                    f"oracle {oracle!r} returned NaN for prompt {i} ({_short(prompts[i])!r}), "
                    f"candidate {j} ({_short(group[j])!r})"
                )
            values.append(number)
        out.append(values)
    return out


_REGISTRY: dict[str, Callable[..., Oracle]] = {}


def register_oracle(name: str, factory: Callable[..., Oracle]) -> None:
    """Make ``get_oracle(name, **options)`` build ``factory(**options)``."""
    _REGISTRY[name] = factory


def known_oracles() -> list[str]:
    return sorted(_REGISTRY)


def oracle_factory(name: str) -> Callable[..., Oracle]:
    """The class or factory registered under ``name`` (to inspect its options)."""
    if name not in _REGISTRY:
        raise OracleError(f"unknown oracle {name!r}; known oracles: {', '.join(known_oracles())}")
    return _REGISTRY[name]


def get_oracle(name: str, **options: Any) -> Oracle:
    """Build a registered oracle by name: ``"reward_model"``, ``"self_judge"``, ``"pmi"``,
    ``"embedding"``, ``"callable"``, ``"sum"`` (or one added with `register_oracle`).
    Options are checked against the oracle's signature before it is built."""
    if name not in _REGISTRY:
        raise OracleError(f"unknown oracle {name!r}; known oracles: {', '.join(known_oracles())}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise OracleError(f"bad options for oracle {name!r} ({exc}); its options are: {', '.join(allowed)}") from None
    return factory(**options)


@dataclass(frozen=True)
class OracleInfo:
    """What sims needs to know about a registered oracle to use it from a config."""

    name: str
    needs_reference: bool
    can_judge: bool
    uses_policy_model: bool


def oracle_info(name: str) -> OracleInfo:
    """The capabilities a registered oracle declares (class attributes ``needs_reference``,
    ``can_judge``, ``uses_policy_model``)."""
    factory = oracle_factory(name)
    uses_lm = getattr(factory, "uses_policy_model", None)
    if uses_lm is None:
        uses_lm = "lm" in inspect.signature(factory).parameters
    return OracleInfo(
        name=name,
        needs_reference=bool(getattr(factory, "needs_reference", False)),
        can_judge=bool(getattr(factory, "can_judge", True)),
        uses_policy_model=bool(uses_lm),
    )
