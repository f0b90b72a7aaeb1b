"""Group-relative advantages: each response's reward against the other samples of its prompt.

Thinkless (arXiv 2505.13379) and GRPO sample G responses per prompt and use
A_i = r_i - mean(r over the group) as the advantage of every token of response i. The reference
run does not divide by the group's standard deviation; `normalize_std=True` does (population
std, ddof = 0, plus `eps`, so a group whose rewards are all equal gets zero advantages).

`mode_advantages` is the same statistic within the samples of one prompt that share a mode
(`<think>` or `<short>`). It is a baseline for the response tokens, which follow the control
token: a baseline that depends on the control token leaves their policy gradient unbiased, and
a right trace is then not pushed down because a direct answer to the same prompt was right too.

Layout: the G samples of a prompt are contiguous, rows [k*G, (k+1)*G) belong to prompt k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _groups(rewards, group_size: int) -> jax.Array:
    """rewards [B] as [B/G, G] float32, with the layout checked."""
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
    return rewards.reshape(batch // group_size, group_size)


def _relative(groups: jax.Array, members: jax.Array, normalize_std: bool, eps: float):
    """Each reward minus the mean of its row's `members` [N, G] (bool), over their std if asked."""
    count = jnp.maximum(members.sum(axis=1, keepdims=True), 1)
    mean = jnp.where(members, groups, 0.0).sum(axis=1, keepdims=True) / count
    centred = groups - mean
    if normalize_std:
        var = jnp.where(members, centred**2, 0.0).sum(axis=1, keepdims=True) / count
        centred = centred / (jnp.sqrt(var) + eps)
    return centred


def group_advantages(
    rewards: jax.Array, group_size: int, normalize_std: bool = False, eps: float = 1e-6
) -> jax.Array:
    """Advantages [B] (float32) of rewards [B] laid out as B/G contiguous groups of `group_size`.

    Works under `jax.jit` with `group_size` and `normalize_std` static.
    """
    groups = _groups(rewards, group_size)
    everyone = jnp.ones(groups.shape, bool)
    return _relative(groups, everyone, normalize_std, eps).reshape(-1)


def mode_advantages(
    rewards: jax.Array,
    think: jax.Array,
    group_size: int,
    normalize_std: bool = False,
    eps: float = 1e-6,
) -> jax.Array:
    """Advantages [B] of rewards [B] against the samples of the same prompt in the same mode.

    `think` [B] (bool) is each sample's mode. A sample alone in its mode gets zero.
    """
    groups = _groups(rewards, group_size)
    think = jnp.asarray(think, bool).reshape(groups.shape)
    in_think = _relative(groups, think, normalize_std, eps)
    in_short = _relative(groups, ~think, normalize_std, eps)
    return jnp.where(think, in_think, in_short).reshape(-1)
