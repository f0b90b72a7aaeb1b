"""Residual-stream hooks of the model: capture after block L, additive steering, and cached steps
whose tokens are alternatives for one position - checked against transformers and `forward`."""

import jax
import numpy as np
import pytest
import torch

import jaxthink
from jaxthink.models import (
    Steering,
    forward,
    forward_alternatives,
    forward_cached,
    init_cache,
    residual_stream,
)
from tests.hf_models import write_tiny_hf

LENGTHS = [9, 6, 4]
# Jitted once per shape: eager calls would dispatch every small op of the model separately.
forward_j = jax.jit(forward, static_argnames=("capture_layer",))
cached_j = jax.jit(forward_cached, static_argnames=("capture_layer", "last_only"))
alternatives_j = jax.jit(forward_alternatives, static_argnames=("after_layer",))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A Qwen3 model with three blocks (qk-norm, head_dim 24), as transformers and as jaxthink."""
    path = tmp_path_factory.mktemp("hooks")
    hf = write_tiny_hf(path, "qwen3", num_hidden_layers=3)
    model, _, cfg = jaxthink.load(path, tokenizer=False)
    return hf, model, cfg


def left_padded(lengths, vocab, seed=0):
    rng = np.random.default_rng(seed)
    t = max(lengths)
    tokens, valid = np.zeros((len(lengths), t), np.int32), np.zeros((len(lengths), t), bool)
    for i, n in enumerate(lengths):
        tokens[i, t - n :] = rng.integers(1, vocab, n)
        valid[i, t - n :] = True
    return tokens, valid


def hf_run(hf, tokens, valid, hook=None):
    """(logits, hidden_states) of transformers, with an optional forward hook on one block."""
    mask = torch.tensor(valid, dtype=torch.long)
    handle = None
    if hook is not None:
        layer, fn = hook
        handle = hf.model.layers[layer].register_forward_hook(fn)
    try:
        with torch.no_grad():
            out = hf(
                torch.tensor(tokens, dtype=torch.long),
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                output_hidden_states=True,
            )
    finally:
        if handle is not None:
            handle.remove()
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def test_capture_is_the_residual_stream_after_block_l(pair):
    hf, model, cfg = pair
    tokens, valid = left_padded(LENGTHS, cfg.vocab_size)
    _, hidden = hf_run(hf, tokens, valid)
    _, captured = forward_j(model, tokens, valid, capture_layer=1)
    np.testing.assert_allclose(np.asarray(captured)[valid], hidden[2][valid], atol=1e-4)
    streams = jax.jit(residual_stream, static_argnums=3)
    stream = np.asarray(streams(model, tokens, valid, (1, 0)))  # [L] stacked in the order asked
    assert stream.shape == (2, len(LENGTHS), tokens.shape[1], cfg.hidden_size)
    np.testing.assert_allclose(stream[0][valid], hidden[2][valid], atol=1e-4)
    np.testing.assert_allclose(stream[1][valid], hidden[1][valid], atol=1e-4)


def test_steering_adds_the_vector_after_block_l_where_the_mask_says(pair):
    hf, model, cfg = pair
    tokens, valid = left_padded(LENGTHS, cfg.vocab_size, seed=1)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(LENGTHS), cfg.hidden_size)).astype(np.float32)
    scale = np.zeros(tokens.shape, np.float32)
    scale[:, -3:] = [0.5, 0.0, 2.0]  # coefficients per position; position -2 untouched

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + torch.tensor(scale)[..., None] * torch.tensor(vectors)[:, None, :]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    ref, _ = hf_run(hf, tokens, valid, hook=(1, add))
    ours = np.asarray(forward_j(model, tokens, valid, steer=Steering(vectors, scale, layer=1)))
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4)
    plain = np.asarray(forward_j(model, tokens, valid))
    before = valid.copy()
    before[:, -3:] = False
    np.testing.assert_array_equal(ours[before], plain[before])  # causal: earlier positions unmoved
    assert np.abs(ours[:, -1] - plain[:, -1]).max() > 1e-2
    one_vector = Steering(vectors[0], scale, layer=1)  # [E] is shared by every row
    shared = np.asarray(forward_j(model, tokens, valid, steer=one_vector))
    np.testing.assert_allclose(shared[0][valid[0]], ours[0][valid[0]], atol=1e-6)


def test_cached_steps_steer_and_capture_like_the_full_forward(pair):
    _, model, cfg = pair
    tokens, valid = left_padded([n + 3 for n in LENGTHS], cfg.vocab_size, seed=2)
    vector = np.random.default_rng(1).normal(size=cfg.hidden_size).astype(np.float32)
    scale = np.zeros(tokens.shape, np.float32)
    scale[:, -2] = 1.5
    full, captured = forward_j(
        model, tokens, valid, steer=Steering(vector, scale, layer=0), capture_layer=2
    )
    prompt = tokens.shape[1] - 3
    cache = init_cache(cfg, len(LENGTHS), tokens.shape[1])
    got_logits, got_hidden = [], []
    for lo, hi in ((0, prompt), (prompt, prompt + 1), (prompt + 1, prompt + 2), (prompt + 2, None)):
        steer = Steering(vector, scale[:, lo:hi], layer=0)
        logits, cache, hidden = cached_j(
            model, tokens[:, lo:hi], valid[:, lo:hi], cache, steer=steer, capture_layer=2
        )
        got_logits.append(np.asarray(logits))
        got_hidden.append(np.asarray(hidden))
    np.testing.assert_allclose(
        np.concatenate(got_logits, 1)[valid], np.asarray(full)[valid], atol=1e-4
    )
    np.testing.assert_allclose(
        np.concatenate(got_hidden, 1)[valid], np.asarray(captured)[valid], atol=1e-4
    )


def test_alternatives_finish_one_token_steered_several_ways_reading_the_cache(pair):
    _, model, cfg = pair
    tokens, valid = left_padded(LENGTHS, cfg.vocab_size, seed=3)
    b = len(LENGTHS)
    _, cache = cached_j(model, tokens, valid, init_cache(cfg, b, tokens.shape[1] + 4))
    vectors = np.random.default_rng(2).normal(size=(b, cfg.hidden_size)).astype(np.float32)
    coefficients = np.array([0.0, 0.5, 1.0, 3.0], np.float32)
    token = np.array([[7], [11], [13]], np.int32)
    active = np.array([[True], [True], [False]])  # a finished row feeds nothing
    _, _, residual = cached_j(model, token, active, cache, capture_layer=1)
    steering = Steering(vectors, np.tile(coefficients, (b, 1)), layer=1)
    alternatives = alternatives_j(
        model,
        residual + steering.delta(residual.dtype),
        np.repeat(active, 4, 1),
        cache,
        after_layer=1,
    )
    for j, c in enumerate(coefficients):
        alone, _ = cached_j(
            model,
            token,
            active,
            cache,
            steer=Steering(vectors, np.full((b, 1), c, np.float32), layer=1),
        )
        np.testing.assert_allclose(
            np.asarray(alternatives)[:2, j], np.asarray(alone)[:2, 0], atol=1e-5
        )
    with pytest.raises(ValueError, match="after_layer=3: the model has blocks 0..2"):
        alternatives_j(model, residual, active, cache, after_layer=3)
