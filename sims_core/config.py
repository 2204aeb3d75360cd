"""The one configuration object of a SIMS run, validated at the edge.

Every field has a default that runs the built-in demo (embedded SmolLM2, built-in prompts,
embedding oracle, PMI judge) on two CPU cores. ``SimsConfig.from_dict`` / ``from_yaml`` /
``with_overrides(["key=value", ...])`` build one; any bad field is a `ConfigError` naming the field,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from sims_core.errors import ConfigError

__all__ = ["ConfigError", "SimsConfig", "LEARNERS", "PAIR_STRATEGIES", "ENGINES", "ENGINE_OPTIONS"]

LEARNERS = ("hpr", "mean_diff", "linear_shift")
PAIR_STRATEGIES = ("best_worst", "top_bottom")
POSITION_CHOICES = ("all", "prompt", "generated", "last")
ENGINES = ("threads", "dask", "ray", "deployment")
# engine option -> (allowed engines, kind); kinds: "count" (int >= 1), "count0" (int >= 0), "number0"
# (number >= 0), "text" (non-empty string), "flag" (bool).
ENGINE_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "max_workers": (("threads", "deployment"), "count"),
    "address": (("dask", "ray"), "text"),
    "n_workers": (("dask",), "count"),
    "threads_per_worker": (("dask",), "count"),
    "processes": (("dask",), "flag"),
    "num_cpus": (("ray",), "count"),
    "num_gpus": (("ray",), "number0"),
    "deployment": (("deployment",), "text"),
    "timeout": (("deployment",), "number0"),
    "retries": (ENGINES, "count0"),
    "retry_delay_seconds": (ENGINES, "number0"),
    "torch_threads": (ENGINES, "count"),
}
DEFAULT_ALPHAS: dict[str, tuple[float, ...]] = {
    "mean_diff": (2.0, 4.0),
    "hpr": (0.5, 1.0),
    "linear_shift": (0.5, 1.0),
}


@dataclass(frozen=True)
class SimsConfig:
    """Parameters of a SIMS run (see README, "Configuration", for each field)."""

    # model
    model: str = "embedded"
    device: str = "auto"
    dtype: str = "auto"
    system_prompt: str | None = None
    # prompts
    prompts: str = "default"
    prompt_column: str = "prompt"
    prompt_split: str = "train"
    eval_fraction: float = 0.25
    val_fraction: float = 0.15
    max_eval_prompts: int = 40
    max_val_prompts: int = 12
    # sampling
    iterations: int = 2
    num_prompts: int = 32
    num_samples: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 32
    # oracle and pairs
    oracle: str = "embedding"
    oracle_options: dict[str, Any] = field(default_factory=dict)
    pair_strategy: str = "best_worst"
    pairs_per_prompt: int = 1
    min_margin: float = 0.0
    memory: bool = True
    buffer_budget: int = 256
    # steering
    learner: str = "mean_diff"
    learner_options: dict[str, Any] = field(default_factory=dict)
    layers: tuple[int, ...] | None = None
    top_k: int = 3
    alphas: tuple[float, ...] | None = None
    max_nll_increase: float = 0.5
    positions: str | None = None
    warm_start: bool = True
    # evaluation
    judge: str = "pmi"
    judge_options: dict[str, Any] = field(default_factory=dict)
    eval_samples: int = 2
    controls: bool = True
    control_temperature: float = 0.6
    # run
    seed: int = 0
    store: str = "./runs"
    # scale-out: results never depend on these three (they join no phase's key)
    shards: int = 1
    engine: str = "threads"
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SimsConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        hints = get_type_hints(cls)
        coerced = {key: _coerce(key, value, hints[key]) for key, value in values.items()}
        return cls(**coerced)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimsConfig:
        import yaml

        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(data).__name__}")
        return cls.from_dict(data)

    def with_overrides(self, assignments: Iterable[str]) -> SimsConfig:
        """Apply ``key=value`` strings (values parsed as YAML: ``layers=[8,12]``, ``memory=false``)."""
        import yaml

        values = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {assignment!r} must look like key=value")
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        return SimsConfig.from_dict(values)

    def replace(self, **changes: Any) -> SimsConfig:
        return SimsConfig.from_dict({**self.to_dict(), **changes})

    @property
    def alpha_grid(self) -> tuple[float, ...]:
        """The steering strengths tried on the validation prompts: ``alphas`` or the learner's
        default (mean_diff scales the mean difference, whose norm is small next to the residual
        stream; HPR scales a rotation angle, where 1 is the learned angle)."""
        if self.alphas is not None:
            return tuple(float(a) for a in self.alphas)
        return DEFAULT_ALPHAS[self.learner]

    def candidate_layers(self, num_layers: int) -> list[int]:
        """Layers whose activations are extracted and scored: ``layers`` if set (checked
        against the model), else three layers at 50%, 60% and 70% of the depth, where a
        mean-difference push helped most on the embedded model (layers 15, 18, 21 of 30; at 7-10
        the same push only degraded the text)."""
        if self.layers is not None:
            bad = [layer for layer in self.layers if layer >= num_layers]
            if bad:
                raise ConfigError(f"layers {bad} are out of range: the model has layers 0..{num_layers - 1}")
            return sorted(set(self.layers))
        return sorted({min(num_layers - 1, int(fraction * num_layers)) for fraction in (0.5, 0.6, 0.7)})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def hash_of(self, names: Iterable[str]) -> str:
        """A short stable hash of the named fields (what a phase depends on)."""
        data = self.to_dict()
        subset = {name: data[name] for name in sorted(names)}
        return hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # ---------------------------------------------------------------- checks
    def _validate(self) -> None:
        positive = (
            "shards",
            "iterations",
            "num_prompts",
            "num_samples",
            "max_new_tokens",
            "batch_size",
            "pairs_per_prompt",
            "buffer_budget",
            "top_k",
            "eval_samples",
            "max_eval_prompts",
            "max_val_prompts",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_samples < 2:
            raise ConfigError(
                f"num_samples must be at least 2 (the oracle ranks several answers per prompt), got {self.num_samples}"
            )
        if 2 * self.pairs_per_prompt > self.num_samples and self.pair_strategy == "top_bottom":
            raise ConfigError(
                f"pairs_per_prompt={self.pairs_per_prompt} needs at least {2 * self.pairs_per_prompt} samples per prompt "
                f"with pair_strategy='top_bottom', but num_samples={self.num_samples}"
            )
        for name, low, high in (
            ("temperature", 0.0, 10.0),
            ("control_temperature", 0.0, 10.0),
            ("top_p", 1e-9, 1.0),
            ("eval_fraction", 1e-9, 0.9),
            ("val_fraction", 1e-9, 0.9),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
        if self.eval_fraction + self.val_fraction >= 0.9:
            raise ConfigError(
                f"eval_fraction + val_fraction must leave prompts to train on (< 0.9), got {self.eval_fraction + self.val_fraction:g}"
            )
        if self.learner not in LEARNERS:
            raise ConfigError(f"learner must be one of {list(LEARNERS)}, got {self.learner!r}")
        if self.pair_strategy not in PAIR_STRATEGIES:
            raise ConfigError(f"pair_strategy must be one of {list(PAIR_STRATEGIES)}, got {self.pair_strategy!r}")
        if self.positions is not None and self.positions not in POSITION_CHOICES:
            raise ConfigError(
                f"positions must be one of {list(POSITION_CHOICES)} or null (the learner's default), got {self.positions!r}"
            )
        if (
            self.alphas is not None
            and not self.alphas
            or self.alphas is not None
            and any(not isinstance(a, (int, float)) or isinstance(a, bool) or a <= 0 for a in self.alphas)
        ):
            raise ConfigError(
                f"alphas must be null (the learner's default grid) or a non-empty list of positive numbers, got {self.alphas!r}"
            )
        if self.layers is not None and (
            not self.layers or any(not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in self.layers)
        ):
            raise ConfigError(
                f"layers must be null (automatic) or a non-empty list of layer indices >= 0, got {self.layers!r}"
            )
        if (
            not isinstance(self.max_nll_increase, (int, float))
            or isinstance(self.max_nll_increase, bool)
            or self.max_nll_increase < 0
        ):
            raise ConfigError(f"max_nll_increase must be a number >= 0 (nats per token), got {self.max_nll_increase!r}")
        if not isinstance(self.min_margin, (int, float)) or self.min_margin < 0:
            raise ConfigError(f"min_margin must be a number >= 0, got {self.min_margin!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("model", "prompts", "oracle", "judge", "store", "prompt_column", "device", "dtype"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        for name in ("oracle_options", "judge_options", "learner_options", "engine_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        self._validate_engine()

    def _validate_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        allowed = sorted(name for name, (engines, _) in ENGINE_OPTIONS.items() if self.engine in engines)
        for name, value in self.engine_options.items():
            if name not in allowed:
                raise ConfigError(
                    f"engine_options.{name} is not an option of engine {self.engine!r}; its options: {allowed}"
                )
            kind = ENGINE_OPTIONS[name][1]
            is_int = isinstance(value, int) and not isinstance(value, bool)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = {
                "count": is_int and value >= 1,
                "count0": is_int and value >= 0,
                "number0": is_number and value >= 0,
                "text": isinstance(value, str) and bool(value.strip()),
                "flag": isinstance(value, bool),
            }[kind]
            if not ok:
                expected = {
                    "count": "a positive integer",
                    "count0": "an integer >= 0",
                    "number0": "a number >= 0",
                    "text": "a non-empty string",
                    "flag": "true or false",
                }[kind]
                raise ConfigError(f"engine_options.{name} must be {expected}, got {value!r}")
        if self.engine == "dask" and "address" in self.engine_options:
            local_only = sorted({"n_workers", "threads_per_worker", "processes"} & set(self.engine_options))
            if local_only:
                raise ConfigError(
                    f"engine_options {local_only} size a local Dask cluster and cannot be combined with "
                    f"address={self.engine_options['address']!r} (an existing scheduler)"
                )
        if self.engine == "ray" and "address" in self.engine_options and "num_cpus" in self.engine_options:
            raise ConfigError(
                f"engine_options.num_cpus sizes a local Ray instance and cannot be combined with "
                f"address={self.engine_options['address']!r} (an existing cluster)"
            )
        if self.engine == "deployment" and "/" not in self.engine_options.get("deployment", "sims-shard/gpu"):
            raise ConfigError(
                f"engine_options.deployment must name a deployment as 'flow-name/deployment-name', "
                f"got {self.engine_options['deployment']!r}"
            )


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Lists from YAML/JSON become tuples where the field is a tuple; ints pass as floats."""
    text = str(hint)
    if value is None:
        return None
    if "tuple" in text and isinstance(value, (list, tuple)):
        return tuple(value)
    if "tuple" in text and isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    if text in ("float", "<class 'float'>") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
