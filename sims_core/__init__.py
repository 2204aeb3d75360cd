"""sims_core: the SIMS library (models, generation, activations, steering, oracles, buffers,
evaluation). Pure Python + torch/transformers: no Prefect, no storage I/O."""

from sims_core.activations import capture_activations
from sims_core.generation import Generation, generate
from sims_core.models import LanguageModel, load_model
from sims_core.steering.hooks import SteeringHandle, steer

__version__ = "0.1.0"

__all__ = [
    "Generation",
    "LanguageModel",
    "SteeringHandle",
    "__version__",
    "capture_activations",
    "generate",
    "load_model",
    "steer",
]
