"""Decoding: the compiled step loop, the slot engine that feeds it (continuous batching), token
choice, the `generate` front end with its `GenerateConfig`, and hybrid decoding
(`hybrid_generate`: a thinking model steering a base model)."""

from jaxthink.decode.generate import GenerateConfig, Generation, Generations, generate
from jaxthink.decode.hybrid import HybridGeneration, hybrid_generate

__all__ = [
    "GenerateConfig",
    "Generation",
    "Generations",
    "HybridGeneration",
    "generate",
    "hybrid_generate",
]
