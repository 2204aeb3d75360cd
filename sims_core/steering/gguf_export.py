"""Export a mean-difference `SteeringSet` as a llama.cpp control vector (GGUF), as repeng does.

The file has ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the base
model's ``model_type``, e.g. ``"llama"``), ``controlvector.layer_count`` (number of direction
tensors) and one float32 tensor ``direction.<n>`` per steered layer.

Layer numbering: llama.cpp adds ``direction.<n>`` to the output of its decoder block ``n``
(0-based ``il``; ``llama_control_vector::apply_to(cur, il)`` at the end of block ``il``, and
tensor 0 never exists), and repeng writes ``direction.<layer>`` for the output of its block
``layer``. sims' layer ``l`` is also the output of block ``l``, so it is written as
``direction.<l>``. Layer 0 cannot be expressed in a llama.cpp control vector and is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sims_core.steering.steering_set import SteeringSet

__all__ = ["export_gguf"]


def export_gguf(
    steering: SteeringSet, path: str | os.PathLike[str], *, model_hint: str | None = None, scale: float = 1.0
) -> Path:
    """Write ``steering`` (a set whose learner has ``vector_export``, e.g. ``"mean_diff"``) to
    ``path`` as a llama.cpp control vector.

    Args:
        model_hint: written to ``controlvector.model_hint`` (default: the base model's
            ``model_type``, else ``"unknown"``).
        scale: multiplies every direction (on top of the set's own alpha); llama.cpp's
            ``--control-vector-scaled`` scales it again at run time.
    """
    import gguf

    from sims_core.steering.learners import get_learner

    if not get_learner(steering.learner).vector_export:
        raise ValueError(
            f"only steering sets whose layer functions are vectors (mean_diff, or a learner declaring "
            f"vector_export) can be llama.cpp control vectors; this one is {steering.learner!r}"
        )
    if 0 in steering.functions:
        raise ValueError("layer 0 cannot be exported: llama.cpp control vectors have no direction for block 0's output")
    hint = model_hint or (steering.model.model_type if steering.model is not None else None) or "unknown"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(target), "controlvector")
    writer.add_string("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(steering.layers))
    for layer in steering.layers:
        vector = steering[layer].state()["vector"].detach().to("cpu")
        data = (vector.double() * (float(scale) * float(steering.alpha))).numpy().astype(np.float32)
        writer.add_tensor(f"direction.{layer}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
