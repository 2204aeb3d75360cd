"""The oracle protocol, input/score validation and the registry behind `get_oracle`.

An oracle orders a model's own samples: given prompts and K candidate answers per prompt it
returns one float per candidate, higher = preferred. Scores are only compared within a prompt.
A NaN score is an error naming the oracle, the prompt and the candidate; infinite scores are
allowed here and handled (skipped and counted) where rankings become pairs.

Capabilities: each oracle class declares, as class attributes (set by the `declare_capabilities`
decorator, or written out), what callers need to know about it before building or calling it
(`oracle_info` reads them for a registered name, without building anything;
`oracle_capabilities` for an oracle or class in hand; missing attributes take the defaults):

- ``needs_reference`` (False): it compares answers with a reference answer per prompt and is
  called ``score(prompts, candidates, references=...)`` (`score_candidates` does this); called
  without references it raises an `OracleError`.
- ``can_judge`` (True): it can decide between two answers. An oracle whose scores are symmetric
  in two answers (``consensus``: each answer's agreement with the other) ranks K >= 3 samples
  but always ties a pair, so it cannot be an evaluation judge.
- ``uses_policy_model`` (False): it scores with a causal LM and, unless told otherwise
  (``model=``), with the run's base model (passed as ``lm=``): ``pmi``, ``self_judge``.
- ``comparable_scores`` (True): an answer's score does not depend on the other candidates, so
  score differences mean the same across prompts and pairs (the paired score effect is then
  a meaningful measure); False for relative scores such as ``self_judge``'s win shares.

Plugins: installed packages can add oracles under the entry-point group ``sims.oracles``
(``name = "package.module:OracleClass"``); they are listed the first time the registry is
consulted and imported only when asked for by name. A built-in name always wins.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable

from sims_core.errors import UserError

__all__ = [
    "CAPABILITY_DEFAULTS",
    "Candidates",
    "ENTRY_POINT_GROUP",
    "Oracle",
    "OracleError",
    "OracleInfo",
    "PairwiseJudge",
    "Scores",
    "check_oracle",
    "check_scores",
    "declare_capabilities",
    "get_oracle",
    "known_oracles",
    "oracle_capabilities",
    "oracle_factory",
    "oracle_info",
    "register_oracle",
    "score_candidates",
    "validate_candidates",
    "validate_references",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

ENTRY_POINT_GROUP = "sims.oracles"
CAPABILITY_DEFAULTS: dict[str, bool] = {
    "needs_reference": False,
    "can_judge": True,
    "uses_policy_model": False,
    "comparable_scores": True,
}


Candidates: TypeAlias = Sequence[Sequence[str]]
"""What an oracle scores: one list of K >= 2 answers per prompt (K may differ between prompts)."""
Scores: TypeAlias = list[list[float]]
"""What an oracle returns: one float per candidate, in the shape of its `Candidates`; higher = preferred."""


class OracleError(UserError):
    """Bad oracle input or output; the message names the oracle, prompt and candidate."""


@runtime_checkable
class Oracle(Protocol):
    """Scores K candidate answers per prompt; higher = preferred."""

    name: str

    def score(self, prompts: Sequence[str], candidates: Candidates) -> Scores: ...


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


def check_scores(oracle: str, prompts: Sequence[str], candidates: Candidates, scores: object) -> Scores:
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


def validate_references(references: object, prompts: Sequence[str], oracle: str = "oracle") -> list[str]:
    """Check ``references``: one non-empty reference answer (a string) per prompt."""
    if references is None:
        raise OracleError(
            f"{oracle}: this judge needs one reference answer per prompt; pass references= (none were given)"
        )
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise OracleError(
            f"{oracle}: references must be a list of strings (one per prompt), got {type(references).__name__}"
        )
    if len(references) != len(prompts):
        raise OracleError(
            f"{oracle}: this judge needs one reference answer per prompt, got {len(references)} for {len(prompts)} prompts"
        )
    for i, reference in enumerate(references):
        if not isinstance(reference, str) or not reference.strip():
            raise OracleError(
                f"{oracle}: the reference answer of prompt {i} ({_short(prompts[i])!r}) is "
                f"{'empty' if isinstance(reference, str) else type(reference).__name__}; it must be a non-empty string"
            )
    return list(references)


@dataclass(frozen=True)
class OracleInfo:
    """What `oracle_info` knows about a registered oracle (see the module docstring)."""

    name: str
    needs_reference: bool
    can_judge: bool
    uses_policy_model: bool
    comparable_scores: bool
    plugin: str | None = None  # the distribution that declared it, for entry-point oracles


def declare_capabilities(
    *, needs_reference: bool, can_judge: bool, uses_policy_model: bool, comparable_scores: bool
) -> Callable[[type[T]], type[T]]:
    """Class decorator: sets the four capability attributes (see the module docstring) on an
    oracle class. All four are required, so each oracle states every one at its head instead of
    leaving a reader to know the defaults."""
    flags = {
        "needs_reference": needs_reference,
        "can_judge": can_judge,
        "uses_policy_model": uses_policy_model,
        "comparable_scores": comparable_scores,
    }

    def declare(cls: type[T]) -> type[T]:
        for key, value in flags.items():
            setattr(cls, key, bool(value))
        return cls

    return declare


def oracle_capabilities(oracle: object) -> dict[str, bool]:
    """The capability attributes of an oracle, its class or factory (defaults for any it
    does not declare): ``{"needs_reference", "can_judge", "uses_policy_model",
    "comparable_scores"}``."""
    return {key: bool(getattr(oracle, key, default)) for key, default in CAPABILITY_DEFAULTS.items()}


def score_candidates(
    oracle: Oracle,
    prompts: Sequence[str],
    candidates: Candidates,
    references: Sequence[str] | None = None,
) -> Scores:
    """``oracle.score(prompts, candidates)``, with ``references=`` passed when the oracle
    ``needs_reference`` (ignored otherwise), its output checked by `check_scores`."""
    name = getattr(oracle, "name", type(oracle).__name__)
    if oracle_capabilities(oracle)["needs_reference"]:
        raw = oracle.score(prompts, candidates, references=references)  # type: ignore[call-arg]
    else:
        raw = oracle.score(prompts, candidates)
    return check_scores(name, prompts, candidates, raw)


_REGISTRY: dict[str, Callable[..., Oracle]] = {}
_PLUGINS: dict[str, importlib.metadata.EntryPoint] = {}
_PLUGIN_SOURCES: dict[str, str] = {}
_plugins_scanned = False
_plugin_lock = threading.Lock()


def register_oracle(name: str, factory: Callable[..., Oracle]) -> None:
    """Make ``get_oracle(name, **options)`` build ``factory(**options)``."""
    _REGISTRY[name] = factory


def _scan_plugins() -> None:
    """List the entry points of group ``sims.oracles`` once (nothing is imported here)."""
    global _plugins_scanned
    with _plugin_lock:
        if _plugins_scanned:
            return
        _plugins_scanned = True
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(getattr(entry, "dist", None), "name", None) or "an installed package"
            if entry.name in _REGISTRY or entry.name in _PLUGINS:
                log.warning("oracle plugin %r from %s ignored: the name is already taken", entry.name, dist)
                continue
            _PLUGINS[entry.name] = entry
            _PLUGIN_SOURCES[entry.name] = dist


def known_oracles() -> list[str]:
    """Names `get_oracle` accepts: the built-in ones, those added with `register_oracle` and
    those installed packages declare under the entry-point group ``sims.oracles``."""
    _scan_plugins()
    return sorted(set(_REGISTRY) | set(_PLUGINS))


def _unknown(name: str) -> OracleError:
    return OracleError(f"unknown oracle {name!r}; known oracles: {', '.join(known_oracles())}")


def oracle_factory(name: str) -> Callable[..., Oracle]:
    """The class or factory registered under ``name`` (to inspect its options); an oracle
    from a plugin is imported here, the first time it is asked for."""
    _scan_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in _PLUGINS:
        raise _unknown(name)
    entry = _PLUGINS[name]
    try:
        factory = entry.load()
    except Exception as exc:  # a broken plugin must not look like a sims bug
        raise OracleError(
            f"oracle {name!r} from the plugin {_PLUGIN_SOURCES[name]} ({entry.value}) could not be loaded: {exc}"
        ) from exc
    if not callable(factory):
        raise OracleError(
            f"oracle {name!r} from the plugin {_PLUGIN_SOURCES[name]} ({entry.value}) is a "
            f"{type(factory).__name__}, not a class or function that builds an oracle"
        )
    with _plugin_lock:
        _REGISTRY.setdefault(name, factory)
        _PLUGINS.pop(name, None)
    return _REGISTRY[name]


def oracle_info(name: str) -> OracleInfo:
    """The capabilities a registered oracle declares (see the module docstring), read from its
    class without building it. For ``sum`` they are the class's conservative defaults; a built
    `SumOracle` carries the ones its components give it."""
    factory = oracle_factory(name)
    return OracleInfo(name=name, plugin=_PLUGIN_SOURCES.get(name), **oracle_capabilities(factory))


def check_oracle(name: str, options: Mapping[str, Any] | None = None, *, field: str = "oracle") -> OracleInfo:
    """Check, without building it (no model is loaded), that oracle ``name`` can be built with
    ``options`` in a run: the name is registered, the options fit its signature (a model-based
    oracle receives the run's model, so ``lm`` need not be given), and an oracle class that
    defines ``check_options(**options)`` accepts them (``callable`` imports its function and
    tries it on a probe answer; ``sum`` checks each component). Returns its capabilities; an
    `OracleError` names ``field`` (``oracle`` or ``judge``) and what is wrong."""
    if not isinstance(options, Mapping):
        raise OracleError(f"{field}_options must be a mapping of option: value, got {options!r:.80}")
    factory = oracle_factory(name)
    info = oracle_info(name)
    kwargs = dict(options)
    if info.uses_policy_model and "lm" not in kwargs and "model" not in kwargs:
        kwargs["lm"] = None  # the run supplies its model
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(factory).parameters if p not in ("self", "lm")]
        raise OracleError(
            f"{field}_options {dict(options)} do not fit {field} {name!r} ({exc}); its options are: "
            f"{', '.join(allowed) or 'none'}"
        ) from None
    check = getattr(factory, "check_options", None)
    if callable(check):
        try:
            check(**dict(options))
        except OracleError as exc:
            raise OracleError(f"{field} {name!r}: {exc}") from None
    return info


def get_oracle(name: str, **options: Any) -> Oracle:
    """Build a registered oracle by name: ``"reward_model"``, ``"self_judge"``, ``"pmi"``,
    ``"embedding"``, ``"reference"``, ``"consensus"``, ``"callable"``, ``"sum"`` (or one added
    with `register_oracle` or by a plugin). Options are checked against the oracle's signature
    before it is built."""
    factory = oracle_factory(name)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise OracleError(f"bad options for oracle {name!r} ({exc}); its options are: {', '.join(allowed)}") from None
    return factory(**options)
