"""Decoding: `generate` and its `GenerateConfig` (generate.py), the slot engine that feeds the
compiled step loop from a queue (engine.py: continuous batching), the loop itself (sampler.py) and
token choice (choice.py). Hybrid decoding is a step variant of the same loop
(`jaxthink.hybrid.decoding`)."""

from jaxthink.decode.generate import GenerateConfig, Generation, Generations, generate

__all__ = ["GenerateConfig", "Generation", "Generations", "generate"]
