"""The registry of steering learners and the two interfaces a learner provides.

A learner turns paired (or, for mean difference, unpaired) activations of one layer into a
*layer function*: a callable ``f(h, alpha) -> h'`` on ``[..., hidden]`` tensors that can also
describe itself as tensors plus a JSON config (so a `SteeringSet` can save it). Adding a learner
is one new module: subclass `Learner`, set its class attributes (what sims needs to know to run it from
a config: its default strength grid, whether it trains on token-aligned pairs, whether it can be
exported as one vector per layer) and decorate it with `register_learner`.

A learner in your own package reaches every part of sims (the config, the CLI, `sims export`, steering
files) without an edit to sims when the package declares it as an entry point::

    # pyproject.toml of your package
    [project.entry-points."sims.learners"]
    my_learner = "my_package.steering:MyLearner"

Entry points are loaded the first time a learner name is looked up. Code that registers a learner
by importing its module (a notebook, a test) works too.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from sims_core.errors import ConfigError
from sims_core.seeding import seed_from
from sims_core.steering.training import train_pairs

__all__ = [
    "LayerFunction",
    "Learner",
    "TrainedLearner",
    "get_learner",
    "known_learners",
    "layer_seed",
    "parse_options",
    "register_learner",
]

ENTRY_POINT_GROUP = "sims.learners"
_REGISTRY: dict[str, type[Learner]] = {}
# Registration order is the order names are listed in (the built-ins first, the SIMS default first).
_BUILTIN_MODULES = (
    "sims_core.steering.hpr",
    "sims_core.steering.mean_diff",
    "sims_core.steering.linear_shift",
)
_plugins_loaded = False


@runtime_checkable
class LayerFunction(Protocol):
    """One layer's fitted steering function."""

    kind: ClassVar[str]  # the learner's registry name

    @property
    def hidden_size(self) -> int: ...

    def __call__(self, h: Tensor, alpha: float = 1.0) -> Tensor: ...

    def state(self) -> dict[str, Tensor]:
        """Its tensors (saved with safetensors), by name."""
        ...

    def config(self) -> dict[str, Any]:
        """What besides the tensors is needed to rebuild it (JSON-serialisable)."""
        ...

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any]) -> LayerFunction: ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LayerFunction: ...


class Learner(ABC):
    """A steering learner. Subclasses set the class attributes and implement `fit_layer`.

    Class attributes:
        name: registry name (``fit_steering(name, ...)``, ``learner:`` in a config).
        paired: whether row i of pos must pair with row i of neg.
        token_level: whether the pipeline extracts token-aligned rows for it (one row per aligned
            response token, `align_pairs`) rather than one mean-pooled row per answer.
        default_alphas: the strengths tried on validation prompts when the config sets no grid.
        vector_export: whether each layer's function is one additive vector (so it can be exported
            as a llama.cpp control vector); `LayerFunction.state()["vector"]` then holds it.
        default_positions: which tokens `steer` edits by default (see `steer`).
        operation: what the function does to ``h``, recorded in steering files.
        function_type: the `LayerFunction` class it produces (used to load files).
        Config: a dataclass of its options (``fit_steering(..., **options)``).
    """

    name: ClassVar[str]
    paired: ClassVar[bool] = True
    token_level: ClassVar[bool] = True
    default_alphas: ClassVar[tuple[float, ...]] = (0.5, 1.0)
    vector_export: ClassVar[bool] = False
    default_positions: ClassVar[str] = "last"
    operation: ClassVar[str]
    function_type: ClassVar[type[LayerFunction]]
    Config: ClassVar[type]

    def __init__(self, **options: Any) -> None:
        self.config = parse_options(self.Config, options, self.name)

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def steps(self, n_pos: int, n_neg: int) -> int:
        """Progress-bar units that fitting one layer takes (default 1)."""
        return 1

    @abstractmethod
    def fit_layer(
        self,
        pos: Tensor,
        neg: Tensor,
        *,
        seed: int,
        init: LayerFunction | None,
        on_step: Callable[[int], object],
    ) -> LayerFunction:
        """Fit one layer on float32 ``pos [n, d]`` and ``neg [m, d]``; start from ``init`` when
        given (warm start); call ``on_step(k)`` as progress is made."""

    @abstractmethod
    def score(self, pos_train: Tensor, neg_train: Tensor, pos_test: Tensor, neg_test: Tensor) -> float:
        """Held-out score of a layer (higher is better), used to choose layers."""


class TrainedLearner(Learner):
    """A learner that trains a network on the pairs with `train_pairs`: its ``Config`` has
    ``lr``, ``epochs``, ``batch_size``, ``warmup``, ``schedule`` (and may have ``weight_decay``)."""

    def steps(self, n_pos: int, n_neg: int) -> int:
        return self.config.epochs * math.ceil(n_pos / self.config.batch_size)

    def train(
        self,
        net: nn.Module,
        n: int,
        loss_fn: Callable[[Tensor], Tensor],
        *,
        seed: int,
        on_step: Callable[[int], object],
    ) -> None:
        """`train_pairs` with this learner's options."""
        cfg = self.config
        train_pairs(
            net,
            n,
            loss_fn,
            lr=cfg.lr,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            warmup=cfg.warmup,
            schedule=cfg.schedule,
            seed=seed,
            on_step=on_step,
            weight_decay=getattr(cfg, "weight_decay", 0.0),
        )


def register_learner(cls: type[Learner]) -> type[Learner]:
    """Class decorator: make a learner available to `fit_steering` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"learner class {cls.__name__} must set a non-empty string `name`")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"a learner named {name!r} is already registered ({existing.__module__}.{existing.__name__})")
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    """Import the built-in learners, then (once) those installed packages declare as entry points."""
    global _plugins_loaded
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        loaded = point.load()  # a Learner subclass (registered on import) or a module registering one
        if isinstance(loaded, type) and issubclass(loaded, Learner) and loaded.name not in _REGISTRY:
            register_learner(loaded)


def known_learners() -> list[str]:
    """Names of the registered learners: the built-ins first (hpr, mean_diff, linear_shift), then
    the others in the order they were registered."""
    _load_builtins()
    builtins = [cls.name for cls in _REGISTRY.values() if cls.__module__ in _BUILTIN_MODULES]
    builtins.sort(key=lambda name: _BUILTIN_MODULES.index(_REGISTRY[name].__module__))
    return builtins + [name for name in _REGISTRY if name not in builtins]


def get_learner(name: str) -> type[Learner]:
    """The learner class registered as ``name``; an error lists the known ones."""
    _load_builtins()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"unknown steering learner {name!r}; known learners: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def parse_options(config_type: type, options: dict[str, Any], learner: str) -> Any:
    """Build a learner's config dataclass from keyword options, naming any unknown one."""
    allowed = [f.name for f in dataclasses.fields(config_type)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for steering learner {learner!r}; "
            f"allowed options: {', '.join(allowed)}"
        )
    return config_type(**options)


def layer_seed(seed: int, layer: int, purpose: str = "fit") -> int:
    """A seed for one layer's random choices, derived from the run seed and the layer."""
    return seed_from(seed, layer, purpose)


def check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise a ValueError naming an option that is not a positive number (int when asked)."""
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "integer" if integer else "number"
        raise ValueError(
            f"option {name} must be a {'non-negative' if allow_zero else 'positive'} {what}, got {value!r}"
        )
