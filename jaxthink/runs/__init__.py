"""What every run shares (`python -m train sft|rl|sae|steer`): typed configs read from YAML
(config.py, config_file.py), the run directory and the step loop (run.py), orbax checkpoints and
the final Hugging Face export (checkpoints.py), the starting model (model.py), AdamW and the
guarded update (optim.py), where state and batches live on a mesh (mesh.py), chunked log-probs
(logprobs.py: SFT and RL score sequences with them) and metric logs and plots (logs.py).

Each run lives with its own config: `jaxthink.sft` (config.py `SFTConfig`, loop.py `train_sft`),
`jaxthink.rl` (config.py `RLConfig`, loop.py `train_rl`) and `jaxthink.hybrid` (sae_run.py,
steer_run.py).
"""

from jaxthink.runs.config import ModelSpec, OptimConfig, RunDir, RunFields
from jaxthink.runs.config_file import ConfigError, load_config
from jaxthink.runs.run import Interrupted, RunChanged, TrainingStopped

__all__ = [
    "ConfigError",
    "Interrupted",
    "ModelSpec",
    "OptimConfig",
    "RunChanged",
    "RunDir",
    "RunFields",
    "TrainingStopped",
    "load_config",
]
