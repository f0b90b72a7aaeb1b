"""The optimizer: learning-rate schedules, what weight decay touches, and the guarded update."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.runs.config import OptimConfig
from jaxthink.runs.optim import apply_gradients, decay_mask, learning_rate, make_optimizer

PARAMS = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}


def test_cosine_warms_up_from_zero_then_decays_to_the_floor():
    lr = learning_rate(OptimConfig(lr=1e-3, warmup_steps=10, final_lr_ratio=0.1), total=110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(0.55e-3, rel=1e-4)  # halfway down the cosine
    assert float(lr(110)) == pytest.approx(1e-4)


def test_warmup_ratio_and_the_constant_schedule():
    cfg = OptimConfig(lr=2e-3, schedule="constant", warmup_ratio=0.1)
    lr = learning_rate(cfg, total=50)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(2e-3)
    assert float(lr(49)) == pytest.approx(2e-3)
    flat = learning_rate(OptimConfig(lr=1e-6, schedule="constant", warmup_ratio=0.0), total=5)
    assert float(flat(0)) == pytest.approx(1e-6)


def test_weight_decay_touches_matrices_only():
    assert decay_mask(PARAMS) == {"kernel": True, "bias": False, "scale": False}
    tx = make_optimizer(OptimConfig(lr=0.1, warmup_ratio=0.0, weight_decay=0.5), total=10)
    zero = {k: jnp.zeros_like(v) for k, v in PARAMS.items()}
    params, _, _ = apply_gradients(tx, PARAMS, tx.init(PARAMS), zero, jnp.float32(1.0))
    assert float(params["kernel"][0, 0]) < 1.0  # decayed with a zero gradient
    np.testing.assert_array_equal(params["bias"], PARAMS["bias"])


def test_gradients_are_clipped_to_the_global_norm():
    tx = make_optimizer(OptimConfig(lr=1.0, warmup_ratio=0.0, clip_norm=1.0, b1=0.0), total=10)
    grads = {k: 100.0 * jnp.ones_like(v) for k, v in PARAMS.items()}
    _, _, stats = apply_gradients(tx, PARAMS, tx.init(PARAMS), grads, jnp.float32(0.0))
    assert float(stats["grad_norm"]) == pytest.approx(100.0 * np.sqrt(10))  # before clipping


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_a_non_finite_step_changes_nothing(bad):
    tx = make_optimizer(OptimConfig(lr=0.1, warmup_ratio=0.0), total=10)
    opt_state = tx.init(PARAMS)
    grads = {k: jnp.full_like(v, 0.5) for k, v in PARAMS.items()}
    if bad == "grad":
        grads["bias"] = grads["bias"].at[0].set(jnp.nan)
    loss = jnp.float32(jnp.nan if bad == "loss" else 1.0)
    params, new_state, stats = apply_gradients(tx, PARAMS, opt_state, grads, loss)
    assert not bool(stats["finite"])
    for key in PARAMS:
        np.testing.assert_array_equal(params[key], PARAMS[key])
    np.testing.assert_array_equal(new_state[1][0].count, opt_state[1][0].count)  # Adam's count
