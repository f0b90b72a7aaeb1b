"""Tiny random Qwen2 models of the demo's character vocabulary, made in JAX (no transformers).

`char_model(seed)` returns (model, tokenizer); `char_checkpoint(dir, seed)` also writes it as a
Hugging Face checkpoint directory (config.json, safetensors, tokenizer). The weight matrices are
scaled to a spread of 0.08 (as tests/hf_models.py), so greedy decoding does not collapse onto one
repeated token and two models with different seeds disagree on most tokens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
from flax import nnx

import jaxthink
from jaxthink.runs.config import ModelSpec
from jaxthink.runs.model import build_model

SHAPE = dict(hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4, num_kv_heads=2)


def char_model(seed: int = 0, **shape):
    with tempfile.TemporaryDirectory() as tmp:
        spec = ModelSpec(**{**SHAPE, **shape}, init_seed=seed, max_position_embeddings=512)
        model, tokenizer, _ = build_model(spec, tmp)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: 4.0 * x if x.ndim > 1 else x, params)
    return nnx.merge(graphdef, params), tokenizer


def char_checkpoint(directory: Path, seed: int = 0, **shape) -> Path:
    model, tokenizer = char_model(seed, **shape)
    jaxthink.export_hf(model, directory, tokenizer=tokenizer)
    return Path(directory)
