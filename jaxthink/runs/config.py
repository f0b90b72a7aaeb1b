"""What every run's config shares: the model to start from (`ModelSpec`), AdamW and its schedule
(`OptimConfig`), and the run directory fields (`RunDir`; `RunFields` adds the step loop's: steps,
save and log intervals, mesh, distributed). Each run's own config composes them: `SFTConfig`
(jaxthink/sft/config.py), `RLConfig` (jaxthink/rl/config.py), `SAERunConfig` and `SteerRunConfig`
(jaxthink/hybrid/). Load any of them from YAML with `load_config(cls, path, overrides)`
(config_file.py).

Every run has a `mesh` (axis sizes data x fsdp x tensor, -1 for "the devices left"; the default
1 x 1 x 1 is one device) and a `distributed` section (when to join a multi-host run:
jaxthink.distributed.DistributedConfig).
"""

from __future__ import annotations

import dataclasses

from jaxthink.distributed import DistributedConfig
from jaxthink.sharding import MeshConfig

SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")


def positive(obj, *names: str) -> None:
    """Raises ValueError naming the first of `names` whose value on `obj` is not positive."""
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model to train: a Hugging Face checkpoint directory, or a fresh random one.

    With `checkpoint` set, the shape fields are ignored (config.json decides). Without it a new
    Qwen2/Qwen3 model of this shape is initialised from `init_seed`, with `tokenizer` = "char"
    (the demo's character vocabulary, written into the run directory) or a tokenizer directory.
    `num_kv_heads` 0 means num_heads; `head_dim` 0 means hidden_size / num_heads.
    """

    checkpoint: str = ""
    tokenizer: str = "char"
    architecture: str = "Qwen2ForCausalLM"
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 0
    head_dim: int = 0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 1024
    init_seed: int = 0
    dtype: str = "float32"  # training parameters; float32 master weights everywhere by default

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}; accepted: {', '.join(DTYPES)}")
        positive(self, "hidden_size", "intermediate_size", "num_layers", "num_heads")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay to `final_lr_ratio * lr` or a constant lr.

    Warm-up lasts `warmup_steps` optimizer updates if positive, else `warmup_ratio` of them.
    Weight decay applies to matrices only (parameters with 2+ dims), not to norms and biases.
    `clip_norm` clips the global gradient norm (0: off).
    """

    lr: float = 1e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.05
    final_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


ON_CHANGE = ("refuse", "resume", "restart")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Where a run writes, and what a rerun into the same directory does (every run has these:
    sft, rl, sae and steer).

    `run_dir` may be a local directory or a gs:// path (gs:// needs `gcsfs` installed).
    """

    run_dir: str = "runs/train"
    resume: bool = True  # continue the run in run_dir, if there is one
    # a rerun whose settings or start checkpoint differ from the run's: "refuse", "resume"
    # (continue with the new settings) or "restart" (start over, what it wrote removed)
    on_change: str = "refuse"

    def __post_init__(self):
        if self.on_change not in ON_CHANGE:
            raise ValueError(f"on_change={self.on_change!r}; accepted: {', '.join(ON_CHANGE)}")


@dataclasses.dataclass(frozen=True)
class RunFields(RunDir):
    """What every training run has besides its directory: length, checkpoint cadence, logging,
    memory, devices and hosts (checkpoints, logs and the export go into run_dir)."""

    steps: int = 1000  # optimizer steps (SFT) or on-policy rounds (RL)
    seed: int = 0  # the run's PRNG (RL rollouts, mini-batch order); data order is data.seed
    save_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    export: bool = True  # write the final model as a Hugging Face directory, run_dir/hf
    mesh: MeshConfig = dataclasses.field(default_factory=lambda: MeshConfig(1, 1, 1))
    remat: bool = False  # recompute each block in the backward pass: memory for long rows
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def __post_init__(self):
        super().__post_init__()
        positive(self, "steps", "save_every", "keep_checkpoints", "log_every")
