"""Tiny random-weight Qwen2 / Qwen3 / Llama checkpoints written in the real Hugging Face format.

`write_tiny_hf` builds the model with `transformers` (the reference implementation), randomises
every tensor (biases and norm scales included, so a mapping mistake cannot hide behind zeros or
ones) and saves it with `save_pretrained`: config.json + model.safetensors, exactly what a hub
checkpoint looks like.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from jaxthink.data.char_tokenizer import VOCAB, build_char_tokenizer

BASE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


CLASSES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
}


def hf_config(family: str = "qwen2", rope=None, **overrides) -> transformers.PretrainedConfig:
    """`rope`: extra rope parameters (e.g. Llama 3's scaling) beside the theta."""
    kw = {**BASE, **overrides}
    theta = kw.pop("rope_theta")
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, **(rope or {})}
    if family == "qwen3":
        kw.setdefault("head_dim", 24)  # deliberately not hidden / heads
    return CLASSES[family][0](**kw)


def tiny_hf_model(family: str = "qwen2", seed: int = 0, **overrides):
    cfg = hf_config(family, **overrides)
    torch.manual_seed(seed)
    model = CLASSES[family][1](cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


def write_tiny_hf(directory: Path, family: str = "qwen2", seed: int = 0, **overrides):
    """Saves a tiny random model to `directory`; returns the transformers model."""
    model = tiny_hf_model(family, seed, **overrides)
    model.save_pretrained(directory)
    return model


def write_char_checkpoint(directory: Path, family: str = "qwen2", seed: int = 0, **overrides):
    """A tiny random model with the demo's character tokenizer: a full checkpoint directory."""
    build_char_tokenizer(directory)
    return write_tiny_hf(directory, family, seed, vocab_size=len(VOCAB), **overrides)
