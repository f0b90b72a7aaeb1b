"""The run configs of `python -m train sft|rl`: typed dataclasses with the reference defaults.

SFT defaults follow the Thinkless warm-up (docs/methods.md section 2: AdamW (0.9, 0.95), weight
decay 0.1, clip 1.0, 5% warm-up then cosine to 0.1x); RL defaults follow its DeGRPO run (G = 8,
128 prompts and 2 optimizer updates per step, temperature 0.6, constant lr 1e-6, clip 1.0; the
loss and reward defaults are `LossConfig` and `RewardConfig` themselves). Load them from YAML with
`load_config(SFTConfig, path, overrides)` (configfile.py).

Every run has a `mesh` (axis sizes data x fsdp x tensor, -1 for "the devices left"; the default
1 x 1 x 1 is one device, as before meshes) and a `distributed` section (when to join a
multi-host run: jaxthink.distributed.DistributedConfig).
"""

from __future__ import annotations

import dataclasses

from jaxthink.data.records import DataSource
from jaxthink.distributed import DistributedConfig
from jaxthink.policies.modes import parse_mode
from jaxthink.rl.losses import LossConfig
from jaxthink.rl.rewards import RewardConfig
from jaxthink.sharding import MeshConfig

SCHEDULES = ("cosine", "constant")
RESPONSES = ("both", "think", "short")
DTYPES = ("float32", "bfloat16")


def _positive(obj, *names: str) -> None:
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
        _positive(self, "hidden_size", "intermediate_size", "num_layers", "num_heads")


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
        _positive(self, "steps", "save_every", "keep_checkpoints", "log_every")


@dataclasses.dataclass(frozen=True)
class SFTConfig(RunFields):
    """Supervised warm-up on paired `<think>`/`<short>` responses (or plain responses).

    `responses` picks which of a paired record's responses become samples; `short_repeats`
    trains each short response that many times per record. Samples are packed
    into rows of `seq_len` tokens (longer ones truncated); `batch_size` rows per step.
    """

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSource = dataclasses.field(default_factory=lambda: DataSource(levels=(1,)))
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    responses: str = "both"
    short_repeats: int = 1
    seq_len: int = 512
    batch_size: int = 32
    run_dir: str = "runs/sft"

    def __post_init__(self):
        super().__post_init__()
        if self.responses not in RESPONSES:
            raise ValueError(f"responses {self.responses!r}; accepted: {', '.join(RESPONSES)}")
        _positive(self, "seq_len", "batch_size", "short_repeats")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Sampling of one RL step: `group_size` samples of each of `prompts_per_step` prompts,
    through `slots` decode slots (0: one per sample, within the engine's memory budget)."""

    mode: str = "thinkless"
    group_size: int = 8
    prompts_per_step: int = 128
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    slots: int = 0

    def __post_init__(self):
        parse_mode(self.mode)
        _positive(self, "group_size", "prompts_per_step", "temperature", "max_new_tokens")


def _rl_optim() -> OptimConfig:
    return OptimConfig(lr=1e-6, schedule="constant", warmup_ratio=0.0, b2=0.999, weight_decay=0.01)


RESPONSE_BASELINES = ("group", "mode")


@dataclasses.dataclass(frozen=True)
class RLConfig(RunFields):
    """On-policy DeGRPO / GRPO rounds: rollout, rewards, advantages, `mini_batches` updates.

    Each step's rows (prompts_per_step * group_size) are shuffled and split into `mini_batches`
    optimizer updates; each update accumulates gradients over micro-batches of
    `micro_batch_size` rows (0: the whole mini-batch at once). `normalize_std` divides the
    group-centred rewards by the group's standard deviation. `response_baseline` is what the
    response tokens' rewards are measured against: "group" (every sample of the prompt, as the
    control token and the paper) or "mode" (the prompt's samples in the same mode;
    jaxthink.rl.mode_advantages).
    """

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSource = dataclasses.field(default_factory=lambda: DataSource(levels=(1,)))
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=_rl_optim)
    normalize_std: bool = False
    response_baseline: str = "group"
    mini_batches: int = 2
    micro_batch_size: int = 0
    steps: int = 200
    save_every: int = 50
    log_every: int = 1
    run_dir: str = "runs/rl"

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "mini_batches")
        if self.response_baseline not in RESPONSE_BASELINES:
            raise ValueError(
                f"response_baseline={self.response_baseline!r}: expected one of "
                f"{RESPONSE_BASELINES}"
            )
        rows = self.rollout.prompts_per_step * self.rollout.group_size
        if rows % self.mini_batches:
            raise ValueError(
                f"mini_batches={self.mini_batches} does not divide the {rows} rows of a step "
                "(rollout.prompts_per_step * rollout.group_size)"
            )
        if self.micro_batch_size < 0 or (
            self.micro_batch_size and (rows // self.mini_batches) % self.micro_batch_size
        ):
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} must be 0 or divide the mini-batch of "
                f"{rows // self.mini_batches} rows"
            )

    @property
    def rows(self) -> int:
        return self.rollout.prompts_per_step * self.rollout.group_size

    @property
    def micro_rows(self) -> int:
        return self.micro_batch_size or self.rows // self.mini_batches
