"""The Flax port against transformers: logits, the KV cache, and the checkpoint round trip."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import jaxthink
from jaxthink.models import forward, forward_cached, init_cache
from jaxthink.models.qwen import with_projections_out_in
from tests.hf_models import write_tiny_hf

# (family, overrides) covering: bias, qk-norm, head_dim != hidden/heads, GQA 1/2/7, tying, theta,
# Llama without biases or with attention and MLP biases, with no, linear or Llama 3 RoPE scaling
# (Llama 3's with an original context of 32: every band of its scaling - kept, interpolated,
# divided - is used by 16-dimensional heads).
LLAMA3 = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)
VARIANTS = {
    "qwen2-gqa1-untied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=4)),
    "qwen2-gqa2-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-gqa7-theta1e6": (
        "qwen2",
        dict(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, rope_theta=1e6),
    ),
    "qwen3-headdim24-gqa2": ("qwen3", dict()),
    "qwen3-gqa7-tied-theta1e6": (
        "qwen3",
        dict(
            num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6
        ),
    ),
    "llama-gqa2-untied": ("llama", dict(rms_norm_eps=1e-5)),
    "llama3-rope-tied": ("llama", dict(rope=LLAMA3, tie_word_embeddings=True)),
    "llama-biases-linear-rope": (
        "llama",
        dict(attention_bias=True, mlp_bias=True, rope=dict(rope_type="linear", factor=2.0)),
    ),
}
LENGTHS = [12, 7, 3]  # a left-padded batch of prompts of different lengths


def left_padded_batch(lengths, vocab, seed=0):
    rng = np.random.default_rng(seed)
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int32)
    valid = np.zeros((len(lengths), t), bool)
    for i, n in enumerate(lengths):
        tokens[i, t - n :] = rng.integers(1, vocab, n)
        valid[i, t - n :] = True
    return tokens, valid


def hf_logits(model, tokens, valid):
    mask = torch.tensor(valid, dtype=torch.long)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(
            torch.tensor(tokens, dtype=torch.long), attention_mask=mask, position_ids=position_ids
        )
    return out.logits.numpy()


@pytest.fixture(params=list(VARIANTS), scope="module")
def variant(request, tmp_path_factory):
    family, overrides = VARIANTS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = write_tiny_hf(path, family, **overrides)
    model, _, cfg = jaxthink.load(path, tokenizer=False)
    return path, hf, model, cfg


def test_logits_match_transformers_on_left_padded_batch(variant):
    _, hf, model, cfg = variant
    tokens, valid = left_padded_batch(LENGTHS, cfg.vocab_size)
    ours = np.asarray(forward(model, tokens, valid))
    ref = hf_logits(hf, tokens, valid)
    assert np.abs(ours[valid] - ref[valid]).max() < 1e-4


def test_prefill_then_decode_equals_full_forward(variant):
    _, _, model, cfg = variant
    tokens, valid = left_padded_batch([n + 6 for n in LENGTHS], cfg.vocab_size, seed=1)
    full = np.asarray(forward(model, tokens, valid))
    prompt_len = tokens.shape[1] - 6
    cache = init_cache(cfg, batch=len(LENGTHS), length=tokens.shape[1] + 2)
    logits, cache = forward_cached(model, tokens[:, :prompt_len], valid[:, :prompt_len], cache)
    got = [np.asarray(logits)]
    for t in range(prompt_len, tokens.shape[1]):
        logits, cache = forward_cached(model, tokens[:, t : t + 1], valid[:, t : t + 1], cache)
        got.append(np.asarray(logits))
    got = np.concatenate(got, axis=1)
    assert np.abs(got[valid] - full[valid]).max() < 1e-4
    np.testing.assert_array_equal(np.asarray(cache.pos), valid.sum(1))


def test_rows_advance_independently(variant):
    """Rows write at their own slot and position: a row that skips a step is not shifted."""
    _, _, model, cfg = variant
    tokens, valid = left_padded_batch([5, 3], cfg.vocab_size, seed=2)
    cache = init_cache(cfg, batch=2, length=12)
    _, cache = forward_cached(model, tokens, valid, cache)
    # Step 1: only row 0 takes a token; step 2: both do.
    a, b = 7, 11
    _, cache = forward_cached(model, np.array([[a], [0]]), np.array([[True], [False]]), cache)
    logits, cache = forward_cached(model, np.array([[b], [b]]), np.ones((2, 1), bool), cache)
    np.testing.assert_array_equal(np.asarray(cache.pos), [7, 4])
    for row, extra in ((0, [a, b]), (1, [b])):
        seq = np.concatenate([tokens[row][valid[row]], extra])[None]
        alone = np.asarray(forward(model, seq, np.ones_like(seq, bool)))[0, -1]
        assert np.abs(np.asarray(logits)[row, -1] - alone).max() < 1e-4


def test_prefill_last_only_returns_final_position(variant):
    _, _, model, cfg = variant
    tokens, valid = left_padded_batch(LENGTHS, cfg.vocab_size)
    full, _ = forward_cached(model, tokens, valid, init_cache(cfg, 3, 16))
    last, _ = forward_cached(model, tokens, valid, init_cache(cfg, 3, 16), last_only=True)
    np.testing.assert_allclose(np.asarray(last)[:, 0], np.asarray(full)[:, -1], atol=1e-6)


def test_projections_out_in_compute_the_same_logits(variant):
    """The [out, in] layout of the decode loop at batch 1 is the same function: full forward and
    a cached step agree, and the model it was made from is untouched."""
    _, _, model, cfg = variant
    weights = {n: getattr(model.layers[0].attn, n)[...] for n in "qkvo"}
    moved = with_projections_out_in(model)
    assert moved.layers[0].attn.q.shape == (*weights["q"].shape[1:], weights["q"].shape[0])
    assert moved.layers[0].attn.o.shape == (weights["o"].shape[2], *weights["o"].shape[:2])
    tokens, valid = left_padded_batch(LENGTHS, cfg.vocab_size)
    full = np.asarray(forward(model, tokens, valid))
    assert np.abs(np.asarray(forward(moved, tokens, valid))[valid] - full[valid]).max() < 1e-5
    _, cache = forward_cached(model, tokens[:1], valid[:1], init_cache(cfg, 1, 16))
    step = lambda m: np.asarray(forward_cached(m, tokens[:1, :1], valid[:1, :1], cache)[0])
    np.testing.assert_allclose(step(moved), step(model), atol=1e-5)
    assert all(getattr(model.layers[0].attn, n)[...] is w for n, w in weights.items())
    assert not model.layers[0].attn.out_in and not model.layers[0].mlp.out_in


def test_round_trip_is_bit_identical(variant, tmp_path):
    path, _, model, _ = variant
    jaxthink.export_hf(model, tmp_path)
    before, after = load_file(path / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert set(after) == set(before)
    for name, tensor in after.items():
        assert tensor.dtype == before[name].dtype
        np.testing.assert_array_equal(tensor, before[name])


def test_export_loads_in_transformers(variant, tmp_path):
    _, hf, model, cfg = variant
    jaxthink.export_hf(model, tmp_path)
    cls = type(hf)
    reloaded = cls.from_pretrained(tmp_path).float().eval()
    tokens, valid = left_padded_batch(LENGTHS, cfg.vocab_size)
    np.testing.assert_allclose(
        hf_logits(reloaded, tokens, valid), hf_logits(hf, tokens, valid), atol=1e-6
    )
