"""jaxthink: efficient reasoning for Qwen-architecture models in JAX/Flax.

NoThinking and budget forcing with parallel scaling, Thinkless (SFT + DeGRPO: learn when to think)
and the steered hybrid of a base and a thinking model, on one compiled sampler.
"""

from jaxthink.decode import (
    GenerateConfig,
    Generation,
    Generations,
    HybridGeneration,
    generate,
    hybrid_generate,
)
from jaxthink.loading import demo_model_dir, load
from jaxthink.models import ModelConfig, Qwen, export_hf, forward, forward_cached, init_cache
from jaxthink.policies import Mode, ModeOptions, parse_mode, parse_modes

__all__ = [
    "GenerateConfig",
    "Generation",
    "Generations",
    "HybridGeneration",
    "Mode",
    "ModeOptions",
    "ModelConfig",
    "Qwen",
    "demo_model_dir",
    "export_hf",
    "forward",
    "forward_cached",
    "generate",
    "hybrid_generate",
    "init_cache",
    "load",
    "parse_mode",
    "parse_modes",
]
