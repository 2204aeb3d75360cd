"""Steering: hooks that edit a model's residual stream, and the learners that fit them.

pos, neg = align_pairs(pos_tokens, neg_tokens)            # token-aligned pairs
s = fit_steering("hpr", {l: pos}, {l: neg}, model=lm)     # learners: hpr, mean_diff, linear_shift
with steer(lm, s, alpha=1.0): ...
s.save("steering/"); SteeringSet.load("steering/", model=lm)
"""

from sims_core.steering.alignment import AlignStats, align_pairs
from sims_core.steering.fit import fit_steering
from sims_core.steering.gguf_export import export_gguf
from sims_core.steering.hooks import POSITIONS, Positions, SteeringHandle, SteeringSource, steer
from sims_core.steering.hpr import HPR, HPRFunction, householder_reflect, hpr_loss, pseudo_rotate, reflection_angle
from sims_core.steering.learners import LayerFunction, Learner, get_learner, known_learners, register_learner
from sims_core.steering.linear_shift import LinearShift, LinearShiftFunction
from sims_core.steering.mean_diff import MeanDiff, MeanDiffFunction
from sims_core.steering.steering_set import IncompatibleSteeringError, ModelIdentity, SteeringFileError, SteeringSet

__all__ = [
    "HPR",
    "POSITIONS",
    "AlignStats",
    "HPRFunction",
    "IncompatibleSteeringError",
    "LayerFunction",
    "Learner",
    "LinearShift",
    "LinearShiftFunction",
    "MeanDiff",
    "MeanDiffFunction",
    "ModelIdentity",
    "Positions",
    "SteeringFileError",
    "SteeringHandle",
    "SteeringSet",
    "SteeringSource",
    "align_pairs",
    "export_gguf",
    "fit_steering",
    "get_learner",
    "householder_reflect",
    "hpr_loss",
    "known_learners",
    "pseudo_rotate",
    "reflection_angle",
    "register_learner",
    "steer",
]
