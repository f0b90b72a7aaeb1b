"""Log-probs of given tokens under a model: what the SFT and RL losses consume.

`token_logprobs(model, hidden, targets)` turns the residual stream after the last block into
each position's log-prob of its target token, the entropy of that position's distribution and
whether the target is its argmax. Logits are made a chunk of positions of every row at a time
and remade in the backward pass, so a step holds [B, chunk, V] floats, never [B, T, V]: with
Qwen's 151,936-token vocabulary the full logits of one 16k-token row alone are 10 GB in fp32.
The chunk is sized to the vocabulary and the rows (`logit_chunk`): about LOGIT_ELEMENTS logits,
which is also where XLA:CPU's head product runs fastest (3x its speed at 4096 x 151,936).
The backward pass of a chunk is one elementwise pass over its logits (`_softmax_grad`).

`response_logprobs` applies it to RL rows: a left-padded prompt [P] followed by its right-padded
response [R]; position t = 0 of the response is the control token, predicted by the hidden state
at column P - 1 + t. Log-probs are of logits / temperature, the distribution the sampler drew
from. The rollout, old and reference log-probs all come from this one function, so the ratio
starts at exactly 1.

`head_gradients` is the fused form for a loss that is a sum of per-position terms
f_t(log-prob_t, entropy_t) (the RL losses are): each chunk's logits are made once, the loss's
per-position derivatives taken from them, and the gradients of the head and of the residual
stream accumulated on the spot - three head products per chunk instead of autodiff's four
(forward, remade forward, two backward), and no second pass over the logits. Its logits are
laid out vocabulary-major, [V, positions]: the head's gradient is then a plain [V, c] x [c, E]
product, and XLA:CPU runs all three products and the sums over the vocabulary faster than on
[positions, V] logits. A chunk's logits are its only [V, c] array: the sums over the
vocabulary make their exponentials inside their own passes and the gradient is written over
the logits, so a chunk twice as wide as `logit_chunk`'s (FUSED_CHUNK_SCALE) takes two thirds
of the memory of the three arrays its [positions, V] form kept. Chunks past the longest
response are skipped. `head_surrogate` hands the gradients back to autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxthink.decode.choice import first_argmax
from jaxthink.models import forward

LOGIT_CHUNK = 512  # the most positions of a row whose logits exist at once
LOGIT_ELEMENTS = 3 << 23  # logits of one chunk, [B, chunk, V]: 96 MiB in fp32
FUSED_CHUNK_SCALE = 2  # `head_gradients`' chunk, in `logit_chunk`s: its products run faster
HEAD = ("final_norm", "embed", "lm_head")  # what `model.logits` reads


def logit_chunk(rows: int, vocab_size: int) -> int:
    """Positions per row whose logits exist at once: LOGIT_ELEMENTS over rows x vocabulary,
    between 1 and LOGIT_CHUNK."""
    return max(1, min(LOGIT_CHUNK, LOGIT_ELEMENTS // max(rows * vocab_size, 1)))


@jax.custom_vjp
def _logp_entropy(z: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log softmax(z)[y], entropy of softmax(z)) over the last axis of fp32 logits `z`."""
    return _softmax_stats(z, y)[:2]


def _softmax_stats(z, y):
    """(log-prob of y, entropy, log-sum-exp): two passes over z (its max, then both sums)."""
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1)
    log_s = jnp.log(s)
    lse = m[..., 0] + log_s
    logp = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0] - lse
    entropy = log_s - jnp.sum(e * (z - m), axis=-1) / s  # -sum p log p, with p = e / s
    return logp, entropy, lse


def _softmax_grad(z, y, lse, entropy, g_logp, g_entropy):
    """d(g_logp . logp_y + g_entropy . H)/dz in one pass: with log p = z - lse,
    d logp_y / dz_k = [k = y] - p_k and dH / dz_k = -p_k (log p_k + H)."""
    logq = z - lse[..., None]
    p = jnp.exp(logq)
    hit = jnp.arange(z.shape[-1]) == y[..., None]
    scale = g_logp[..., None] + g_entropy[..., None] * (logq + entropy[..., None])
    return jnp.where(hit, g_logp[..., None], 0.0) - p * scale


def _logp_entropy_fwd(z, y):
    logp, entropy, lse = _softmax_stats(z, y)
    return (logp, entropy), (z, y, lse, entropy)


def _logp_entropy_bwd(res, g):
    z, y, lse, entropy = res
    return _softmax_grad(z, y, lse, entropy, *g), None


_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


def _chunked(x: jax.Array, n: int, chunk: int) -> jax.Array:
    """[B, T, ...] -> [n, B, chunk, ...], T zero-padded to n * chunk."""
    pad = n * chunk - x.shape[1]
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return x.reshape(x.shape[0], n, chunk, *x.shape[2:]).swapaxes(0, 1)


def _unchunked(x: jax.Array, t: int) -> jax.Array:
    """[n, B, chunk, ...] -> [B, t, ...]."""
    x = x.swapaxes(0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


def token_logprobs(
    model,
    hidden: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    chunk: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-prob of `targets`, entropy, target == argmax), each [B, T], of
    softmax(logits / temperature) at every position of `hidden` [B, T, E] (the residual stream
    after the last block). `chunk`: positions per row at once (default `logit_chunk`)."""
    b, t, _ = hidden.shape
    chunk = logit_chunk(b, model.cfg.vocab_size) if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 positions, got {chunk}")

    def one(h, y):
        logits = model.logits(h).astype(jnp.float32) / temperature
        logp, entropy = _logp_entropy(logits, y)
        return logp, entropy, first_argmax(logits) == y  # argmax, in XLA:CPU's fast form

    if t <= chunk:
        return one(hidden, targets)
    n = -(-t // chunk)
    outs = jax.lax.map(
        jax.checkpoint(lambda hy: one(*hy)),
        (_chunked(hidden, n, chunk), _chunked(targets, n, chunk)),
    )
    return tuple(_unchunked(x, t) for x in outs)


def response_hidden(
    model, prompt_tokens, prompt_valid, response_tokens, response_mask, remat: bool = False
) -> jax.Array:
    """The residual stream [B, R, E] that predicts each response token (column P - 1 + t)."""
    p, r = prompt_tokens.shape[1], response_tokens.shape[1]
    tokens = jnp.concatenate([prompt_tokens, response_tokens], axis=1)
    valid = jnp.concatenate([prompt_valid.astype(bool), response_mask > 0], axis=1)
    return forward(model, tokens, valid, return_hidden=True, remat=remat)[:, p - 1 : p - 1 + r]


def response_logprobs(
    model,
    prompt_tokens: jax.Array,
    prompt_valid: jax.Array,
    response_tokens: jax.Array,
    response_mask: jax.Array,
    temperature: float,
    chunk: int | None = None,
    remat: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(log-prob of each response token, entropy of each step's distribution), both [B, R] and
    zero where the response mask is 0. `remat`: recompute each block in the backward pass."""
    hidden = response_hidden(
        model, prompt_tokens, prompt_valid, response_tokens, response_mask, remat
    )
    logp, entropy, _ = token_logprobs(model, hidden, response_tokens, temperature, chunk)
    mask = response_mask > 0
    return jnp.where(mask, logp, 0.0), jnp.where(mask, entropy, 0.0)


def split_head(model):
    """(graphdef, head, rest): `model`'s state split into what `model.logits` reads and the rest."""
    return nnx.split(model, lambda path, _: path[0] in HEAD, ...)


def head_gradients(
    model,
    hidden: jax.Array,
    targets: jax.Array,
    temperature: float,
    token_grads,
    data: dict,
    chunk: int | None = None,
    valid: jax.Array | None = None,
):
    """The head's forward and backward pass at once for a loss sum_t f_t(logp_t, H_t).

    `token_grads(logp, entropy, data_chunk)` -> (df/dlogp, df/dH), each [B, c], for a chunk's
    log-probs and entropies [B, c] and `data` [B, T] leaves cut to the same positions; each f_t
    depends on its own position only. Returns (logp, entropy [B, T], d loss / d hidden
    [B, T, E], d loss / d head: the head's state as `split_head` gives it). Nothing is
    differentiated through this function: give it stopped values and pass its gradients on with
    `head_surrogate`. `chunk`: positions per row at once (default: FUSED_CHUNK_SCALE times
    `logit_chunk`). `valid` [B, T]: the positions whose terms count; a chunk without any (the
    response columns past the longest response) skips the head and gives zeros, as a position
    whose df/dlogp and df/dH are 0 does."""
    b, t, e = hidden.shape
    if chunk is None:
        chunk = FUSED_CHUNK_SCALE * logit_chunk(b, model.cfg.vocab_size)
    n = -(-t // chunk)
    graphdef, head, rest = split_head(model)

    def logits_of(head, h):  # [B, c, E] -> [V, B * c]
        z = vocab_major_logits(nnx.merge(graphdef, head, rest), h.reshape(-1, e))
        return z.astype(jnp.float32) / temperature

    def one(d_head, h, y, d):
        z, pullback = jax.vjp(logits_of, head, h)
        y = y.reshape(-1)
        logp, entropy, lse = _column_stats(z, y)
        g_logp, g_entropy = token_grads(*(x.reshape(h.shape[:2]) for x in (logp, entropy)), d)
        g_logp, g_entropy = g_logp.reshape(-1), g_entropy.reshape(-1)
        logq = z - lse
        # `_softmax_grad`, vocabulary-major; the target's term by a comparison, not a scatter,
        # so that the gradient is one elementwise pass that XLA writes over the logits
        hit = jnp.arange(z.shape[0])[:, None] == y
        dz = jnp.where(hit, g_logp, 0.0) - jnp.exp(logq) * (g_logp + g_entropy * (logq + entropy))
        d_head_chunk, d_h = pullback(dz)
        outs = (logp.reshape(h.shape[:2]), entropy.reshape(h.shape[:2]), d_h)
        return jax.tree.map(jnp.add, d_head, d_head_chunk), outs

    def skip(d_head, h, y, d):
        zeros = jnp.zeros(h.shape[:2], jnp.float32)
        return d_head, (zeros, zeros, jnp.zeros_like(h))

    def body(d_head, xs):
        h, y, d, v = xs
        if v is None:
            return one(d_head, h, y, d)
        return jax.lax.cond(jnp.any(v), one, skip, d_head, h, y, d)

    xs = (_chunked(hidden, n, chunk), _chunked(targets, n, chunk))
    xs += (jax.tree.map(lambda x: _chunked(x, n, chunk), data),)
    xs += (None if valid is None else _chunked(valid, n, chunk),)
    d_head, outs = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, head), xs)
    logp, entropy, d_hidden = (_unchunked(x, t) for x in outs)
    return logp, entropy, d_hidden, d_head


def vocab_major_logits(model, x: jax.Array) -> jax.Array:
    """`model.logits(x).T` for x [N, E]: [V, N], made by one product that writes this layout
    (a transpose of `model.logits` compiles to the same product, but XLA:CPU then splits the
    sums over the vocabulary into slower windowed reductions)."""
    x = model.final_norm(x)
    if model.cfg.tie_word_embeddings:
        return jnp.einsum("ve,ne->vn", model.embed[...], x)
    return jnp.einsum("ev,ne->vn", model.lm_head[...], x)


def _column_stats(z: jax.Array, y: jax.Array):
    """`_softmax_stats` of vocabulary-major logits z [V, N] and targets y [N]: (log-prob of y,
    entropy, log-sum-exp), each [N]. Each of the two sums over the vocabulary makes its own
    exponentials inside its pass (the entropy's from the maximum behind a barrier, which keeps
    XLA from sharing them as a [V, N] array that both passes would then read)."""
    m = jax.lax.stop_gradient(jnp.max(z, axis=0))
    s = jnp.sum(jnp.exp(z - m), axis=0)
    shifted = z - jax.lax.optimization_barrier(m)
    log_s = jnp.log(s)
    lse = m + log_s
    logp = z[y, jnp.arange(y.shape[0])] - lse
    entropy = log_s - jnp.sum(jnp.exp(shifted) * shifted, axis=0) / s
    return logp, entropy, lse


def head_surrogate(model, hidden: jax.Array, d_hidden: jax.Array, d_head) -> jax.Array:
    """A scalar that is 0 and whose gradients are `d_hidden` for `hidden` and `d_head` for the
    head's parameters in `model` (autodiff then carries d_hidden on through the blocks)."""
    _, head, _ = split_head(model)
    sg = jax.lax.stop_gradient
    total = jnp.sum(sg(d_hidden).astype(jnp.float32) * hidden.astype(jnp.float32))
    for d, w in zip(jax.tree.leaves(d_head), jax.tree.leaves(head), strict=True):
        total = total + jnp.sum(sg(d).astype(jnp.float32) * w.astype(jnp.float32))
    return total - sg(total)
