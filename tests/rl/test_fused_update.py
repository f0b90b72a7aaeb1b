"""The RL step's shortcuts give the numbers of the plain computation: the loss as per-token
shares, the softmax's own backward pass, the head's forward and backward passes fused, and
on-policy rows (the first update after a rollout) without a separate old log-prob pass."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxthink.models import forward
from jaxthink.models.config import ModelConfig
from jaxthink.models.qwen import Qwen
from jaxthink.rl import LossConfig, loss_denominators, policy_loss
from jaxthink.rl import loop as rl_module
from jaxthink.rl.config import RLConfig, RolloutConfig
from jaxthink.rl.loop import (
    SEQUENCE_KEYS,
    RLSetup,
    accumulate_gradients,
    batch_logprobs,
    make_logprobs,
    mini_batches,
    rl_step,
    training_arrays,
)
from jaxthink.rl.losses import token_coefficients, token_loss
from jaxthink.rl.rollout import Rollout
from jaxthink.runs.logprobs import (
    head_gradients,
    head_surrogate,
    logit_chunk,
    token_logprobs,
)
from jaxthink.runs.model import build_model
from tests.rl.test_loop import CONFIGS, LENGTHS, SPEC, TEMPERATURE, training_batch

ALL = {**CONFIGS, "grpo-kl-entropy": LossConfig("grpo", kl_coef=0.3, entropy_coef=0.2)}


def tree_close(a, b, rtol=1e-4, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --- the loss as per-token shares ---------------------------------------------------------------


def loss_batch(per_token_advantages: bool):
    rng = np.random.default_rng(3)
    mask = np.zeros((5, 9), np.float32)
    for i, n in enumerate([9, 1, 4, 0, 7]):  # a control-token-only row and an all-padding row
        mask[i, :n] = 1.0
    adv_shape = mask.shape if per_token_advantages else mask.shape[:1]
    logp = rng.normal(-2.0, 0.5, mask.shape).astype(np.float32)
    return dict(
        logp=logp,
        old_logp=(logp + rng.normal(0, 0.3, mask.shape)).astype(np.float32),
        advantages=rng.normal(size=adv_shape).astype(np.float32),
        mask=mask,
        ref_logp=(logp + rng.normal(0, 0.5, mask.shape)).astype(np.float32),
        entropy=rng.uniform(0, 3, mask.shape).astype(np.float32),
    )


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("name", list(ALL))
def test_token_shares_add_up_to_the_loss_and_its_gradient(name, per_token):
    cfg, b = ALL[name], loss_batch(per_token)
    den = loss_denominators(b["mask"], cfg)
    coefs = token_coefficients(b["mask"], cfg, den)

    def whole(logp, entropy):
        args = (b["old_logp"], b["advantages"], b["mask"], cfg)
        return policy_loss(logp, *args, ref_logp=b["ref_logp"], entropy=entropy)[0]

    def shares(logp, entropy):
        args = (b["old_logp"], b["advantages"], b["mask"], coefs, cfg)
        return token_loss(logp, *args, ref_logp=b["ref_logp"], entropy=entropy).sum()

    np.testing.assert_allclose(
        shares(b["logp"], b["entropy"]), whole(b["logp"], b["entropy"]), rtol=1e-6
    )
    tree_close(
        jax.grad(shares, (0, 1))(b["logp"], b["entropy"]),
        jax.grad(whole, (0, 1))(b["logp"], b["entropy"]),
        rtol=1e-5,
        atol=1e-8,
    )


# --- the softmax's backward pass and the fused head ---------------------------------------------

CFG = ModelConfig(
    architecture="qwen2",
    vocab_size=3000,
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
    max_position_embeddings=256,
)
B, T = 3, 21


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def head_setup(request):
    cfg = dataclasses.replace(CFG, tie_word_embeddings=request.param)
    model = Qwen(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T + 1)), jnp.int32)
    hidden = forward(model, tokens[:, :-1], return_hidden=True)
    weights = jnp.asarray(rng.normal(size=(2, B, T)), jnp.float32)
    return model, hidden, tokens[:, 1:], weights


def plain_loss(params, graphdef, hidden, targets, weights):
    """sum(w0 * logp + w1 * entropy) by jax.nn.log_softmax over the whole logits."""
    logits = nnx.merge(graphdef, params).logits(hidden).astype(jnp.float32) / 0.7
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return jnp.sum(weights[0] * logp + weights[1] * entropy)


@pytest.mark.parametrize("chunk", [4, T])
def test_softmax_backward_pass_is_autodiffs(head_setup, chunk):
    model, hidden, targets, weights = head_setup
    graphdef, params = nnx.split(model)

    def ours(params, hidden):
        m = nnx.merge(graphdef, params)
        logp, entropy, _ = token_logprobs(m, hidden, targets, 0.7, chunk)
        return jnp.sum(weights[0] * logp + weights[1] * entropy)

    np.testing.assert_allclose(
        ours(params, hidden), plain_loss(params, graphdef, hidden, targets, weights), rtol=1e-5
    )
    tree_close(
        jax.grad(ours, (0, 1))(params, hidden),
        jax.grad(plain_loss, (0, 2))(params, graphdef, hidden, targets, weights),
    )


@pytest.mark.parametrize("chunk", [1, 5, T])
def test_fused_head_gives_autodiffs_gradients(head_setup, chunk):
    model, hidden, targets, weights = head_setup
    graphdef, params = nnx.split(model)
    token_grads = lambda logp, entropy, d: (d[0], d[1])
    data = (weights[0], weights[1])

    def fused(params, hidden):
        m = nnx.merge(graphdef, params)
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))
        logp, entropy, d_hidden, d_head = head_gradients(
            frozen, jax.lax.stop_gradient(hidden), targets, 0.7, token_grads, data, chunk
        )
        value = jnp.sum(weights[0] * logp + weights[1] * entropy)
        return jax.lax.stop_gradient(value) + head_surrogate(m, hidden, d_hidden, d_head)

    np.testing.assert_allclose(
        fused(params, hidden), plain_loss(params, graphdef, hidden, targets, weights), rtol=1e-5
    )
    tree_close(
        jax.grad(fused, (0, 1))(params, hidden),
        jax.grad(plain_loss, (0, 2))(params, graphdef, hidden, targets, weights),
    )


def test_chunks_without_valid_positions_skip_the_head_exactly(head_setup):
    """Columns past the longest response (no valid position in any row) skip the head: the
    gradients are exactly those of computing them with zero weight."""
    model, hidden, targets, weights = head_setup
    valid = jnp.broadcast_to(jnp.arange(T) < 9, (B, T))  # chunks of 4: the last three empty
    data = tuple(weights * valid)
    token_grads = lambda logp, entropy, d: (d[0], d[1])
    run = lambda v: head_gradients(model, hidden, targets, 0.7, token_grads, data, 4, v)
    (logp, entropy, d_hidden, d_head), skipped = run(None), run(valid)
    for ours, full in ((skipped[0], logp), (skipped[1], entropy)):
        np.testing.assert_array_equal(jnp.where(valid, ours, 0.0), jnp.where(valid, full, 0.0))
        assert not np.asarray(ours)[:, 12:].any()  # the skipped chunks
    for a, b in zip(jax.tree.leaves((d_hidden, d_head)), jax.tree.leaves(skipped[2:])):
        np.testing.assert_array_equal(a, b)


def test_logit_chunk_holds_about_the_budget_of_logits():
    assert logit_chunk(64, 151_936) * 64 == 128  # Qwen's vocabulary: 128 positions at once
    assert logit_chunk(8, 151_936) * 8 == 160
    assert logit_chunk(4096, 151_936) == 1  # at least one position per row
    assert logit_chunk(32, 100) == 512  # a small vocabulary: at most LOGIT_CHUNK per row


def test_default_chunks_keep_a_large_vocabulary_update_small():
    """The update's scratch memory at Qwen's vocabulary (64 rows x 64 response tokens): the
    whole logits would be 2.5 GB; the fused update holds one chunk of them."""
    cfg = dataclasses.replace(CFG, vocab_size=151_936, hidden_size=16, head_dim=8)
    graphdef, params = nnx.split(Qwen(cfg, rngs=nnx.Rngs(0)))
    rows, p, r = 64, 8, 64
    batch = {
        "prompt_tokens": jax.ShapeDtypeStruct((1, rows, p), jnp.int32),
        "prompt_valid": jax.ShapeDtypeStruct((1, rows, p), bool),
        "response_tokens": jax.ShapeDtypeStruct((1, rows, r), jnp.int32),
        "response_mask": jax.ShapeDtypeStruct((1, rows, r), jnp.float32),
        "advantages": jax.ShapeDtypeStruct((1, rows), jnp.float32),
    }
    grads = jax.jit(
        lambda params, batch: accumulate_gradients(graphdef, params, batch, LossConfig(), 1.0)
    )
    temp = grads.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
    # [64, 64, 151936] fp32 logits: 2.49 GB; the fused head keeps one chunk of 256 positions,
    # its gradient written over its logits: 0.16 GB
    assert temp < 0.2e9, temp


# --- the trainer's update: fused against autodiff, on-policy against a separate pass -------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer, _ = build_model(SPEC, tmp_path_factory.mktemp("rl_model"))
    return model, tokenizer


@pytest.fixture(scope="module")
def batch(tiny):
    return training_batch(tiny[1])


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def update_grads(graphdef, params, batch, name, fused):
    return accumulate_gradients(graphdef, params, batch, ALL[name], TEMPERATURE, fused=fused)


def micro(batch, drop=()):
    order = np.random.default_rng(0).permutation(len(LENGTHS))
    out = mini_batches(batch, order, 1, 2)[0]  # [3, 2, ...]
    return {k: v for k, v in out.items() if k not in drop}


@pytest.mark.parametrize(
    "name, on_policy",
    [(n, False) for n in ALL] + [("degrpo-paper", True), ("grpo-kl-entropy", True)],
)
def test_fused_update_equals_autodiff(tiny, batch, name, on_policy):
    graphdef, params = nnx.split(tiny[0])
    b = micro(batch, ("old_logp",) if on_policy else ())
    loss_f, grads_f, terms_f = update_grads(graphdef, params, b, name, True)
    loss_a, grads_a, terms_a = update_grads(graphdef, params, b, name, False)
    np.testing.assert_allclose(float(loss_f), float(loss_a), rtol=1e-5, atol=1e-7)
    tree_close(grads_f, grads_a, rtol=1e-4, atol=1e-7)
    tree_close(terms_f, terms_a, rtol=1e-5, atol=1e-7)


def test_per_token_advantages_fuse_too(tiny, batch):
    graphdef, params = nnx.split(tiny[0])
    b = dict(
        batch, advantages=np.repeat(batch["advantages"][:, None], 32, 1) * np.linspace(1, 2, 32)
    )
    b = micro(b)
    fused = update_grads(graphdef, params, b, "degrpo-paper", True)
    plain = update_grads(graphdef, params, b, "degrpo-paper", False)
    tree_close(fused, plain, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("fused", [True, False])
def test_on_policy_rows_equal_old_logprobs_of_the_same_parameters(tiny, batch, fused):
    """Without old log-probs the update takes the current ones (held constant): the same loss
    and gradient as old log-probs computed beforehand from the same parameters."""
    graphdef, params = nnx.split(tiny[0])
    arrays = dict(batch)
    logprobs = jax.jit(make_logprobs(graphdef, TEMPERATURE))
    arrays["old_logp"] = np.asarray(logprobs(params, *(batch[k] for k in SEQUENCE_KEYS)))
    loss_o, grads_o, terms_o = update_grads(graphdef, params, micro(arrays), "grpo", fused)
    b = micro(arrays, ("old_logp",))
    loss_n, grads_n, terms_n = update_grads(graphdef, params, b, "grpo", fused)
    np.testing.assert_allclose(float(loss_n), float(loss_o), rtol=1e-5, atol=1e-7)
    tree_close(grads_n, grads_o, rtol=1e-4, atol=1e-7)
    assert float(terms_n["ratio"].mean) == 1.0 and float(terms_n["clip_frac"].mean) == 0.0


@pytest.mark.parametrize("mini_count", [1, 2])
def test_rl_step_skips_only_the_old_logprobs_it_does_not_need(
    tiny,
    batch,
    monkeypatch,
    mini_count,
):
    """rl_step (old log-probs for the rows after the first mini-batch only) moves the
    parameters exactly as every row's old log-probs computed up front would."""
    model, tokenizer = tiny
    rows = len(LENGTHS)
    rollout = Rollout(
        batch["prompt_tokens"],
        batch["prompt_valid"],
        batch["response_tokens"],
        batch["response_mask"],
        rewards=np.array([1.0, -1, 0.5, -1, 1, 0.5], np.float32),
        think=np.arange(rows) % 2 == 0,
        correct=np.ones(rows, bool),
        truncated=np.zeros(rows, bool),
        lengths=np.array(LENGTHS, np.int32),
        generations=[],
    )
    monkeypatch.setattr(rl_module, "collect", lambda *a, **k: rollout)
    cfg = RLConfig(
        rollout=RolloutConfig(group_size=2, prompts_per_step=3, temperature=TEMPERATURE),
        loss=LossConfig(kl_coef=0.0),
        mini_batches=mini_count,
        steps=2,
    )
    graphdef, start = nnx.split(model)
    setup, tx = RLSetup.create(cfg, graphdef, tokenizer, start)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    key = jax.random.key(7)
    params, _, metrics = rl_step(setup, copy(start), tx.init(start), [], key)

    expected, opt_state = copy(start), tx.init(start)  # every row's old log-probs first
    arrays = training_arrays(rollout, cfg)
    arrays["old_logp"] = batch_logprobs(setup, expected, arrays, cfg.micro_rows)
    order = np.asarray(jax.random.permutation(jax.random.split(key)[1], rows))
    for mini in mini_batches(arrays, order, mini_count, cfg.micro_rows):
        expected, opt_state, _ = setup.update(expected, opt_state, mini)
    tree_close(params, expected, rtol=1e-5, atol=1e-7)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
