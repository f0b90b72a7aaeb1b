"""Thinkless rewards and group-relative advantages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.rl import (
    RewardConfig,
    group_advantages,
    mode_advantages,
    thinkless_reward,
    thinkless_rewards,
)

# (mode, correct, parsed, truncated_think) -> reward under the reference config (gamma = 0.5)
TABLE = [
    (("short", True, True, False), 1.0),
    (("think", True, True, False), 0.5),
    (("short", False, True, False), -1.0),
    (("think", False, True, False), -1.0),
    (("short", False, False, False), -1.0),
    (("think", False, False, False), -1.0),
    (("think", True, True, True), -1.0),  # right answer, but cut off before </think>
    (("think", True, False, True), -1.0),
    (("short", True, True, True), 1.0),  # a short response has no </think> to miss
]


@pytest.mark.parametrize(("case", "reward"), TABLE, ids=[str(c) for c, _ in TABLE])
def test_reward_table(case, reward):
    assert thinkless_reward(*case) == reward


def test_think_penalty_gamma_is_configurable():
    cfg = RewardConfig(think_penalty=0.25)
    assert thinkless_reward("think", True, True, False, cfg) == 0.75
    assert thinkless_reward("short", True, True, False, cfg) == 1.0
    assert thinkless_reward("think", False, True, False, cfg) == -1.0


def test_wrong_reward_is_configurable():
    assert thinkless_reward("short", False, True, False, RewardConfig(wrong=-0.5)) == -0.5


def test_vectorised_rewards_follow_the_table():
    cases = np.array([c for c, _ in TABLE], dtype=object)
    got = thinkless_rewards(
        cases[:, 0].astype(str), cases[:, 1], cases[:, 2], cases[:, 3].astype(bool)
    )
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [r for _, r in TABLE])


def test_a_short_response_over_max_short_tokens_is_wrong():
    cfg = RewardConfig(max_short_tokens=32)
    assert thinkless_reward("short", True, True, False, cfg, length=32) == 1.0
    assert thinkless_reward("short", True, True, False, cfg, length=33) == -1.0
    assert thinkless_reward("think", True, True, False, cfg, length=200) == 0.5
    assert thinkless_reward("short", True, True, False, RewardConfig(), length=900) == 1.0
    with pytest.raises(ValueError, match="lengths"):
        thinkless_rewards(np.array(["short"]), [True], [True], [False], cfg)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="'long'"):
        thinkless_reward("long", True, True, False)
    with pytest.raises(ValueError, match="'long'"):
        thinkless_rewards(np.array(["short", "long"]), [True] * 2, [True] * 2, [False] * 2)


REWARDS = jnp.array([1.0, -1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, -1.0, 0.5, 0.5, 1.0])


def test_group_advantages_subtract_the_group_mean():
    adv = group_advantages(REWARDS, group_size=4)
    groups = np.asarray(REWARDS).reshape(3, 4)
    np.testing.assert_allclose(adv, (groups - groups.mean(1, keepdims=True)).ravel(), atol=1e-7)
    np.testing.assert_allclose(np.asarray(adv).reshape(3, 4).sum(1), 0.0, atol=1e-6)
    assert adv.dtype == jnp.float32


def test_group_advantages_with_std_normalisation():
    adv = np.asarray(group_advantages(REWARDS, group_size=4, normalize_std=True))
    groups = np.asarray(REWARDS).reshape(3, 4)
    expected = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(adv, expected.ravel(), rtol=1e-5)
    assert not adv[4:8].any()  # an all-equal group has no signal, and no NaN


def test_group_advantages_jit():
    f = jax.jit(group_advantages, static_argnames=("group_size", "normalize_std"))
    np.testing.assert_allclose(f(REWARDS, group_size=6), group_advantages(REWARDS, 6), atol=1e-7)


def test_group_advantages_reject_a_batch_that_is_not_whole_groups():
    with pytest.raises(ValueError, match=r"12 .*group_size 5"):
        group_advantages(REWARDS, group_size=5)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        group_advantages(REWARDS, group_size=0)


THINK = jnp.array([1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0], bool)


def test_mode_advantages_subtract_the_mean_of_the_same_mode():
    adv = np.asarray(mode_advantages(REWARDS, THINK, group_size=4))
    # group 0: think {1, -1} -> mean 0; short {0.5, 0.5} -> mean 0.5
    np.testing.assert_allclose(adv[:4], [1.0, -1.0, 0.0, 0.0], atol=1e-7)
    # group 1 is all 1.0; group 2: think {-1, 0.5, 0.5} -> mean 0, short {1} alone -> 0
    np.testing.assert_allclose(adv[4:], [0.0] * 4 + [-1.0, 0.5, 0.5, 0.0], atol=1e-7)


def test_mode_advantages_with_std_normalisation():
    adv = np.asarray(mode_advantages(REWARDS, THINK, group_size=4, normalize_std=True))
    think = np.array([-1.0, 0.5, 0.5])
    expected = (think - think.mean()) / (think.std() + 1e-6)
    np.testing.assert_allclose(adv[8:11], expected, rtol=1e-5)
    np.testing.assert_allclose(adv[:2], [1.0, -1.0], rtol=1e-5)
    assert not adv[2:8].any() and adv[11] == 0.0


def test_mode_advantages_of_one_mode_equal_group_advantages():
    every = jnp.ones(12, bool)
    for normalize_std in (False, True):
        np.testing.assert_allclose(
            mode_advantages(REWARDS, every, 4, normalize_std),
            group_advantages(REWARDS, 4, normalize_std),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            mode_advantages(REWARDS, ~every, 4, normalize_std),
            group_advantages(REWARDS, 4, normalize_std),
            atol=1e-6,
        )
