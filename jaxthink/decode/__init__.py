"""Decoding: the compiled sampler, token choice, the `generate` front end, and hybrid decoding
(`hybrid_generate`: a thinking model steering a base model)."""

from jaxthink.decode.generate import Generation, generate
from jaxthink.decode.hybrid import HybridGeneration, hybrid_generate

__all__ = ["Generation", "HybridGeneration", "generate", "hybrid_generate"]
