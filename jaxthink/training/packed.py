"""The forward pass over packed rows: several sequences per row, each attending only to itself.

`forward(model, tokens, valid)` (jaxthink.models) runs one sequence per row. Packing puts
several training samples into one row, so attention must stay inside each sample (a
block-diagonal causal mask from the segment ids) and RoPE positions must restart at every
sample. This reuses the model's own modules (embedding, blocks, head) with that mask; with one
segment per row it is exactly `forward`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxthink.models.qwen import Qwen


def packed_mask(segment_ids: jax.Array) -> jax.Array:
    """[B, T, T] bool: query t sees key s <= t of the same segment; segment 0 is padding."""
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal & same & (segment_ids[:, None, :] > 0)


def forward_packed(
    model: Qwen, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array
) -> jax.Array:
    """Logits [B, T, V] of packed rows. segment_ids [B, T] (0 = pad), positions [B, T]."""
    mask = packed_mask(segment_ids)
    x = jnp.take(model.embed[...], tokens, axis=0)
    for layer in model.layers:
        x, _ = layer(x, positions.astype(jnp.int32), mask)
    return model.logits(x)
