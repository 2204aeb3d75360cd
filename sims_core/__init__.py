"""sims_core: the SIMS library (models, generation, activations, steering, oracles, buffers,
evaluation). Pure Python + torch/transformers: no Prefect, no storage I/O.

    from sims_core import load_model, prepare, generate, SamplingParams
    lm = load_model("embedded")                        # or prepare(your_model, your_tokenizer, name)
    answers = generate(lm, ["Why is the sky blue?"], num_samples=4, sampling=SamplingParams())
"""

from sims_core.activations import capture_activations
from sims_core.generation import Generation, SamplingParams, generate
from sims_core.models import LanguageModel, load_model, prepare
from sims_core.steering.hooks import SteeringHandle, steer

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "LanguageModel",
    "SamplingParams",
    "SteeringHandle",
    "__version__",
    "capture_activations",
    "generate",
    "load_model",
    "prepare",
    "steer",
]
