"""Steering: hooks that edit a model's residual stream, and the learners that fit them."""

from sims_core.steering.hooks import POSITIONS, Positions, SteeringHandle, SteeringSource, steer

__all__ = ["POSITIONS", "Positions", "SteeringHandle", "SteeringSource", "steer"]
