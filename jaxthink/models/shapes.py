"""Named model shapes, as Hugging Face config.json fields: the one place they are written.

The benchmarks build random-weight models of them (`python -m infer bench`, `bench-hybrid`), and
`python -m jaxthink.memory` sizes real runs from them. `demo` is the shipped demo model's own
config.json (configs/models/char_demo.yaml is the same shape as a training config).
"""

from __future__ import annotations

import json
from pathlib import Path

_DEMO_CONFIG = Path(__file__).parents[1] / "demo_model" / "config.json"
_SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
    "rope_theta",
)

SHAPES = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_theta=1e6,
    ),
    "r1-distill-qwen-1.5b": dict(
        architectures=["Qwen2ForCausalLM"],
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        max_position_embeddings=131072,
    ),
    "r1-distill-qwen-7b": dict(
        architectures=["Qwen2ForCausalLM"],
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        max_position_embeddings=131072,
    ),
}


def demo_shape() -> dict:
    """The shipped demo model's shape (its config.json's shape fields)."""
    config = json.loads(_DEMO_CONFIG.read_text(encoding="utf-8"))
    return {key: config[key] for key in _SHAPE_KEYS if key in config}
