"""Training: SFT warm-up and DeGRPO / GRPO reinforcement learning, behind `python -m train`.

    cfg = load_config(SFTConfig, "configs/sft_tiny.yaml", ["steps=100"])
    train_sft(cfg)          # -> run_dir/{checkpoints, metrics.jsonl, hf}
    train_rl(load_config(RLConfig, "configs/rl_tiny.yaml"))

Files, one idea each: config.py and configfile.py (typed run configs from YAML), model_setup.py
(the starting model), records.py and sft_data.py (grain data streams; packed rows go through
`forward(..., segment_ids=, positions=)`), optim.py (AdamW and the guarded update), sft.py and
rl.py (the two trainers and their pure step functions), rollout.py and logprobs.py (RL sampling
and scoring), mesh.py (where the training state and batches live on a mesh), checkpoint.py,
metrics.py and run.py (what every run shares). Multi-host runs: jaxthink.distributed.
"""

from jaxthink.training.config import (
    DataSource,
    ModelSpec,
    OptimConfig,
    RLConfig,
    RolloutConfig,
    SFTConfig,
)
from jaxthink.training.configfile import ConfigError, load_config
from jaxthink.training.logprobs import response_logprobs
from jaxthink.training.rl import accumulate_gradients, make_rl_update, rl_step, train_rl
from jaxthink.training.run import TrainingStopped
from jaxthink.training.sft import make_sft_step, sft_loss, train_sft

__all__ = [
    "ConfigError",
    "DataSource",
    "ModelSpec",
    "OptimConfig",
    "RLConfig",
    "RolloutConfig",
    "SFTConfig",
    "TrainingStopped",
    "accumulate_gradients",
    "load_config",
    "make_rl_update",
    "make_sft_step",
    "response_logprobs",
    "rl_step",
    "sft_loss",
    "train_rl",
    "train_sft",
]
