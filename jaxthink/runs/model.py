"""The model a run starts from: a Hugging Face checkpoint, or a fresh model of a given shape.

A fresh model gets a real `ModelConfig` (built through `ModelConfig.from_hf`, so it exports as a
normal config.json) and its tokenizer is saved into the run directory, so the run is
self-contained: the exported `run_dir/hf` holds weights, config and tokenizer. On a mesh the
parameters are placed by the training rules (a checkpoint's tensors go straight to their
shards).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxthink.data.char_tokenizer import build_char_tokenizer
from jaxthink.data.records import MODE_OPTIONS
from jaxthink.distributed import is_main
from jaxthink.loading import load
from jaxthink.models import ModelConfig, Qwen
from jaxthink.runs.config import ModelSpec
from jaxthink.runs.mesh import Layout
from jaxthink.sharding import TRAIN_RULES, check_model_fits
from jaxthink.tokenizer import load_tokenizer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def hf_config(spec: ModelSpec, tokenizer) -> dict:
    """The config.json of a fresh model of `spec`'s shape for this tokenizer. A character model
    also names the mode options of the demo task's response format."""
    head_dim = spec.head_dim or spec.hidden_size // spec.num_heads
    own = {}
    if spec.tokenizer == "char":
        own = {"mode_options": dict(MODE_OPTIONS)}
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
        **own,
    }


def fresh_tokenizer(spec: ModelSpec, run_dir: Path):
    """The tokenizer of a fresh model: the character vocabulary ("char") or a directory's.
    The character tokenizer's files go to `run_dir/tokenizer`, written by the main process only;
    the others, and a remote run_dir (gs://), use a local temporary directory (the export
    carries the tokenizer either way)."""
    if spec.tokenizer == "char":
        if "://" in str(run_dir) or not is_main():
            run_dir = Path(tempfile.mkdtemp(prefix="jaxthink-tokenizer-"))
        return load_tokenizer(build_char_tokenizer(Path(run_dir) / "tokenizer"))
    return load_tokenizer(spec.tokenizer)


def build_model(spec: ModelSpec, run_dir, mesh: Mesh | None = None):
    """(model, tokenizer, model config) for a run; `run_dir` receives a fresh model's tokenizer.
    With a `mesh`, the parameters live on it, sharded by `TRAIN_RULES`."""
    dtype = _DTYPES[spec.dtype]
    if spec.checkpoint:
        return load(spec.checkpoint, dtype=dtype, mesh=mesh, rules=TRAIN_RULES)
    tokenizer = fresh_tokenizer(spec, run_dir)
    cfg = ModelConfig.from_hf(hf_config(spec, tokenizer), source="model spec")
    model = Qwen(cfg, dtype=dtype, rngs=nnx.Rngs(spec.init_seed))
    if mesh is not None:
        check_model_fits(mesh, cfg)
        graphdef, params = nnx.split(model)
        model = nnx.merge(graphdef, Layout.of(params, mesh).place(params))
    return model, tokenizer, cfg
