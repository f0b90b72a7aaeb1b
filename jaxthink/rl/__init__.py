"""Reinforcement learning of when to think (`python -m train rl`).

rollout (G samples per prompt through the slot engine, graded) -> rewards (Thinkless reward
table) -> advantages (group-relative) -> losses (DeGRPO / GRPO with (sum, denominator)
aggregation for gradient accumulation) -> loop (the update step and the run, `train_rl`). The
package exports the pure functions; the rollout and the loop are imported from their modules.
"""

from jaxthink.rl.advantages import group_advantages, mode_advantages
from jaxthink.rl.losses import (
    LossConfig,
    Term,
    clipped_surrogate,
    combine_terms,
    k3_kl,
    loss_denominators,
    loss_terms,
    merge_terms,
    policy_loss,
    summarize_terms,
    with_denominators,
)
from jaxthink.rl.rewards import RewardConfig, thinkless_reward, thinkless_rewards

__all__ = [
    "LossConfig",
    "RewardConfig",
    "Term",
    "clipped_surrogate",
    "combine_terms",
    "group_advantages",
    "k3_kl",
    "loss_denominators",
    "loss_terms",
    "merge_terms",
    "mode_advantages",
    "policy_loss",
    "summarize_terms",
    "thinkless_reward",
    "thinkless_rewards",
    "with_denominators",
]
