"""`python -m train rl`'s config: the model, the prompts, the rollout, rewards, loss and optimizer
(load it from YAML with `jaxthink.runs.load_config(RLConfig, path, overrides)`). The defaults
follow Thinkless's DeGRPO run (docs/methods.md section 2): G = 8, 128 prompts and 2 optimizer
updates per step, temperature 0.6, constant lr 1e-6, clip 1.0."""

from __future__ import annotations

import dataclasses

from jaxthink.data.records import DataSource
from jaxthink.policies.modes import parse_mode
from jaxthink.rl.losses import LossConfig
from jaxthink.rl.rewards import RewardConfig
from jaxthink.runs.config import ModelSpec, OptimConfig, RunFields, positive


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
        positive(self, "group_size", "prompts_per_step", "temperature", "max_new_tokens")


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
        positive(self, "mini_batches")
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
