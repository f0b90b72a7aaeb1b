"""Log-probs of given tokens under a model: what the SFT and RL losses consume.

`token_logprobs(model, hidden, targets)` turns the residual stream after the last block into
each position's log-prob of its target token, the entropy of that position's distribution and
whether the target is its argmax. Logits are made `chunk` positions at a time and remade in the
backward pass, so a step holds [B, chunk, V] floats, never [B, T, V]: with Qwen's 151,936-token
vocabulary the full logits of one 16k-token row alone are 10 GB in fp32.

`response_logprobs` applies it to RL rows: a left-padded prompt [P] followed by its right-padded
response [R]; position t = 0 of the response is the control token, predicted by the hidden state
at column P - 1 + t. Log-probs are of logits / temperature, the distribution the sampler drew
from. The rollout, old and reference log-probs all come from this one function, so the ratio
starts at exactly 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxthink.decode.sampling import first_argmax
from jaxthink.models import forward

LOGIT_CHUNK = 512  # positions whose logits exist at once


def token_logprobs(
    model, hidden: jax.Array, targets: jax.Array, temperature: float = 1.0, chunk: int = LOGIT_CHUNK
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-prob of `targets`, entropy, target == argmax), each [B, T], of
    softmax(logits / temperature) at every position of `hidden` [B, T, E] (the residual stream
    after the last block)."""
    b, t, e = hidden.shape
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 positions, got {chunk}")

    def one(h, y):
        logits = model.logits(h).astype(jnp.float32) / temperature
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp_all, y[..., None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        return logp, entropy, first_argmax(logits) == y  # argmax, in XLA:CPU's fast form

    if t <= chunk:
        return one(hidden, targets)
    n = -(-t // chunk)
    pad = n * chunk - t
    hs = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, e).swapaxes(0, 1)
    ys = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
    outs = jax.lax.map(jax.checkpoint(lambda hy: one(*hy)), (hs, ys))
    return tuple(x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] for x in outs)


def response_logprobs(
    model,
    prompt_tokens: jax.Array,
    prompt_valid: jax.Array,
    response_tokens: jax.Array,
    response_mask: jax.Array,
    temperature: float,
    chunk: int = LOGIT_CHUNK,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(log-prob of each response token, entropy of each step's distribution), both [B, R] and
    zero where the response mask is 0. `remat`: recompute each block in the backward pass."""
    p, r = prompt_tokens.shape[1], response_tokens.shape[1]
    mask = response_mask > 0
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    valid = jnp.concatenate([prompt_valid.astype(bool), mask], axis=1)
    hidden = forward(model, tokens, valid, return_hidden=True, remat=remat)[:, p - 1 : p - 1 + r]
    logp, entropy, _ = token_logprobs(model, hidden, response_tokens, temperature, chunk)
    return jnp.where(mask, logp, 0.0), jnp.where(mask, entropy, 0.0)
