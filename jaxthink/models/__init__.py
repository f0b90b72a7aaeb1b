"""Qwen-architecture models: config, NNX modules, HF checkpoint loading and export."""

from jaxthink.models.config import ARCHITECTURES, ConfigError, ModelConfig
from jaxthink.models.hf_format import CheckpointError, export_hf, load_params
from jaxthink.models.qwen import (
    KVCache,
    Qwen,
    Steering,
    forward,
    forward_alternatives,
    forward_cached,
    init_cache,
    residual_stream,
    segment_mask,
)

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "Qwen",
    "Steering",
    "export_hf",
    "forward",
    "forward_alternatives",
    "forward_cached",
    "init_cache",
    "load_params",
    "residual_stream",
    "segment_mask",
]
