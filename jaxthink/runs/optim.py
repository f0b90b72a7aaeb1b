"""The optimizer (AdamW, warm-up + cosine or constant lr, global-norm clipping) and the guarded
application of one update.

`apply_gradients` is the last stage of every jitted train step: it applies the update only if
the loss, the gradient norm and the update norm are all finite; otherwise parameters and
optimizer state come back unchanged and `finite` is False, so the host can stop the run with the
last good state intact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxthink.runs.config import OptimConfig


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else round(cfg.warmup_ratio * total)


def learning_rate(cfg: OptimConfig, total: int) -> optax.Schedule:
    """lr per optimizer update: linear warm-up from 0, then cosine to the floor or constant."""
    warmup = warmup_steps(cfg, total)
    if cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(cfg.lr)
        ramp = optax.linear_schedule(0.0, cfg.lr, warmup)
        return optax.join_schedules([ramp, optax.constant_schedule(cfg.lr)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=cfg.lr * cfg.final_lr_ratio,
    )


def decay_mask(params):
    """Weight decay on matrices (2+ dims) only: norms and biases are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total: int) -> optax.GradientTransformation:
    """AdamW of `cfg` over `total` optimizer updates (the schedule's length)."""
    adamw = optax.adamw(
        learning_rate(cfg, total),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw


def apply_gradients(tx: optax.GradientTransformation, params, opt_state, grads, loss):
    """(params, opt_state, stats): the update applied only when everything is finite.

    stats: grad_norm (before clipping), update_norm, finite (bool scalar).
    """
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    update_norm = optax.tree.norm(updates)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    stats = {"grad_norm": grad_norm, "update_norm": update_norm, "finite": finite}
    return keep(new_params, params), keep(new_opt_state, opt_state), stats
