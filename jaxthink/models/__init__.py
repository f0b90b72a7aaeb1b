"""Qwen-architecture models: config, NNX modules, HF checkpoint loading and export."""

from jaxthink.models.checkpoint import CheckpointError, export_hf, load_params
from jaxthink.models.config import ARCHITECTURES, ConfigError, ModelConfig
from jaxthink.models.qwen import KVCache, Qwen, forward, forward_cached, init_cache

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "Qwen",
    "export_hf",
    "forward",
    "forward_cached",
    "init_cache",
    "load_params",
]
