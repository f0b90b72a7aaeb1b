"""What every run shares (`python -m train sft|rl|sae|steer`): typed configs read from YAML
(config.py, config_file.py), the run directory and the step loop (run.py), orbax checkpoints and
the final Hugging Face export (checkpoints.py), the starting model (model.py), AdamW and the
guarded update (optim.py), where state and batches live on a mesh (mesh.py), chunked log-probs
(logprobs.py: SFT and RL score sequences with them) and metric logs and plots (logs.py).

The runs themselves: `jaxthink.sft.loop.train_sft`, `jaxthink.rl.loop.train_rl`,
`jaxthink.hybrid.sae_run.train_sae_run` and `jaxthink.hybrid.steer_run.train_steer_run`.
"""

from jaxthink.runs.config import (
    DataSource,
    ModelSpec,
    OptimConfig,
    RLConfig,
    RolloutConfig,
    SFTConfig,
)
from jaxthink.runs.config_file import ConfigError, load_config
from jaxthink.runs.run import Interrupted, RunChanged, TrainingStopped

__all__ = [
    "ConfigError",
    "DataSource",
    "Interrupted",
    "ModelSpec",
    "OptimConfig",
    "RLConfig",
    "RolloutConfig",
    "RunChanged",
    "SFTConfig",
    "TrainingStopped",
    "load_config",
]
