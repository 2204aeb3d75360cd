"""What one worker process holds across tasks and flow runs, in one `WorkerRuntime` object per
process (`runtime()`): the loaded base models and oracles, the stop flag, the run locks it holds
and the configurations that passed preflight. No other module keeps process-wide state.

Loading the embedded model takes ~1 s from its cached float32 copy (~30 s the very first time);
every task of a flow run in the same process reuses one instance.

Stopping: `request_stop` (the CLI calls it on Ctrl-C or SIGTERM) makes every forward pass of a
model loaded here raise `RunInterrupted` in whichever thread runs it, so that shards computing in
worker threads stop within one forward instead of finishing their batch; `clear_stop` re-arms.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from sims_core import LanguageModel, load_model, steer
from sims_core.config import SimsConfig
from sims_core.errors import SimsError
from sims_core.hashing import canonical_json
from sims_core.oracles import Oracle, get_oracle, oracle_info
from sims_core.steering.hooks import Positions
from sims_core.steering.steering_set import SteeringSet
from storage import ArtifactStore

if TYPE_CHECKING:
    from storage import RunLock

__all__ = ["RunInterrupted", "WorkerRuntime", "load_steering", "policy", "runtime"]


class RunInterrupted(SimsError):
    """The run was asked to stop (Ctrl-C, SIGTERM) while this computation was running."""


class WorkerRuntime:
    """Models, oracles, per-model locks, the stop flag, held run locks and passed preflights of one
    worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str, str | None], LanguageModel] = {}
        self._oracles: dict[tuple[str, str, int], Oracle] = {}
        self._model_locks: dict[int, threading.Lock] = {}
        self._stop = threading.Event()
        self.held_locks: dict[tuple[str, str], RunLock] = {}
        """The run locks this process holds, by (store URL, run id): what `flows.self_improve.run_lock`
        re-enters and what an interrupted CLI releases before it exits."""
        self.preflight_passed: set[tuple[str | None, str]] = set()
        """(run id, config hash) pairs `flows.preflight.preflight` has passed in this process."""

    def request_stop(self) -> None:
        """Make every forward pass of a model loaded here raise `RunInterrupted`."""
        self._stop.set()

    def clear_stop(self) -> None:
        """Let models run again (a new run starts in this process)."""
        self._stop.clear()

    def _stop_check(self, module: Any, args: Any) -> None:
        if self._stop.is_set():
            raise RunInterrupted("the run was interrupted (Ctrl-C or SIGTERM) during a forward pass")

    def setup(self, config: SimsConfig) -> None:
        """Per-worker settings before a shard computes: ``engine_options.torch_threads`` caps torch's
        intra-op threads (two workers sharing cores each at full width thrash)."""
        threads = config.engine_options.torch_threads
        if threads is not None:
            import torch

            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

    def model(self, config: SimsConfig) -> LanguageModel:
        """The frozen base model M of a run (loaded once per process)."""
        key = (config.model, config.device, config.dtype, config.system_prompt)
        with self._lock:
            if key not in self._models:
                lm = load_model(
                    config.model, device=config.device, dtype=config.dtype, system_prompt=config.system_prompt
                )
                lm.model.register_forward_pre_hook(self._stop_check)  # reads one flag; changes nothing
                self._models[key] = lm
            return self._models[key]

    def oracle(self, name: str, options: dict[str, Any], lm: LanguageModel) -> Oracle:
        """An oracle or judge by name; those that score with the run's base model get it unless
        their options name another model."""
        key = (name, canonical_json(options), id(lm))
        with self._lock:
            if key in self._oracles:
                return self._oracles[key]
        kwargs = dict(options)
        if oracle_info(name).uses_policy_model and "lm" not in kwargs and "model" not in kwargs:
            kwargs["lm"] = lm
        oracle = get_oracle(name, **kwargs)
        with self._lock:
            return self._oracles.setdefault(key, oracle)

    @contextmanager
    def exclusive(self, lm: LanguageModel) -> Iterator[None]:
        """Hold the model alone: shards that run in threads of one process share one model instance,
        and steering hooks (pi_{t-1}) on a shared module must not overlap another shard's forward."""
        with self._lock:
            lock = self._model_locks.setdefault(id(lm), threading.Lock())
        with lock:
            yield

    @property
    def models_loaded(self) -> int:
        """How many base models this process holds."""
        return len(self._models)


_RUNTIME = WorkerRuntime()


def runtime() -> WorkerRuntime:
    """This process's runtime."""
    return _RUNTIME


def load_steering(store: ArtifactStore, uri: str, lm: LanguageModel) -> SteeringSet:
    """Read a steering artifact and check it fits ``lm``."""
    return SteeringSet.from_bytes(store.read_bytes(uri), model=lm, source=uri)


def policy(
    lm: LanguageModel, steering: SteeringSet | None, positions: Positions | None = None
) -> AbstractContextManager[Any]:
    """pi_t = M composed with the iteration's steering (at its chosen alpha); M alone if None."""
    return steer(lm, steering, positions=positions) if steering is not None else nullcontext()
