"""Training memory: token log-probs made a chunk of positions at a time, and blocks recomputed
in the backward pass, give the same numbers and gradients in a fraction of the memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxthink.models import forward
from jaxthink.models.config import ModelConfig
from jaxthink.models.qwen import Qwen
from jaxthink.runs.logprobs import token_logprobs

CFG = ModelConfig(
    architecture="qwen2",
    vocab_size=4096,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    rope_theta=1e4,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    qkv_bias=True,
    o_bias=False,
    qk_norm=False,
    max_position_embeddings=512,
)
B, T = 2, 40


@pytest.fixture(scope="module")
def setup():
    model = Qwen(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (B, T + 1)), jnp.int32)
    hidden = forward(model, tokens[:, :-1], return_hidden=True)
    return model, hidden, tokens[:, 1:]


def test_return_hidden_gives_the_stream_the_head_reads():
    model = Qwen(CFG, rngs=nnx.Rngs(1))
    tokens = jnp.arange(2 * 9, dtype=jnp.int32).reshape(2, 9)
    valid = jnp.arange(9)[None, :] >= jnp.array([[0], [3]])  # row 1 left-padded
    hidden = forward(model, tokens, valid, return_hidden=True)
    assert hidden.shape == (2, 9, CFG.hidden_size)
    np.testing.assert_allclose(model.logits(hidden), forward(model, tokens, valid), rtol=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 16, T])
def test_chunks_give_the_whole_logits_numbers(setup, chunk):
    model, hidden, targets = setup
    logits = np.asarray(model.logits(hidden), np.float64) / 0.7
    logp_all = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))[..., None]
        - logits.max(-1, keepdims=True)
    )
    expected = np.take_along_axis(logp_all, np.asarray(targets)[..., None], -1)[..., 0]
    entropy = -(np.exp(logp_all) * logp_all).sum(-1)
    logp, ent, top = token_logprobs(model, hidden, targets, temperature=0.7, chunk=chunk)
    assert logp.shape == ent.shape == top.shape == (B, T)
    np.testing.assert_allclose(logp, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(top, logits.argmax(-1) == np.asarray(targets))


def _loss(chunk):
    def loss(params, graphdef, hidden, targets):
        model = nnx.merge(graphdef, params)
        logp, entropy, _ = token_logprobs(model, hidden, targets, chunk=chunk)
        return -logp.sum() + 0.1 * entropy.sum()

    return loss


def test_chunks_give_the_whole_logits_gradients(setup):
    model, hidden, targets = setup
    graphdef, params = nnx.split(model)
    whole = jax.grad(_loss(T), argnums=(0, 2))(params, graphdef, hidden, targets)
    chunked = jax.grad(_loss(7), argnums=(0, 2))(params, graphdef, hidden, targets)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunks_bound_the_memory_of_the_backward_pass(setup):
    model, _, _ = setup
    graphdef, params = nnx.split(model)
    hidden = jax.ShapeDtypeStruct((B, 512, CFG.hidden_size), jnp.float32)
    targets = jax.ShapeDtypeStruct((B, 512), jnp.int32)

    def temp_bytes(chunk):
        grad = jax.jit(jax.grad(_loss(chunk), argnums=(0, 2)), static_argnums=1)
        compiled = grad.lower(params, graphdef, hidden, targets).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = B * 512 * CFG.vocab_size * 4  # 16 MiB
    whole, chunked = temp_bytes(512), temp_bytes(32)
    assert whole >= 2 * logits_bytes, whole  # [B, T, V] logits and their softmax at once
    assert chunked < whole / 8 and chunked < logits_bytes / 2, (whole, chunked)


def test_chunk_must_be_positive(setup):
    model, hidden, targets = setup
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        token_logprobs(model, hidden, targets, chunk=0)


def test_remat_recomputes_every_block_with_the_same_gradients():
    cfg = dataclasses.replace(CFG, vocab_size=256, num_layers=4)
    graphdef, params = nnx.split(Qwen(cfg, rngs=nnx.Rngs(2)))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 129)), jnp.int32)

    def loss(params, remat):
        model = nnx.merge(graphdef, params)
        hidden = forward(model, tokens[:, :-1], return_hidden=True, remat=remat)
        return -token_logprobs(model, hidden, tokens[:, 1:])[0].sum()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    for a, b in zip(jax.tree.leaves(grad(params, False)), jax.tree.leaves(grad(params, True))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # One rematerialised call per block. (XLA:CPU drops the barrier that keeps the recomputation
    # apart, so the saving shows on TPU and GPU, not in this machine's memory analysis.)
    for remat, calls in ((False, 0), (True, 4)):
        jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, remat)
        assert sum(e.primitive.name == "remat2" for e in jaxpr.eqns) == calls
