"""The Qwen2 / Qwen3 / Llama decoder in Flax NNX, with a per-row KV cache and residual-stream hooks.

One module tree serves the three families; the config switches their differences (Qwen2: q/k/v
bias; Qwen3: RMSNorm on queries and keys, explicit head_dim; Llama: no bias, Llama 3's RoPE
frequency scaling). Every parameter carries logical axis names
(vocab, embed, heads, kv_heads, head_dim, mlp) that `jaxthink.sharding` maps onto a mesh.

Entry points, all pure functions of (model, inputs):
- `forward(model, tokens, valid)`: a whole left-padded sequence, for training and scoring. With
  `segment_ids` (and optionally `positions`) a row holds several packed sequences, each attending
  only to itself, as SFT packs them.
- `forward_cached(model, tokens, valid, cache)`: append T tokens per row to a KV cache and return
  their logits. Prefill is T = prompt length on an empty cache; decoding is T = 1. Each row has its
  own write slot and RoPE position, so rows may advance differently (forced tokens, hybrid steps).
- `forward_alternatives(model, residual, valid, cache, after_layer=L)`: logits of T alternative
  residual streams (after block L) for each row's next position, each attending to the cache and
  to itself; the cache is only read. The hybrid decode steers one token C ways with it.
- `residual_stream(model, tokens, valid, layers)`: the residual stream after the given blocks.

Hooks (the hybrid method's): `capture_layer=L` also returns the residual stream after block L
(`hidden_states[L + 1]` in transformers); `steer=Steering(...)` adds a vector to that residual
stream at chosen positions. Both are arguments of the pure functions, not stateful hooks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxthink.models.config import ModelConfig

Array = jax.Array
_MASKED = -1e30  # finite, so a query with nothing to attend to (a pad) gives no NaN


def _param(shape, axes, dtype, rngs, init="normal"):
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, axis_name: str, *, dtype, rngs: nnx.Rngs):
        self.scale = _param((dim,), (axis_name,), dtype, rngs, init="ones")
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * x32.astype(x.dtype)


@struct.dataclass
class KVCache:
    """Keys [B * kv_heads, head_dim, S] and values [B * kv_heads, S, head_dim] per layer (row b's
    heads at b * kv_heads ...), with per-row bookkeeping. The (batch, kv head) pairs are one
    batch axis: with batch and heads apart, a batch-1 step copied the cache four times. Each
    product reads its cache operand with the contracted axis major and the output's minor: for
    a kv head's G query heads (grouped-query attention) XLA:CPU's dot then runs as a matrix
    product, where the transposed layouts (S before head_dim for keys) ran G matrix-vector
    products at a fifth of the speed (45 ms against 9 for a layer of 64 rows, G = 6, 576
    positions, head_dim 128); for G = 1 the two are equal.

    `valid[b, s]` marks written, non-pad slots; `index[b]` is the next slot row b writes;
    `pos[b]` is the RoPE position of row b's next real token.
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    valid: Array  # [B, S] bool
    index: Array  # [B] int32
    pos: Array  # [B] int32

    @property
    def length(self) -> int:
        return self.valid.shape[1]


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    k_shape = (batch * cfg.num_kv_heads, cfg.head_dim, length)
    v_shape = (batch * cfg.num_kv_heads, length, cfg.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)),
        valid=jnp.zeros((batch, length), bool),
        index=jnp.zeros((batch,), jnp.int32),
        pos=jnp.zeros((batch,), jnp.int32),
    )


def rotary(positions: Array, cfg) -> tuple[Array, Array]:
    """(cos, sin) [B, T, 1, D] of the RoPE angles at `positions` [B, T] (`cfg.inv_freq`: Llama 3's
    scaling included): computed once per forward pass and shared by every block. The barrier
    keeps XLA from fusing the cosine and sine into each block's query and key products (forward
    and backward), where they were recomputed for every head."""
    angles = positions.astype(jnp.float32)[..., None] * cfg.inv_freq()  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jax.lax.optimization_barrier((jnp.cos(angles), jnp.sin(angles)))


def dense(x: Array, w: Array, contract: int = 1, out_in: bool = False) -> Array:
    """x [..., *in] @ w [*in, *out] with `contract` = len(in) axes summed, computed as one 2-D
    product [tokens, in] x [in, out]. XLA:CPU runs the 3-D form of training ([B, T, E] inputs)
    at half the speed: its backward pass copies the activations into transposed layouts for the
    weight gradients (the MLP's forward and backward: 270 ms against 123 ms at 8192 tokens).

    With `out_in`, w is held [*out, *in] (see `with_projections_out_in`) and the product
    contracts the matrix's second axis (as `x @ w.T`, XLA:CPU copied the transpose every step)."""
    lead = x.shape[: x.ndim - contract]
    if out_in:
        inner, n = w.shape[: w.ndim - contract], int(np.prod(w.shape[w.ndim - contract :]))
        matrix, summed = w.reshape(-1, n), 1
    else:
        inner, n = w.shape[contract:], int(np.prod(w.shape[:contract]))
        matrix, summed = w.reshape(n, -1), 0
    y = jnp.tensordot(x.reshape(-1, n), matrix, axes=(1, summed))
    return y.reshape(*lead, *inner)


def rope(x: Array, cos_sin: tuple[Array, Array]) -> Array:
    """Rotary embedding in the rotate-half layout of the HF checkpoints. x: [B, T, N, D]."""
    cos, sin = cos_sin
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q = _param((e, h, d), ("embed", "heads", "head_dim"), dtype, rngs)
        self.k = _param((e, k, d), ("embed", "kv_heads", "head_dim"), dtype, rngs)
        self.v = _param((e, k, d), ("embed", "kv_heads", "head_dim"), dtype, rngs)
        self.o = _param((h, d, e), ("heads", "head_dim", "embed"), dtype, rngs)
        if cfg.qkv_bias:
            self.q_bias = _param((h, d), ("heads", "head_dim"), dtype, rngs, "zeros")
            self.k_bias = _param((k, d), ("kv_heads", "head_dim"), dtype, rngs, "zeros")
            self.v_bias = _param((k, d), ("kv_heads", "head_dim"), dtype, rngs, "zeros")
        if cfg.o_bias:
            self.o_bias = _param((e,), ("embed",), dtype, rngs, "zeros")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, "head_dim", dtype=dtype, rngs=rngs)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, "head_dim", dtype=dtype, rngs=rngs)
        self.cfg = cfg
        self.out_in = False  # weights held [*out, *in]: see `with_projections_out_in`

    def _project(self, x: Array, cos_sin) -> tuple[Array, Array, Array]:
        cfg = self.cfg
        proj = lambda w: dense(x, w[...], out_in=self.out_in)
        q, k, v = proj(self.q), proj(self.k), proj(self.v)
        if cfg.qkv_bias:
            q, k, v = q + self.q_bias[...], k + self.k_bias[...], v + self.v_bias[...]
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return rope(q, cos_sin), rope(k, cos_sin), v

    def __call__(self, x, cos_sin, mask, cache_kv=None, write_index=None):
        """x [B,T,E]; cos_sin from `rotary`; mask [B,T,S] over the keys attended (S = T without
        a cache).

        With `cache_kv` = (k [B*K,D,S], v [B*K,S,D]), this step's keys and values are written at
        slot `write_index[b] + t` and attention reads the whole cache. With `cache_kv` but no
        `write_index` the cache is only read: each query attends to the cache slots the mask
        allows and to its own key (T alternatives for one position), and (k, v) come back as given.
        """
        q, k, v = self._project(x, cos_sin)
        k, v = _merge_rows(k.transpose(0, 2, 3, 1)), _merge_rows(v.transpose(0, 2, 1, 3))
        scale = self.cfg.head_dim**-0.5
        if cache_kv is not None and write_index is None:
            out = _attend_with_self(q, k, v, cache_kv, mask, scale)
            k, v = cache_kv
        else:
            if cache_kv is not None:
                k = _write(cache_kv[0], k, write_index, axis=2)
                v = _write(cache_kv[1], v, write_index, axis=1)
            out = _attend(q, k, v, mask, scale)
        # With heads merged (one [B*T,H*D] x [H*D,E] product) XLA does not choose a transposed
        # layout for `o`, which on CPU copied the weight at every decode step.
        out = dense(out, self.o[...], contract=2, out_in=self.out_in)
        if self.cfg.o_bias:
            out = out + self.o_bias[...]
        return out, (k, v)


def _merge_rows(x: Array) -> Array:
    """[B, K, ...] -> [B * K, ...]: (row, kv head) pairs as one axis, the cache's layout."""
    return x.reshape(-1, *x.shape[2:])


def _write(cache: Array, new: Array, index: Array, axis: int) -> Array:
    """Row b of `new` written into row b of `cache` from slot index[b] on, along `axis`
    (both [B * K, ...]; rows b * K ... b * K + K - 1 are row b's)."""
    b = index.shape[0]
    start = lambda i: tuple(i if a == axis else 0 for a in range(cache.ndim))
    update = lambda c, u, i: jax.lax.dynamic_update_slice(c, u, start(i))
    rows = lambda x: x.reshape(b, -1, *x.shape[1:])
    return _merge_rows(jax.vmap(update)(rows(cache), rows(new.astype(cache.dtype)), index))


def _grouped(q: Array, n: int) -> Array:
    """q [B,T,H,D] -> [B*K, G*T, D] for n = B*K cache rows: each kv head's query groups and
    positions, in the cache's row order."""
    b, t, h, d = q.shape
    k = n // b
    q = q.reshape(b, t, k, h // k, d).transpose(0, 2, 3, 1, 4)
    return q.reshape(n, -1, d)


def _ungrouped(out: Array, b: int, t: int) -> Array:
    """[B*K, G*T, D] -> [B,T,H,D], the inverse of `_grouped`."""
    n, _, d = out.shape
    out = out.reshape(b, n // b, -1, t, d).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, t, -1, d)


def _scores_mask(mask: Array, n: int, groups: int) -> Array:
    """mask [B,T,S] -> [B*K, G*T, S] alongside `_grouped` queries."""
    b, t, s = mask.shape
    mask = jnp.broadcast_to(mask[:, None, None], (b, n // b, groups, t, s))
    return mask.reshape(n, groups * t, s)


def _attend(q: Array, k: Array, v: Array, mask: Array, scale: float) -> Array:
    """Grouped-query attention: q [B,T,H,D] against k [B*K,D,S] and v [B*K,S,D], H = K * groups."""
    b, t, h, _ = q.shape
    n = k.shape[0]
    qg = _grouped(q, n)
    scores = jnp.einsum("nds,nqd->nqs", k.astype(q.dtype), qg).astype(jnp.float32) * scale
    scores = jnp.where(_scores_mask(mask, n, h * b // n), scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return _ungrouped(jnp.einsum("nsd,nqs->nqd", v.astype(q.dtype), probs), b, t)


def _attend_with_self(q, k_self, v_self, cache_kv, mask, scale: float) -> Array:
    """Attention of q [B,T,H,D] to the cache slots `mask` [B,T,S] allows plus each query's own
    key/value (k_self [B*K,D,T], v_self [B*K,T,D]): one softmax over S + 1 scores, the cache
    unchanged."""
    b, t, h, _ = q.shape
    k_cache, v_cache = cache_kv
    n, groups = k_cache.shape[0], h * b // k_cache.shape[0]
    qg = _grouped(q, n)  # [N, G*T, D]
    # query (g, t)'s own key and value, in the same [N, G*T, D] order
    k_own = jnp.tile(k_self.swapaxes(1, 2), (1, groups, 1)).astype(q.dtype)
    v_own = jnp.tile(v_self, (1, groups, 1)).astype(q.dtype)
    to_cache = jnp.einsum("nds,nqd->nqs", k_cache.astype(q.dtype), qg)
    to_self = jnp.sum(qg * k_own, axis=-1, keepdims=True)
    scores = jnp.concatenate([to_cache, to_self], axis=-1).astype(jnp.float32) * scale
    allowed = jnp.concatenate([mask, jnp.ones((b, t, 1), bool)], axis=-1)
    scores = jnp.where(_scores_mask(allowed, n, groups), scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("nsd,nqs->nqd", v_cache.astype(q.dtype), probs[..., :-1])
    return _ungrouped(out + probs[..., -1:] * v_own, b, t)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = _param((e, m), ("embed", "mlp"), dtype, rngs)
        self.up = _param((e, m), ("embed", "mlp"), dtype, rngs)
        self.down = _param((m, e), ("mlp", "embed"), dtype, rngs)
        self.bias = cfg.mlp_bias  # Llama's mlp_bias: every projection carries a bias
        if cfg.mlp_bias:
            self.gate_bias = _param((m,), ("mlp",), dtype, rngs, "zeros")
            self.up_bias = _param((m,), ("mlp",), dtype, rngs, "zeros")
            self.down_bias = _param((e,), ("embed",), dtype, rngs, "zeros")
        self.out_in = False  # weights held [out, in]: see `with_projections_out_in`

    def __call__(self, x: Array) -> Array:
        def proj(x, name):
            y = dense(x, getattr(self, name)[...], out_in=self.out_in)
            return y + getattr(self, f"{name}_bias")[...] if self.bias else y

        return proj(jax.nn.silu(proj(x, "gate")) * proj(x, "up"), "down")


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", dtype=dtype, rngs=rngs)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", dtype=dtype, rngs=rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos_sin, mask, cache_kv=None, write_index=None):
        a, kv = self.attn(self.attn_norm(x), cos_sin, mask, cache_kv, write_index)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), kv


class Qwen(nnx.Module):
    """A Qwen2 / Qwen3 / Llama causal LM. Use through `forward` / `forward_cached`."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dtype, rngs)
        self.layers = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(
            cfg.hidden_size, cfg.rms_norm_eps, "embed", dtype=dtype, rngs=rngs
        )
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(
                (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dtype, rngs
            )

    def logits(self, x: Array, head: Array | None = None) -> Array:
        """Next-token logits; `head` [E, V] stands in for the output matrix when given."""
        x = self.final_norm(x)
        if head is not None:
            return dense(x, head)
        if self.cfg.tie_word_embeddings:  # x [.., E] against embed [V, E], as a 2-D product
            flat = jnp.einsum("ne,ve->nv", x.reshape(-1, x.shape[-1]), self.embed[...])
            return flat.reshape(*x.shape[:-1], -1)
        return dense(x, self.lm_head[...])


# (sub-module, weight, number of input axes) of each block's projections
_PROJECTIONS = (
    ("attn", "q", 1),
    ("attn", "k", 1),
    ("attn", "v", 1),
    ("attn", "o", 2),
    ("mlp", "gate", 1),
    ("mlp", "up", 1),
    ("mlp", "down", 1),
)


def with_projections_out_in(model: Qwen) -> Qwen:
    """A copy of `model` whose blocks hold their projection weights [*out, *in] (new arrays, the
    embedding and norms shared; `model` is unchanged). Same function, another memory layout.

    XLA:CPU streams one row through an [out, in] weight faster than through an [in, out] one: a
    batch-1 decode step of a 0.5B-shaped model takes 15% less time this way (median of ten
    back-to-back pairs; 73-87 ms against 90-106). With a few rows it is the other way round
    (26% slower at batch 8), and training's products want [in, out]."""
    out = nnx.merge(*nnx.split(model))  # new modules over the same variables
    for block in (b for b in out.layers if not b.mlp.out_in):
        for part, name, contract in _PROJECTIONS:
            module = getattr(block, part)
            w = getattr(module, name)
            axes = (*range(contract, w.ndim), *range(contract))
            names = w.get_metadata().get("out_sharding")
            setattr(
                module,
                name,
                nnx.Param(
                    jnp.transpose(w[...], axes),
                    out_sharding=names and tuple(names[a] for a in axes),
                    eager_sharding=False,
                ),
            )
        block.attn.out_in = block.mlp.out_in = True
    return out


def positions_from_valid(valid: Array, start: Array | int = 0) -> Array:
    """RoPE positions of a left-padded batch: real tokens count up from `start`, pads get 0."""
    pos = jnp.cumsum(valid, axis=1) - 1 + jnp.asarray(start)[..., None]
    return jnp.where(valid, pos, 0).astype(jnp.int32)


def segment_mask(segment_ids: Array) -> Array:
    """[B, T, T] bool: query t sees key s <= t of its own segment; segment 0 is padding."""
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal & same & (segment_ids[:, None, :] > 0)


@struct.dataclass
class Steering:
    """An additive intervention: `scale[b, t] * vector[b]` joins the residual stream after block
    `layer` (0-based) at every position t of row b.

    `vector` is [E] (one for all rows) or [B, E]; `scale` [B, T] is a position mask (bool) or a
    per-position coefficient (float) over the positions of the call, so one vector serves a grid
    of coefficients laid out along T.
    """

    vector: Array
    scale: Array
    layer: int = struct.field(pytree_node=False)

    def delta(self, dtype) -> Array:
        vector = self.vector if self.vector.ndim == 2 else self.vector[None]
        return (self.scale.astype(jnp.float32)[..., None] * vector[:, None, :]).astype(dtype)


def _check_layer(model: Qwen, layer: int, what: str) -> None:
    n = model.cfg.num_layers
    if not 0 <= layer < n:
        raise ValueError(f"{what}={layer}: the model has blocks 0..{n - 1}")


def _run_blocks(
    model,
    x,
    positions,
    mask,
    *,
    steer=None,
    capture_layer=None,
    caches=None,
    write_index=None,
    first: int = 0,
    remat: bool = False,
):
    """The decoder blocks from block `first` on, with the hooks. With `remat` the backward pass
    recomputes each block from its input: only the residual stream between blocks is kept.

    Returns (x, captured or None, (k, v) per block run)."""
    if steer is not None:
        _check_layer(model, steer.layer, "steer.layer")
    if capture_layer is not None:
        _check_layer(model, capture_layer, "capture_layer")
    captured, kvs = None, []
    cos_sin = rotary(positions, model.cfg)
    for i, layer in enumerate(model.layers):
        if i < first:
            continue
        cache_kv = None if caches is None else caches[i]

        def block(x, layer=layer, cache_kv=cache_kv):
            return layer(x, cos_sin, mask, cache_kv, write_index)

        x, kv = (jax.checkpoint(block) if remat else block)(x)
        kvs.append(kv)
        if steer is not None and i == steer.layer:
            x = x + steer.delta(x.dtype)
        if i == capture_layer:
            captured = x
    return x, captured, kvs


def forward(
    model: Qwen,
    tokens: Array,
    valid: Array | None = None,
    *,
    segment_ids: Array | None = None,
    positions: Array | None = None,
    steer: Steering | None = None,
    capture_layer: int | None = None,
    return_hidden: bool = False,
    remat: bool = False,
):
    """Logits [B, T, V] of a (left-)padded batch; `valid` marks real tokens.

    Packed rows give `segment_ids` [B, T] instead of `valid` (0 = pad, each other id one sequence
    that attends only to itself) and usually their `positions` [B, T]; without them positions
    restart at every segment. `steer` adds a vector after a block; `capture_layer=L` returns
    (logits, residual stream after block L [B, T, E]) instead of the logits alone.
    `return_hidden` gives the residual stream after the last block [B, T, E] in place of the
    logits (`model.logits(hidden)` makes them): for losses that make logits a chunk at a time.
    `remat` recomputes each block in the backward pass (training memory: the residual stream
    at block boundaries instead of every block's activations).
    """
    if valid is not None and segment_ids is not None:
        raise ValueError("give valid (one sequence per row) or segment_ids (packed rows), not both")
    if segment_ids is None:
        segment_ids = (
            jnp.ones(tokens.shape, jnp.int32) if valid is None else valid.astype(jnp.int32)
        )
    mask = segment_mask(segment_ids)
    if positions is None:
        positions = jnp.maximum(mask.sum(axis=-1) - 1, 0)  # count of earlier same-segment keys
    x = jnp.take(model.embed[...], tokens, axis=0)
    x, captured, _ = _run_blocks(
        model,
        x,
        positions.astype(jnp.int32),
        mask,
        steer=steer,
        capture_layer=capture_layer,
        remat=remat,
    )
    out = x if return_hidden else model.logits(x)
    return out if capture_layer is None else (out, captured)


def residual_stream(model: Qwen, tokens: Array, valid: Array, layers) -> Array:
    """The residual stream after each block of `layers` (ints), [len(layers), B, T, E].

    Runs only the blocks up to the deepest one asked for (no head): what sentence vectors need.
    """
    layers = [int(layer) for layer in np.atleast_1d(layers)]
    for layer in layers:
        _check_layer(model, layer, "layer")
    mask = segment_mask(valid.astype(jnp.int32))
    positions = positions_from_valid(valid.astype(bool))
    x = jnp.take(model.embed[...], tokens, axis=0)
    cos_sin = rotary(positions, model.cfg)
    states = []
    for block in model.layers:
        if len(states) > max(layers):
            break
        x, _ = block(x, cos_sin, mask)
        states.append(x)
    return jnp.stack([states[layer] for layer in layers])


def forward_cached(
    model: Qwen,
    tokens: Array,
    valid: Array,
    cache: KVCache,
    *,
    last_only: bool = False,
    steer: Steering | None = None,
    capture_layer: int | None = None,
    return_hidden: bool = False,
):
    """Appends tokens [B, T] (pads marked False in `valid`) to the cache; returns their logits.

    Row b writes slots index[b] .. index[b]+T-1; queries see the cache's valid slots up to their
    own. `last_only` returns the logits of the final position only ([B, 1, V]) - what prefill of a
    left-padded batch needs. `steer` and `capture_layer` are as in `forward`; with
    `capture_layer` the result is (logits, cache, residual stream after that block [B, T', E]).
    `return_hidden` gives the residual stream after the last block [B, T', E] in place of the
    logits (`model.logits(hidden, head)` makes them).
    """
    valid = valid.astype(bool)
    b, t = tokens.shape
    write = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u, (i,)))
    cache_valid = write(cache.valid, valid, cache.index)
    query_slot = cache.index[:, None] + jnp.arange(t)[None, :]  # [B, T]
    key_slot = jnp.arange(cache.length)[None, None, :]
    mask = cache_valid[:, None, :] & (key_slot <= query_slot[:, :, None])
    positions = positions_from_valid(valid, cache.pos)
    x = jnp.take(model.embed[...], tokens, axis=0)
    x, captured, kvs = _run_blocks(
        model,
        x,
        positions,
        mask,
        steer=steer,
        capture_layer=capture_layer,
        caches=list(zip(cache.k, cache.v, strict=True)),
        write_index=cache.index,
    )
    if last_only:
        x = x[:, -1:]
        captured = None if captured is None else captured[:, -1:]
    cache = KVCache(
        k=tuple(k for k, _ in kvs),
        v=tuple(v for _, v in kvs),
        valid=cache_valid,
        index=cache.index + t,
        pos=cache.pos + valid.sum(axis=1, dtype=jnp.int32),
    )
    out = x if return_hidden else model.logits(x)
    return (out, cache) if capture_layer is None else (out, cache, captured)


def forward_alternatives(
    model: Qwen,
    residual: Array,
    valid: Array,
    cache: KVCache,
    *,
    after_layer: int,
    head: Array | None = None,
) -> Array:
    """Logits [B, T, V] of T alternatives for each row's next position, given as residual
    streams after block `after_layer` ([B, T, E]); the cache is read, never written.

    Alternative t of row b continues the forward pass of one token at slot index[b] and RoPE
    position pos[b] from block after_layer + 1 on: it attends to the cache's valid slots before
    index[b] and to itself, not to the other alternatives. With residual = (the token's residual
    stream after block L, from `capture_layer`) + c_t * v, this is the token steered at layer L
    by each coefficient c_t, without running blocks 0..L again.
    """
    _check_layer(model, after_layer, "after_layer")
    valid = valid.astype(bool)
    t = residual.shape[1]
    before = jnp.arange(cache.length)[None, :] < cache.index[:, None]
    mask = jnp.repeat((cache.valid & before)[:, None, :], t, axis=1)
    positions = jnp.where(valid, cache.pos[:, None], 0).astype(jnp.int32)
    caches = list(zip(cache.k, cache.v, strict=True))
    x, _, _ = _run_blocks(model, residual, positions, mask, caches=caches, first=after_layer + 1)
    return model.logits(x, head)
