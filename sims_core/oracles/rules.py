"""User rules: an oracle from a Python callable, and weighted sums of oracles.

A callable is given as ``"package.module:function"`` (or as the function itself). By default it
is called per answer, ``function(prompt, answer) -> float``; with ``batched=True`` it is called
once, ``function(prompts, candidates) -> list[list[float]]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sims_core.oracles.base import (
    Candidates,
    Oracle,
    OracleError,
    Scores,
    check_scores,
    declare_capabilities,
    get_oracle,
    oracle_capabilities,
    score_candidates,
    validate_candidates,
)

__all__ = ["CallableOracle", "SumOracle", "import_callable"]


def import_callable(path: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (the function may be a dotted attribute path)."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise OracleError(f"callable {path!r} must be written 'package.module:function'")
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise OracleError(f"callable {path!r}: module {module_name!r} could not be imported ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise OracleError(f"callable {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise OracleError(f"callable {path!r} is a {type(obj).__name__}, not a function")
    return obj


@declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=False, comparable_scores=True)
@dataclass
class CallableOracle:
    """Scores with a user's function (see the module docstring for the two call forms)."""

    function: str | Callable[..., Any]
    batched: bool = False
    name: str = field(init=False, default="callable")

    def __post_init__(self) -> None:
        if isinstance(self.function, str):
            self.name = f"callable({self.function})"
            self.fn = import_callable(self.function)
        elif callable(self.function):
            self.fn = self.function
            self.name = f"callable({getattr(self.function, '__qualname__', type(self.function).__name__)})"
        else:
            raise OracleError(
                f"callable oracle: function must be 'package.module:function' or a callable, got {self.function!r}"
            )

    @classmethod
    def check_options(cls, function: Any = None, batched: Any = False) -> None:
        """Before a run: the function imports and, called on a probe (two prompts of two answers),
        returns what it must (a number per answer; with ``batched``, one list of numbers per
        prompt). Its own errors are reported, not raised as they are."""
        if not isinstance(batched, bool):
            raise OracleError(f"option batched must be true or false, got {batched!r}")
        if isinstance(function, str):
            fn = import_callable(function)
        elif callable(function):
            fn = function
        else:
            raise OracleError(f"option function must be 'package.module:function' or a callable, got {function!r:.80}")
        label = function if isinstance(function, str) else getattr(function, "__qualname__", repr(function))
        prompts = ["What is 2 + 2?", "Name a colour."]
        candidates = [["4", "5"], ["red", "a colour"]]
        try:
            if batched:
                raw = fn(prompts, candidates)
            else:
                raw = []
                for prompt, group in zip(prompts, candidates):
                    row = []
                    for answer in group:
                        value = fn(prompt, answer)
                        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                            raise OracleError(
                                f"callable {label!r} returned {value!r:.60} ({type(value).__name__}) for one answer; "
                                "with batched: false it must return one number per (prompt, answer)"
                            )
                        row.append(value)
                    raw.append(row)
        except OracleError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's function failed: say so in one sentence
            raise OracleError(
                f"callable {label!r} failed on a probe answer ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            ) from None
        try:
            check_scores(f"callable({label})", prompts, candidates, raw)
        except OracleError as exc:
            shape = "one list of numbers per prompt" if batched else "one number per answer"
            raise OracleError(f"{exc} on a probe of 2 prompts x 2 answers; it must return {shape}") from None

    def score(self, prompts: Sequence[str], candidates: Candidates) -> Scores:
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        if self.batched:
            raw = self.fn(prompts, candidates)
        else:
            raw = [[self.fn(p, a) for a in g] for p, g in zip(prompts, candidates)]
        return check_scores(self.name, prompts, candidates, raw)


def _component(spec: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(oracle name or object, weight, options) of one `SumOracle` component: ``{'name': ...,
    'weight': ..., **options}``, ``(oracle, weight)`` or ``[name, weight]`` (as YAML gives it), a
    name, or an oracle. What `check_options` checks and what `SumOracle` builds read it alike."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        if "name" not in options:
            raise OracleError(f"sum: component {spec!r:.80} needs a 'name' (the oracle to build)")
        name = options.pop("name")
        return name, options.pop("weight", 1.0), options
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        return spec[0], spec[1], {}
    if isinstance(spec, (str, Oracle)):
        return spec, 1.0, {}
    raise OracleError(
        f"sum: each component must be an oracle, a name, (oracle, weight) or {{'name': ..., 'weight': ...}}, "
        f"got {spec!r:.80}"
    )


def _build(spec: Any) -> tuple[Oracle, float]:
    oracle, weight, options = _component(spec)
    if isinstance(oracle, str):
        oracle = get_oracle(oracle, **options)
    if not isinstance(oracle, Oracle):
        raise OracleError(f"sum: component {oracle!r} is not an oracle (needs .name and .score)")
    return oracle, float(weight)


# what oracle_info("sum") reports before any component is known; a built SumOracle replaces
# them with what its components give it
@declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=False, comparable_scores=False)
@dataclass
class SumOracle:
    """Weighted sum of oracles' scores.

    Args:
        oracles: components, each an oracle, an ``(oracle or name, weight)`` pair or a mapping
            ``{"name": ..., "weight": ..., **options}``.
        standardize: z-score each component's scores within a prompt before weighting, so
            components on different scales count as their weights say.
    """

    oracles: Sequence[Any]
    standardize: bool = False
    name: str = field(init=False, default="sum")

    @classmethod
    def check_options(cls, oracles: Any = None, standardize: Any = False) -> None:
        """Before a run: each component names a registered oracle whose options fit (checked
        like the oracle itself, without building it)."""
        from sims_core.oracles.base import check_oracle

        if isinstance(oracles, (str, Mapping)) or not isinstance(oracles, Sequence) or not oracles:
            raise OracleError(f"sum: option oracles must be a non-empty list of components, got {oracles!r:.80}")
        for spec in oracles:
            name, weight, options = _component(spec)
            if not isinstance(name, str):
                continue  # an oracle object given in code
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise OracleError(f"sum: the weight of component {name!r} must be a number, got {weight!r}")
            check_oracle(name, options, field="sum component")

    def __post_init__(self) -> None:
        if isinstance(self.oracles, (str, Mapping)) or not self.oracles:
            raise OracleError("sum: oracles must be a non-empty list of components")
        self.components = [_build(spec) for spec in self.oracles]
        self.name = "sum(" + " + ".join(f"{w:g}*{o.name}" for o, w in self.components) + ")"
        parts = [oracle_capabilities(o) for o, _ in self.components]
        self.needs_reference = any(p["needs_reference"] for p in parts)
        self.can_judge = any(p["can_judge"] for p in parts)
        self.uses_policy_model = any(p["uses_policy_model"] for p in parts)
        self.comparable_scores = not self.standardize and all(p["comparable_scores"] for p in parts)

    def score(self, prompts: Sequence[str], candidates: Candidates, references: Sequence[str] | None = None) -> Scores:
        """Weighted sum of the components' scores; ``references`` go to the components that
        need them."""
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        totals = [np.zeros(len(g)) for g in candidates]
        for oracle, weight in self.components:
            part = score_candidates(oracle, prompts, candidates, references)
            for t, row in zip(totals, part):
                values = np.asarray(row, dtype=float)
                if self.standardize:
                    spread = values.std()
                    values = (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
                t += weight * values
        return check_scores(self.name, prompts, candidates, [t.tolist() for t in totals])
