"""Process-wide caches for what tasks share within a worker: the loaded model and the oracles.

Loading the embedded model takes ~1 s from its cached float32 copy (~30 s the very first time);
every task of a flow run in the same process reuses one instance.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sims_core import LanguageModel, load_model, steer
from sims_core.config import SimsConfig
from sims_core.oracles import Oracle, get_oracle, known_oracles, oracle_factory
from sims_core.steering.steering_set import SteeringSet
from storage import ArtifactStore

__all__ = ["base_model", "exclusive", "make_oracle", "load_steering", "policy", "worker_setup"]

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str, str | None], LanguageModel] = {}
_ORACLE_CACHE: dict[tuple[str, str, int], Oracle] = {}
_MODEL_LOCKS: dict[int, threading.Lock] = {}


def worker_setup(cfg: SimsConfig) -> None:
    """Per-worker settings before a shard computes: ``engine_options.torch_threads`` caps torch's
    intra-op threads (two workers sharing cores each at full width thrash)."""
    threads = cfg.engine_options.get("torch_threads")
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextmanager
def exclusive(lm: LanguageModel) -> Iterator[None]:
    """Hold the model alone: shards that run in threads of one process share one model instance,
    and steering hooks (pi_{t-1}) on a shared module must not overlap another shard's forward."""
    with _LOCK:
        lock = _MODEL_LOCKS.setdefault(id(lm), threading.Lock())
    with lock:
        yield


def base_model(cfg: SimsConfig) -> LanguageModel:
    """The frozen base model M of a run (loaded once per process)."""
    key = (cfg.model, cfg.device, cfg.dtype, cfg.system_prompt)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, system_prompt=cfg.system_prompt)
        return _MODELS[key]


def make_oracle(name: str, options: dict[str, Any], lm: LanguageModel) -> Oracle:
    """Build an oracle/judge by name; those that read a language model get the base model
    unless their options name another one."""
    import json

    key = (name, json.dumps(options, sort_keys=True, default=str), id(lm))
    with _LOCK:
        if key in _ORACLE_CACHE:
            return _ORACLE_CACHE[key]
    kwargs = dict(options)
    if name in known_oracles():
        params = inspect.signature(oracle_factory(name)).parameters
        if "lm" in params and "lm" not in kwargs and "model" not in kwargs:
            kwargs["lm"] = lm
    oracle = get_oracle(name, **kwargs)
    with _LOCK:
        _ORACLE_CACHE[key] = oracle
    return oracle


def load_steering(store: ArtifactStore, uri: str, lm: LanguageModel) -> SteeringSet:
    """Read a steering artifact and check it fits ``lm``."""
    return SteeringSet.from_bytes(store.read_bytes(uri), model=lm, source=uri)


@contextmanager
def policy(lm: LanguageModel, steering: SteeringSet | None, positions: str | None = None) -> Iterator[None]:
    """pi_t = M composed with the iteration's steering (at its chosen alpha); M alone if None."""
    ctx = steer(lm, steering, positions=positions) if steering is not None else nullcontext()
    with ctx:
        yield
