"""Generation: one entry point, :func:`r1lab.rollout.generate.generate`."""

from r1lab.rollout.generate import Rollout, generate

__all__ = ["Rollout", "generate"]
