"""The published hybrid algorithm without caches: the specification `jaxthink.hybrid.decoding`
reproduces, and the baseline its speed is measured against.

A plain re-implementation of the reference code's per-token loop (one prompt, greedy, the window
of one position): for every new token the whole sequence is run again through the thinking model
(reading the SAE block and p_think), through the base model unsteered, and - when the two greedy
tokens differ - through the base model once per steering coefficient, steered at the last
position. The emitted token is appended to both sequences. Each full forward is jitted; sequence
lengths are padded on the right to multiples of 32 so a run compiles a few programs, not one per
token. Nothing is batched across coefficients or shared between steps: that is the point.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxthink.hybrid.decoding import ABLATIONS, random_latent
from jaxthink.hybrid.sae import SAEParams, preactivations
from jaxthink.hybrid.sentences import center_and_normalize
from jaxthink.hybrid.vectors import SteeringVectors
from jaxthink.models.qwen import Steering, forward

_BUCKET = 32


@dataclasses.dataclass
class ReferenceResult:
    tokens: list[int]
    steered: list[bool]  # the two greedy choices differed
    latents: list[int]
    coefficients: list[int]  # index of the emitted candidate's coefficient, -1 when unsteered
    forwards: int  # full-sequence model runs made


@functools.partial(jax.jit, static_argnames=("graphdef", "sae_layer"))
def _thinking_position(graphdef, params, tokens, length, sae, sae_mean, sae_layer: int):
    """(log p_think, the SAE's `pre`) at position length - 1 of a right-padded row."""
    model = nnx.merge(graphdef, params)
    valid = jnp.arange(tokens.shape[1])[None, :] < length
    logits, hidden = forward(model, tokens, valid, capture_layer=sae_layer)
    x, _ = center_and_normalize(hidden[0, length - 1].astype(jnp.float32), sae_mean)
    return jax.nn.log_softmax(logits[0, length - 1].astype(jnp.float32)), preactivations(sae, x)


@functools.partial(jax.jit, static_argnames=("graphdef", "steer_layer"))
def _base_position(graphdef, params, tokens, length, vector=None, steer_layer: int = 0):
    """Base-model logits at position length - 1 of a right-padded row; `vector` (if given) is
    added after block `steer_layer` at that position only."""
    model = nnx.merge(graphdef, params)
    width = tokens.shape[1]
    valid = jnp.arange(width)[None, :] < length
    last = (jnp.arange(width) == length - 1)[None, :]
    steer = None if vector is None else Steering(vector, last, steer_layer)
    return forward(model, tokens, valid, steer=steer)[0, length - 1]


def _row(sequence: list[int]) -> tuple[np.ndarray, int]:
    width = -(-len(sequence) // _BUCKET) * _BUCKET
    row = np.zeros((1, width), np.int32)
    row[0, : len(sequence)] = sequence
    return row, len(sequence)


def hybrid_reference(
    thinking,
    base,
    think_prompt: Sequence[int],
    base_prompt: Sequence[int],
    steering: SteeringVectors,
    *,
    coefficients: Sequence[float],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    ablation: str = "none",
    key: jax.Array | None = None,
) -> ReferenceResult:
    """Greedy hybrid decoding of one prompt, re-running every sequence in full for every token.

    `key` is the row's PRNG key for the random-latent ablation (draw of step t:
    `random_latent(key, t, n)`, the same definition the cached loop uses).
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation {ablation!r}; accepted: {', '.join(ABLATIONS)}")
    think_def, think_params = nnx.split(thinking)
    base_def, base_params = nnx.split(base)
    sae = SAEParams(*(jnp.asarray(x, jnp.float32) for x in steering.sae))
    sae_mean = jnp.asarray(steering.sae_mean, jnp.float32)
    bias = np.asarray(steering.bias, np.float32)
    think_seq, base_seq = list(think_prompt), list(base_prompt)
    out = ReferenceResult([], [], [], [], 0)
    for step in range(max_new_tokens):
        # 1. The thinking model: p_think and the latent of the last position.
        think_logp, pre = jax.device_get(
            _thinking_position(
                think_def, think_params, *_row(think_seq), sae, sae_mean, steering.sae_layer
            )
        )
        if ablation == "random_latent":
            latent = int(random_latent(key, jnp.int32(step), steering.n_latents))
        else:
            latent = int(np.argmax(pre))
        # 2. The base model unsteered.
        base_token = int(np.argmax(_base_position(base_def, base_params, *_row(base_seq))))
        think_token = int(np.argmax(think_logp))
        out.forwards += 2
        chosen = -1
        if base_token == think_token:
            token = base_token
        else:
            # 3. One steered run per coefficient; 4. the candidate p_think rates highest.
            direction = bias if ablation == "bias_only" else bias + steering.vectors[latent]
            best = None
            for j, c in enumerate(coefficients):
                logits = _base_position(
                    base_def,
                    base_params,
                    *_row(base_seq),
                    vector=jnp.asarray(c * direction, jnp.float32),
                    steer_layer=steering.layer,
                )
                out.forwards += 1
                candidate = int(np.argmax(logits))
                if best is None or think_logp[candidate] > think_logp[best]:
                    best, chosen = candidate, j
            token = best
        think_seq.append(token)
        base_seq.append(token)
        out.tokens.append(token)
        out.steered.append(base_token != think_token)
        out.latents.append(latent)
        out.coefficients.append(chosen)
        if token in eos_ids:
            break
    return out
