"""Log-probs and entropies of sampled responses under a model: what the RL losses consume.

A batch row is a left-padded prompt [P] followed by its right-padded response [R]; position
t = 0 of the response is the control token. One `forward` over prompt + response gives the
logits; the response token t is predicted by the logits at column P - 1 + t. Log-probs are of
logits / temperature, the distribution the sampler drew from. The rollout, old and reference
log-probs all come from this one function, so the ratio starts at exactly 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxthink.models import forward


def response_logprobs(
    model,
    prompt_tokens: jax.Array,
    prompt_valid: jax.Array,
    response_tokens: jax.Array,
    response_mask: jax.Array,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """(log-prob of each response token, entropy of each step's distribution), both [B, R] and
    zero where the response mask is 0."""
    p, r = prompt_tokens.shape[1], response_tokens.shape[1]
    mask = response_mask > 0
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    valid = jnp.concatenate([prompt_valid.astype(bool), mask], axis=1)
    logits = forward(model, tokens, valid)[:, p - 1 : p - 1 + r].astype(jnp.float32)
    logp_all = jax.nn.log_softmax(logits / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, response_tokens[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return jnp.where(mask, logp, 0.0), jnp.where(mask, entropy, 0.0)
