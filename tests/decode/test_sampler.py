"""The compiled sampler against transformers `generate`, and its sampling rules."""

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxthink
from infer import bench
from infer.bench import _rounds, end_to_end, hf_greedy
from jaxthink.decode import sampler
from jaxthink.policies.modes import ANSWER, CHOOSE, FREE, NO_BUDGET, PRE
from jaxthink.policies.policy import PolicyParams, PolicyTokens
from tests.hf_models import write_tiny_hf

PROMPTS = [[5, 17, 99, 3, 42, 8, 250, 7, 1], [300, 12, 64], [77, 2, 9, 18, 400, 33]]


def plain_rows(b):
    """Rows with no mode at all: answer freely, nothing forced."""
    full = lambda v: jnp.full((b,), v, jnp.int32)
    return PolicyParams(full(ANSWER), full(FREE), full(NO_BUDGET), full(0), full(0))


def plain_tokens(vocab, eos=()):
    none = jnp.zeros(vocab, bool)
    return PolicyTokens(
        think=jnp.int32(-1),
        end_think=jnp.int32(-1),
        short=jnp.int32(-1),
        end_seq=jnp.full((1,), -1, jnp.int32),
        wait_seq=jnp.full((1,), -1, jnp.int32),
        newline=none,
        eos=none.at[jnp.array(eos, jnp.int32)].set(True) if eos else none,
        stop=none,
    )


def greedy(b, seed=0, temperature=0.0, top_k=0, top_p=1.0):
    root = jax.random.key(seed)
    return sampler.Sampling(
        temperature=jnp.full((b,), temperature, jnp.float32),
        top_k=jnp.full((b,), top_k, jnp.int32),
        top_p=jnp.full((b,), top_p, jnp.float32),
        keys=jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.arange(b)),
    )


@pytest.mark.parametrize(
    "family, tied, rows",
    [
        ("qwen2", False, 3),
        ("qwen3", False, 3),
        ("qwen2", True, 3),
        ("qwen2", False, 1),
        ("qwen3", True, 1),
    ],
)
def test_greedy_equals_transformers_generate(family, tied, rows, tmp_path):
    """At batch 1 the decode loop runs on the [out, in] weights of `for_decoding`."""
    hf = write_tiny_hf(tmp_path, family, tie_word_embeddings=tied)
    model, _, _ = jaxthink.load(tmp_path, tokenizer=False)
    graphdef, params = nnx.split(model)
    prompts = PROMPTS[:rows]
    state = sampler.sample(
        graphdef, params, prompts, plain_rows(rows), plain_tokens(512), greedy(rows), 64
    )
    np.testing.assert_array_equal(state.tokens, hf_greedy(hf, prompts, 64))
    assert (state.finish == sampler.LENGTH).all() and (state.lengths == 64).all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_tiny_hf(path, "qwen2")
    model, _, _ = jaxthink.load(path, tokenizer=False)
    return nnx.split(model)


def test_eos_ends_each_row_on_its_own(tiny):
    graphdef, params = tiny
    b = len(PROMPTS)
    free = sampler.sample(
        graphdef, params, PROMPTS, plain_rows(b), plain_tokens(512), greedy(b), 24
    )
    eos = int(free.tokens[0, 5])  # the token row 0 emits at step 5 becomes the EOS
    state = sampler.sample(
        graphdef, params, PROMPTS, plain_rows(b), plain_tokens(512, [eos]), greedy(b), 24
    )
    for r in range(b):
        hits = np.nonzero(free.tokens[r] == eos)[0]
        expected = int(hits[0]) + 1 if len(hits) else 24
        assert state.lengths[r] == expected
        np.testing.assert_array_equal(state.tokens[r, :expected], free.tokens[r, :expected])
        assert state.finish[r] == (sampler.EOS if len(hits) else sampler.LENGTH)


def test_sampling_is_reproducible_from_the_seed(tiny):
    graphdef, params = tiny
    b = len(PROMPTS)
    run = lambda seed: (
        sampler.sample(
            graphdef, params, PROMPTS, plain_rows(b), plain_tokens(512), greedy(b, seed, 1.0), 16
        ).tokens
    )
    np.testing.assert_array_equal(run(1), run(1))
    assert (run(1) != run(2)).any()


@pytest.mark.parametrize("rows", ["plain", "masked"])
def test_logprobs_are_those_of_the_tempered_distribution(tiny, rows):
    """Under the model's own logits at T = 0.7, also where the choice read masked ones: a row
    choosing its first control token (only <think> 5 and <short> 6 allowed), then thinking, and
    an answering row (<think> masked)."""
    graphdef, params = tiny
    model = nnx.merge(graphdef, params)
    tok, pparams = plain_tokens(512), plain_rows(2)
    if rows == "masked":
        tok = tok.replace(think=jnp.int32(5), short=jnp.int32(6))
        pparams = pparams.replace(
            phase=jnp.array([PRE, ANSWER], jnp.int32), control=jnp.array([CHOOSE, FREE], jnp.int32)
        )
    state = sampler.sample(graphdef, params, PROMPTS[:2], pparams, tok, greedy(2, 0, 0.7), 8)
    if rows == "masked":
        assert int(state.tokens[0, 0]) in (5, 6)
    for r in range(2):
        seq = np.array([PROMPTS[r] + state.tokens[r].tolist()])
        logits = jaxthink.forward(model, seq, np.ones_like(seq, bool))[0, len(PROMPTS[r]) - 1 : -1]
        expected = jax.nn.log_softmax(logits / 0.7, axis=-1)[np.arange(8), state.tokens[r]]
        np.testing.assert_allclose(state.logprobs[r], expected, atol=1e-4)


_BOOKKEEPING_OPS = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant"}


def _while_body_outputs(hlo: str) -> list[tuple[str, str, int]]:
    """(name, opcode, elements of the first array result) of each instruction in the bodies
    of the while loops of an optimized HLO module; a fusion's opcode is "fusion:" and the opcode
    of its root."""
    computations, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if head:
            current = computations.setdefault(head.group(1), [])
        elif current is not None and line.strip() not in ("", "}"):
            current.append(line.strip())
    bodies = re.findall(r"\bwhile\(.*?body=%([\w.\-]+)", hlo)
    out = []
    for body in bodies:
        for line in computations[body]:
            m = re.match(r"%(\S+) = \(?\w+\[([\d,]*)\]\S* ([\w\-]+)\(", line)
            if m:
                dims = [int(d) for d in m.group(2).split(",") if d]
                op = m.group(3)
                called = re.search(r"calls=%([\w.\-]+)", line)
                if op == "fusion" and called:
                    root = next(x for x in computations[called.group(1)] if x.startswith("ROOT"))
                    op += ":" + re.match(r"ROOT %\S+ = .*?\s([\w\-]+)\(", root).group(1)
                out.append((m.group(1), op, int(np.prod(dims))))
    return out


def _compiled_decode_loop(checkpoint, prompts, max_new: int = 8):
    """(model, the loop state after prefill, `_while_body_outputs` of the compiled greedy decode
    loop, on the weights `for_decoding` gives) for the checkpoint's model on `prompts`."""
    model, _, _ = jaxthink.load(checkpoint, tokenizer=False)
    graphdef, params = nnx.split(model)
    b = len(prompts)
    tokens, valid = sampler.left_pad(prompts, 0)
    state = sampler.prefill(graphdef, params, tokens, valid, plain_rows(b), max_new, 1)
    lowered = sampler.decode.lower(
        *sampler.for_decoding(graphdef, params, b),
        state,
        plain_rows(b),
        plain_tokens(512),
        greedy(b),
        jnp.int32(0),
    )
    return model, state, _while_body_outputs(lowered.compile().as_text())


def test_decode_loop_writes_nothing_the_size_of_a_weight(tmp_path):
    """Each decode step reads the weights where they lie: no instruction in the compiled loop
    body writes an array as large as the smallest weight matrix (XLA once re-laid out the
    attention output weight of every block at every step: 150 MB of traffic per 0.5B token)."""
    write_tiny_hf(tmp_path, hidden_size=128, intermediate_size=256)
    model, state, ops = _compiled_decode_loop(tmp_path, PROMPTS[:1])
    smallest = model.layers[0].attn.k[...].size  # [E, K, D]: the smallest projection
    assert sum(op == "dot" for _, op, _ in ops) >= 7 * 2  # both blocks' products run in the body
    activations = [x.size for x in jax.tree.leaves(state)]
    assert max(activations) < smallest, "the test needs loop state smaller than any weight"
    large = [(n, op, e) for n, op, e in ops if op not in _BOOKKEEPING_OPS and e >= smallest]
    assert not large, large


@pytest.mark.parametrize("rows", [len(PROMPTS), 1])
def test_decode_loop_writes_the_kv_cache_in_place(tmp_path, rows):
    """Each step writes its keys and values into the cache where it lies: the only instructions
    of the loop body that produce an array as large as a layer's cache are the slot updates
    (with the cache in [B, S, K, D], XLA transposed every layer's whole cache at every step; in
    [B, K, S, D], a batch-1 step copied it four times)."""
    write_tiny_hf(tmp_path)
    _, state, ops = _compiled_decode_loop(tmp_path, PROMPTS[:rows])
    cache = min(x.size for x in (*state.cache.k, *state.cache.v))
    updates = {"scatter", "dynamic-update-slice"}
    writes = [(n, op, e) for n, op, e in ops if e >= cache]
    assert sum(op.split(":")[-1] in updates for _, op, _ in writes) == 2 * len(state.cache.k)
    large = [
        w for w in writes if w[1] not in _BOOKKEEPING_OPS and w[1].split(":")[-1] not in updates
    ]
    assert not large, large


def test_decode_weights_are_out_in_at_batch_one_only(tiny):
    """`for_decoding` lays the block weights out [out, in] for a single row on CPU (a copy; the
    model's own stay [in, out]) and leaves them as they are for more rows."""
    graphdef, params = tiny
    model = nnx.merge(graphdef, params)
    single = nnx.merge(*sampler.for_decoding(graphdef, params, 1))
    for moved, block in zip(single.layers, model.layers, strict=True):
        assert moved.attn.out_in and moved.mlp.out_in and not block.mlp.out_in
        np.testing.assert_array_equal(moved.mlp.down[...], block.mlp.down[...].T)
        np.testing.assert_array_equal(moved.attn.q[...], block.attn.q[...].transpose(1, 2, 0))
        np.testing.assert_array_equal(moved.attn.o[...], block.attn.o[...].transpose(2, 0, 1))
    assert single.embed[...] is model.embed[...]
    assert sampler.for_decoding(graphdef, params, 2) == (graphdef, params)


def test_bench_prints_one_row_per_model_and_batch(capsys):
    """`python -m infer bench` runs end to end (a smoke test: speed belongs to the printout)."""
    argv = ["--shape", "tiny", "--batch", "2", "--new-tokens", "6", "--repeats", "1"]
    bench.main([*argv, "--min-seconds", "0"])
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| tiny")]
    assert len(rows) == 1 and "later calls reuse that layout" in out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "2" and len(cells) == 12
    assert all(np.isfinite(float(c.rstrip("x%"))) for c in cells[2:])


def test_bench_end_to_end_is_greedy_generate_on_the_kept_layout(tmp_path):
    """The bench's end-to-end call emits transformers' greedy tokens, N a row, as `Generation`s
    in prompt order; a second call runs on the weight layout the first one made."""
    hf = write_tiny_hf(tmp_path, "qwen2", tie_word_embeddings=True)
    model, _, _ = jaxthink.load(tmp_path, tokenizer=False)
    expected = hf_greedy(hf, PROMPTS, 12)
    for rows in (1, 3):
        (gens, first), (again, second) = (end_to_end(model, PROMPTS[:rows], 12) for _ in "ab")
        assert [g.token_ids for g in gens] == expected[:rows].tolist()
        assert [g.prompt_ids for g in gens] == PROMPTS[:rows]
        assert [g.token_ids for g in again] == [g.token_ids for g in gens]
        assert second.layout is first.layout


def test_bench_rounds_run_at_least_repeats_and_fill_min_seconds():
    assert list(_rounds(3)) == [0, 1, 2]
    start, count = time.perf_counter(), len(list(_rounds(1, min_seconds=0.05)))
    assert count > 1 and time.perf_counter() - start >= 0.05


def test_the_decode_loop_copies_no_logits_per_step(tiny):
    """The loop carries the last position's hidden state, so each step makes its logits in a
    buffer of its own. A carried [B, V] logits array was copied every step: XLA cannot write the
    next logits over the ones the step still reads."""
    graphdef, params = tiny
    b, vocab = len(PROMPTS), 512
    rows, tok = plain_rows(b), plain_tokens(vocab)
    state = sampler.start(graphdef, params, PROMPTS, rows, tok, 8)
    sampling = greedy(b, 0, temperature=0.6, top_p=0.95)
    compiled = sampler.decode.lower(graphdef, params, state, rows, tok, sampling, jnp.int32(0))
    hlo = compiled.compile().as_text()
    assert re.search(rf"f32\[{b},{vocab}\]", hlo)  # the step's logits are there
    assert not re.search(rf"f32\[{b},{vocab}\]\{{[0-9,]*\}} copy\(", hlo)
