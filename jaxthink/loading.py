"""`jaxthink.load`: a checkpoint directory -> (model, tokenizer, config)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jaxthink import sharding
from jaxthink.models import CheckpointError, ModelConfig, Qwen, load_params
from jaxthink.tokenizer import load_tokenizer


def default_dtype():
    """float32 on CPU (XLA:CPU bf16 matmuls are slow); bfloat16 on GPU/TPU."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def load(
    path: str | Path, *, dtype=None, tokenizer: bool = True, mesh=None, rules=None
) -> tuple[Qwen, object, ModelConfig]:
    """Loads a local Hugging Face checkpoint directory (never downloads).

    Returns the NNX model (split it with `nnx.split` for a params pytree), the tokenizer from the
    same directory (None with `tokenizer=False`) and the model config. With a `mesh`, each tensor
    goes straight onto its sharding under `rules` (default: the sampling rules).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face checkpoint dir)")
    cfg = ModelConfig.from_file(path / "config.json")
    place = None
    if mesh is not None:
        sharding.check_model_fits(mesh, cfg)
        place = sharding.placer(mesh, rules or sharding.SAMPLE_RULES)
    model = load_params(path, cfg, dtype=dtype or default_dtype(), place=place)
    tok = None
    if tokenizer:
        tok = load_tokenizer(path)
    return model, tok, cfg


def demo_pair_dir() -> Path:
    """The demo's hybrid pair shipped inside the package: `base/` (a base model that has seen
    worked solutions but answers directly), `thinking/` (that base distilled on thinking traces)
    and `steering.npz` (their steering vectors and SAE); configs/demo/ makes all three."""
    path = Path(__file__).parent / "demo_pair"
    if not (path / "steering.npz").is_file():
        raise CheckpointError(
            f"{path}: the demo pair is not in this installation; give --model THINKING_DIR "
            "--base-model BASE_DIR --steering FILE"
        )
    return path


def demo_model_dir() -> Path:
    """The demo reasoner shipped inside the package (a tiny model jaxthink trained itself)."""
    path = Path(__file__).parent / "demo_model"
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: the demo model is not in this installation; give --model DIR "
            "(a Hugging Face checkpoint directory)"
        )
    return path
