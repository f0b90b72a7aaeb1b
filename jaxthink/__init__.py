"""jaxthink: efficient reasoning for Qwen- and Llama-architecture models in JAX/Flax.

NoThinking and budget forcing with parallel scaling, Thinkless (SFT + DeGRPO: learn when to think)
and the steered hybrid of a base and a thinking model, on one compiled sampler.

The folders follow the data flow: models/ (checkpoint in) -> policies/ and decode/ (sample) ->
eval/ (grade) -> rl/ (reward, update; sft/ for the warm-up) -> runs/ (what every run shares:
configs, run directory, orbax checkpoints, optimizer, mesh, logs; checkpoint out); data/ holds
the record format and the demo task, hybrid/ the whole hybrid method.
"""

from jaxthink.decode import GenerateConfig, Generation, Generations, generate
from jaxthink.hybrid.decoding import HybridGeneration, hybrid_generate
from jaxthink.loading import demo_model_dir, demo_pair_dir, load
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
    "demo_pair_dir",
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
