"""Decoding: the compiled sampler, token choice, and the `generate` front end."""

from jaxthink.decode.generate import Generation, generate

__all__ = ["Generation", "generate"]
