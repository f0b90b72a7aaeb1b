"""The model a run starts from: a Hugging Face checkpoint, or a fresh model of a given shape.

A fresh model gets a real `ModelConfig` (built through `ModelConfig.from_hf`, so it exports as a
normal config.json) and its tokenizer is saved into the run directory, so the run is
self-contained: the exported `run_dir/hf` holds weights, config and tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from jaxthink.loading import load
from jaxthink.models import ModelConfig, Qwen
from jaxthink.tokenizer import load_tokenizer
from jaxthink.training.config import ModelSpec

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def hf_config(spec: ModelSpec, tokenizer) -> dict:
    """The config.json of a fresh model of `spec`'s shape for this tokenizer."""
    head_dim = spec.head_dim or spec.hidden_size // spec.num_heads
    return {
        "architectures": [spec.architecture],
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads or spec.num_heads,
        "head_dim": head_dim,
        "rope_theta": spec.rope_theta,
        "rms_norm_eps": spec.rms_norm_eps,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_act": "silu",
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "dtype": "float32",
    }


def fresh_tokenizer(spec: ModelSpec, run_dir: Path):
    """The tokenizer of a fresh model: the character vocabulary ("char") or a directory's."""
    if spec.tokenizer == "char":
        from jaxthink.data.char_tokenizer import build_char_tokenizer

        return load_tokenizer(build_char_tokenizer(run_dir / "tokenizer"))
    return load_tokenizer(spec.tokenizer)


def build_model(spec: ModelSpec, run_dir: str | Path) -> tuple[Qwen, object, ModelConfig]:
    """(model, tokenizer, model config) for a run; `run_dir` receives a fresh model's tokenizer."""
    dtype = _DTYPES[spec.dtype]
    if spec.checkpoint:
        return load(spec.checkpoint, dtype=dtype)
    tokenizer = fresh_tokenizer(spec, Path(run_dir))
    cfg = ModelConfig.from_hf(hf_config(spec, tokenizer), source="model spec")
    model = Qwen(cfg, dtype=dtype, rngs=nnx.Rngs(spec.init_seed))
    return model, tokenizer, cfg
