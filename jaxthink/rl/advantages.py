"""Group-relative advantages: each response's reward against the other samples of its prompt.

Thinkless (arXiv 2505.13379) and GRPO sample G responses per prompt and use
A_i = r_i - mean(r over the group) as the advantage of every token of response i. The reference
run does not divide by the group's standard deviation; `normalize_std=True` does (population
std, ddof = 0, plus `eps`, so a group whose rewards are all equal gets zero advantages).

Layout: the G samples of a prompt are contiguous, rows [k*G, (k+1)*G) belong to prompt k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(
    rewards: jax.Array, group_size: int, normalize_std: bool = False, eps: float = 1e-6
) -> jax.Array:
    """Advantages [B] (float32) of rewards [B] laid out as B/G contiguous groups of `group_size`.

    Works under `jax.jit` with `group_size` and `normalize_std` static.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be a vector [B], got shape {rewards.shape}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    batch = rewards.shape[0]
    if batch % group_size:
        raise ValueError(
            f"batch of {batch} rewards is not a multiple of group_size {group_size}: "
            f"expected contiguous groups of {group_size} samples per prompt"
        )
    groups = rewards.reshape(batch // group_size, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if normalize_std:
        centred = centred / (groups.std(axis=1, keepdims=True) + eps)
    return centred.reshape(batch)
